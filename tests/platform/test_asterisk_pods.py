"""Asterisk "pods": Pods in the real API whose exec runs in their own Asterisk container."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from trunk_operator.kube.api import Kube
from trunk_operator.kube.client import load_config

pytestmark = pytest.mark.e2e


def test_kubectl_exec_reaches_each_pods_own_asterisk(
    cluster: Any,
    namespace: str,
    core: client.CoreV1Api,
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    first = start_asterisk_pod("asterisk-0", "127.0.10.37", {})
    start_asterisk_pod("asterisk-1", "127.0.10.38", {})
    version = cluster.kubectl(
        "exec", "-n", namespace, "asterisk-0", "--", "asterisk", "-rx", "core show version"
    ).stdout
    assert version.startswith("Asterisk 22."), version
    transports = cluster.kubectl(
        "exec", "-n", namespace, "asterisk-1", "--", "asterisk", "-rx", "pjsip show transports"
    ).stdout
    assert "127.0.10.38:5060" in transports and "127.0.10.37" not in transports

    # The Python client's exec (the operator's channel), stdin included, lands in the same place.
    first.write_file("/etc/asterisk/pjsip.d/only-here.conf", "; pod 0\n")
    run = Kube(load_config(cluster.kubeconfig)).pod_exec(namespace, "asterisk-1", "asterisk")
    listing = run(["ls", "/etc/asterisk/pjsip.d"], None, 30)
    assert listing.returncode == 0 and "only-here.conf" not in listing.stdout
    echoed = run(["sh", "-c", "head -c 5; exit 3"], b"hello", 30)
    assert (echoed.returncode, echoed.stdout) == (3, "hello")
