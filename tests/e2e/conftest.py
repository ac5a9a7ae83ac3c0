"""e2e fixtures: real Asterisk containers and the sipp Twilio stand-in (testbed/)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from testbed import asterisk as asterisk_mod
from testbed.asterisk import AsteriskContainer
from testbed.sipp import TwilioStandIn
from trunk_operator.asterisk import Exec, ExecResult

pytestmark = pytest.mark.e2e

STANDIN_IP = "127.0.0.12"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def asterisk_image() -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run `make deps` (make test does)")
    asterisk_mod.ensure_image()
    return asterisk_mod.IMAGE


@pytest.fixture
def start_asterisk(
    asterisk_image: str,
) -> Iterator[Callable[..., AsteriskContainer]]:
    started: list[AsteriskContainer] = []

    def start(name: str, bind_ip: str, hosts: dict[str, str]) -> AsteriskContainer:
        container = AsteriskContainer(name, bind_ip, hosts)
        started.append(container)
        return container.start()

    yield start
    for container in started:
        container.stop()


@pytest.fixture
def start_standin() -> Iterator[Callable[..., TwilioStandIn]]:
    started: list[TwilioStandIn] = []

    def start(
        username: str, password: str, ip: str = STANDIN_IP, mode: str = "401"
    ) -> TwilioStandIn:
        standin = TwilioStandIn(ip, 5060, username, password, mode=mode)
        started.append(standin)
        return standin.start()

    yield start
    for standin in started:
        standin.cleanup()


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
def start_asterisk_pod(
    cluster: Any, namespace: str, start_asterisk: Callable[..., AsteriskContainer]
) -> Iterator[Callable[..., AsteriskContainer]]:
    """An Asterisk container plus the Pod in the API whose exec runs inside it."""
    pods: list[str] = []

    def start(
        name: str, bind_ip: str, hosts: dict[str, str], labels: dict[str, str] | None = None
    ) -> AsteriskContainer:
        container = start_asterisk(name, bind_ip, hosts)
        cluster.add_exec_pod(namespace, name, container.name, labels or {"app": "asterisk"})
        pods.append(name)
        return container

    yield start
    for name in pods:
        cluster.delete_exec_pod(namespace, name)
