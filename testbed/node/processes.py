"""Commands and processes of the real node: run a command, read a process's command line,
stop a process by pid."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from testbed.node.errors import NodeError


def run(
    cmd: list[str],
    *,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and r.returncode != 0:
        raise NodeError(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""
