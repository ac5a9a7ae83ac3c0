"""e2e helpers; the fixtures (Asterisk containers and pods, the Twilio stand-in) are in
tests/conftest.py, shared with tests/platform."""

from __future__ import annotations

import subprocess

from trunk_operator.pod.channel import Exec, ExecResult


def podman_exec(container: str) -> Exec:
    """The operator's exec channel, straight into the container (no API server)."""

    def run(command: list[str], stdin: bytes | None, timeout: float) -> ExecResult:
        proc = subprocess.run(
            ["podman", "exec", "-i", container, *command],
            input=stdin or b"",
            capture_output=True,
            timeout=timeout,
        )
        return ExecResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    return run
