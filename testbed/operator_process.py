"""The operator as its own process (`trunk-operator run`), for tests, the demo and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.cluster import pid_alive


class OperatorProcess:
    """Started with `start()`, stopped by the pid this handle holds."""

    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        verbose: bool = True,
        detached: bool = False,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = dict(env or {})
        self.verbose = verbose
        self.detached = detached  # survives this process (make demo); stop it by pid
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1", **self.env}
        command = [sys.executable, "-m", "trunk_operator.cli", "run", "--standalone"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command + (["--verbose"] if self.verbose else []),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detached,
            )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, self.proc)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_pid(pid: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after `timeout`; reaps the child when we have its handle."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not pid_alive(pid):  # zombies count as gone
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(10)
