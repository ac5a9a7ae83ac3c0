"""e2e helpers and fixtures of this tier (External Secrets Operator); the Asterisk containers
and pods and the Twilio stand-ins are in tests/conftest.py, shared with tests/platform."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.external_secrets import ExternalSecretsOperator, build
from tests.e2e.helpers import STORE
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


@pytest.fixture
def external_secrets(
    cluster: Any, namespace: str, tmp_path: Path
) -> Iterator[ExternalSecretsOperator]:
    binary, module = build()
    crds = module / "deploy" / "crds" / "bundle.yaml"
    cluster.kubectl("apply", "--server-side", "-f", str(crds))
    eso = ExternalSecretsOperator(binary, cluster.kubeconfig, namespace, tmp_path / "eso.log")
    try:
        names = ("externalsecrets", "clustersecretstores")
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            *(f"crd/{name}.external-secrets.io" for name in names),
        )  # fmt: skip
        eso.start()
        yield eso
    finally:
        # The store and the ExternalSecret while ESO still runs (should it hold finalizers),
        # then ESO, then its CRDs without waiting (the namespace's deletion takes the rest).
        cluster.kubectl(
            "delete", "externalsecrets.external-secrets.io", "--all", "-n", namespace,
            "--ignore-not-found", "--timeout=30s", check=False,
        )  # fmt: skip
        cluster.kubectl(
            "delete", "clustersecretstore", STORE, "--ignore-not-found", "--timeout=30s",
            check=False,
        )  # fmt: skip
        eso.stop()
        print(f"\n---- ESO log (tail) ----\n{eso.log()[-3000:]}")
        cluster.kubectl(
            "delete", "-f", str(crds), "--ignore-not-found", "--wait=false", check=False
        )
