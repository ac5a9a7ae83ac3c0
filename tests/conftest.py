"""Session fixtures shared by the integration and e2e tiers.

`cluster`: a real control plane (testbed/cluster.py: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok) or, with E2E_KUBECONFIG set, that cluster.
`operator`: the operator as its own process (`trunk-operator run`) against it.
`real_node`: a real kubelet + containerd node in that cluster (testbed/node/).
All are started once per session, only when a test asks for them, and stopped by the
handles held here, whether the tests pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from testbed import asterisk as asterisk_mod
from testbed.asterisk import AsteriskContainer
from testbed.cluster import Cluster, ExistingCluster
from testbed.node import KubeletNode
from testbed.operator_process import OperatorProcess
from testbed.sipp import TwilioStandIn
from testbed.twilio_rest import TwilioRestStandIn

ROOT = Path(__file__).resolve().parents[1]
STANDIN_IP = "127.0.0.12"  # the Twilio stand-in; Asterisk containers bind 127.0.10.N


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    external = os.environ.get("E2E_KUBECONFIG")
    if external:
        yield ExistingCluster(external)
        return

    cl = Cluster()
    try:
        cl.start()
        yield cl
    finally:
        cl.stop()
        _cluster_pids.extend(cl.processes())  # reported by pytest_sessionfinish


@pytest.fixture(scope="session")
def real_node(cluster: Any) -> Iterator[KubeletNode]:
    """A real kubelet node (label and taint trunkop.dev/real-node=true; pods opt in with
    ``real_node.placement()``). One per machine; everything it changed on the host is
    undone at the end, and what could not be is reported by pytest_sessionfinish."""
    if not isinstance(cluster, Cluster):
        pytest.skip("a real node joins the local kwokctl cluster only (E2E_KUBECONFIG is set)")
    if os.geteuid() != 0:
        pytest.skip("a real node needs root")
    if shutil.which("containerd") is None:
        pytest.fail("containerd is missing: run `make deps` (make test does)")
    node = KubeletNode(cluster)
    try:
        node.start()
        yield node
    finally:
        try:
            node.stop()
        finally:
            _node_leftovers.extend(node.leftovers())


@pytest.fixture(scope="session")
def crds(cluster: Any) -> None:
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    for name in ("twiliotrunks", "didsegments", "twilioaccounts"):
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{name}.trunks.asterisk-operator.dev",
            "--timeout=60s",
        )


@pytest.fixture(scope="session")
def api(cluster: Any) -> client.ApiClient:
    return config.new_client_from_config(config_file=cluster.kubeconfig)


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture(scope="session")
def twilio_rest() -> Iterator[TwilioRestStandIn]:
    """Twilio's REST API as the session's operator sees it (TRUNKOP_TWILIO_BASE_URL): the
    stand-in built from Twilio's specs, every exchange validated against them."""
    standin = TwilioRestStandIn()
    standin.serve()
    try:
        yield standin
    finally:
        standin.close()
    assert standin.violations == [], standin.violations


@pytest.fixture(scope="session")
def operator(
    cluster: Any,
    crds: None,
    twilio_rest: TwilioRestStandIn,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        cluster.kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        env={
            "TRUNKOP_OBSERVE_INTERVAL": "2",
            "TRUNKOP_METRICS_PORT": str(free_port()),
            "TRUNKOP_TWILIO_BASE_URL": twilio_rest.url,
        },
    )
    op.start()
    host_operators.append(op)
    try:
        yield op
    finally:
        host_operators.remove(op)
        op.stop()


host_operators: list[OperatorProcess] = []
"""The session's operator process, while it exists: a tier that installs its own operator
pauses it, or two operators would deliver into the same pods."""


@contextlib.contextmanager
def pause_host_operators() -> Iterator[None]:
    """Stop the session's operator (if it runs) for a while, and start it again after, even
    when the body fails: for tests that run operators of their own in the same cluster."""
    paused = [op for op in host_operators if op.proc is not None]
    for op in paused:
        op.stop()
    try:
        yield
    finally:
        for op in paused:
            op.start()


@pytest.fixture
def no_host_operator() -> Iterator[None]:
    """The session's operator serves every namespace: paused during this test."""
    with pause_host_operators():
        yield


@pytest.fixture
def namespace(cluster: Any, core: client.CoreV1Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def apply(cluster: Any, namespace: str) -> Callable[..., Any]:
    """kubectl apply of a manifest, placed in the test's namespace (the manifest is not changed)."""

    def apply_doc(doc: dict[str, Any], check: bool = True) -> Any:
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
        return cluster.apply(doc, check=check)

    return apply_doc


def put_secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    """Create the Secret, or replace it (as `kubectl apply` would)."""
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data)
    try:
        core.create_namespaced_secret(namespace, body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30,
    interval: float = 0.2,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, show the operator's log tail: it usually says why."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    op = getattr(item, "funcargs", {}).get("operator")
    if report.failed and isinstance(op, OperatorProcess):
        report.sections.append(("operator log (tail)", op.log()[-8000:]))


def leftovers() -> list[str]:
    """Everything this test process started that still exists."""
    from testbed import asterisk as asterisk_mod
    from testbed import external_secrets
    from testbed import sipp as sipp_mod

    found = [f"sipp pid {pid}" for pid in sorted(sipp_mod.running_pids())]
    found += [f"external-secrets pid {pid}" for pid in external_secrets.running_pids()]
    if subprocess.run(["which", "podman"], capture_output=True).returncode == 0:
        listed = subprocess.run(
            [
                "podman",
                "ps",
                "-a",
                "--format",
                "{{.Names}}",
                "--filter",
                f"label={asterisk_mod.LABEL}.pid={os.getpid()}",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        found += [f"container {name}" for name in listed]
    found += [
        f"container {name}"
        for name in sorted(asterisk_mod.started_containers())
        if f"container {name}" not in found
    ]
    found += [f"cluster process {pid}" for pid in _cluster_pids]
    found += [f"real node: {what}" for what in _node_leftovers]
    return found


_cluster_pids: list[int] = []
_node_leftovers: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite checks its own hygiene: a run that leaves something behind fails."""
    left = leftovers()
    if left:
        print(f"\nleft behind by this test run: {', '.join(left)}", file=sys.stderr)
        session.exitstatus = 1


# ---- Asterisk containers, Asterisk pods and the Twilio stand-in ---------------------------


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

    def start(
        name: str,
        bind_ip: str,
        hosts: dict[str, str],
        tls: bool = True,
        ari: tuple[str, str] | None = None,
    ) -> AsteriskContainer:
        container = AsteriskContainer(name, bind_ip, hosts, tls=tls, ari=ari)
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


@pytest.fixture
def start_asterisk_pod(
    cluster: Any, namespace: str, start_asterisk: Callable[..., AsteriskContainer]
) -> Iterator[Callable[..., AsteriskContainer]]:
    """An Asterisk container plus the Pod in the API whose exec runs inside it."""
    pods: list[str] = []

    def start(
        name: str,
        bind_ip: str,
        hosts: dict[str, str],
        labels: dict[str, str] | None = None,
        tls: bool = True,
        ari: tuple[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> AsteriskContainer:
        container = start_asterisk(name, bind_ip, hosts, tls, ari)
        cluster.add_exec_pod(
            namespace,
            name,
            container.name,
            labels or {"app": "asterisk"},
            annotations=annotations,
        )
        pods.append(name)
        return container

    yield start
    for name in pods:
        cluster.delete_exec_pod(namespace, name)
