"""What an exec into a pod's container is, to the code that uses one: the client runs it
(`client.PodExec`), the pod channel gives it scripts. Here so the transport does not depend
on the domain that drives it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


Exec = Callable[[list[str], bytes | None, float], ExecResult]
"""Run a command in the pod's Asterisk container: (argv, stdin, timeout) -> result."""


class ExecError(RuntimeError):
    """The pod could not be reached or the command did not run (retryable)."""
