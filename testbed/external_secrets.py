"""External Secrets Operator's controller as a host process against the test cluster.

The binary and its CRDs come from testbed/build-external-secrets.sh (ESO pinned in
testbed/go/external-secrets). Only the core controller runs: no webhook, no certificate
controller, no leader election, no metrics; it serves one namespace (`--namespace`), with the
cluster's admin kubeconfig (ESO has no --kubeconfig flag: KUBECONFIG). Stopped by the pid this
handle holds; its CRDs are removed again by `uninstall_crds()`.
"""

from __future__ import annotations

import atexit
import os
import subprocess
from pathlib import Path

from testbed.operator_process import stop_pid

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-external-secrets.sh"

_started: list[subprocess.Popen[bytes]] = []


def running_pids() -> list[int]:
    """Controllers this process started that still run (the test session checks for none)."""
    return [proc.pid for proc in _started if proc.poll() is None]


@atexit.register
def _stop_all() -> None:
    for proc in _started:
        if proc.poll() is None:
            stop_pid(proc.pid, proc)


def build() -> tuple[Path, Path]:
    """(the controller binary, its module directory); builds it the first time (~9 min)."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed: {proc.stderr[-2000:]}")
    binary, module = proc.stdout.split()[-2:]
    return Path(binary), Path(module)


class ExternalSecretsOperator:
    def __init__(self, binary: Path, kubeconfig: str, namespace: str, log_path: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ExternalSecretsOperator:
        command = [
            str(self.binary),
            "--metrics-addr=0",
            "--enable-leader-election=false",
            f"--namespace={self.namespace}",
            "--enable-push-secret-reconciler=false",
            "--enable-cluster-push-secret-reconciler=false",
            "--enable-cluster-external-secret-reconciler=false",
            "--loglevel=info",
            "--zap-time-encoding=iso8601",
        ]
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        _started.append(self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, self.proc)
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
