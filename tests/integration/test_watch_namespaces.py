"""Secrets in scope: with TRUNKOP_WATCH_NAMESPACES the operator serves, watches and reads
only those namespaces (the chart gives it Roles there and nothing cluster-wide; the RBAC side
is in tests/packaging and tests/incluster). A trunk and its Secret elsewhere stay untouched."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from testbed.operator_process import OperatorProcess
from tests.conftest import wait_for
from tests.integration.helpers import TRUNK, secret
from trunk_operator.core.models import GROUP, VERSION

pytestmark = pytest.mark.integration


def status_of(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
    return dict(obj.get("status") or {})


def test_only_the_watched_namespaces_are_served(
    cluster: Any,
    crds: None,
    no_host_operator: None,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[..., Any],
    tmp_path: Path,
) -> None:
    elsewhere = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=elsewhere)))
    scoped = OperatorProcess(
        cluster.kubeconfig,
        tmp_path / "operator.log",
        env={"TRUNKOP_WATCH_NAMESPACES": namespace, "TRUNKOP_OBSERVE_INTERVAL": "2"},
    )
    try:
        scoped.start()
        for ns in (namespace, elsewhere):
            core.create_namespaced_secret(ns, secret(ns))
            cluster.apply({**TRUNK, "metadata": {**TRUNK["metadata"], "namespace": ns}})
        wait_for(lambda: status_of(custom, namespace).get("conditions"), what="a status")
        assert core.read_namespaced_config_map("twiliotrunk-acme", namespace)
        # A rotation elsewhere is not even seen.
        core.replace_namespaced_secret("acme-sip", elsewhere, secret(elsewhere, "other"))
        time.sleep(6)  # three observation rounds
        assert status_of(custom, elsewhere) == {}
        rendered = core.list_namespaced_config_map(elsewhere).items
        assert [
            c.metadata.name for c in rendered if c.metadata.name.startswith("twiliotrunk")
        ] == []
        log = scoped.log()
        assert elsewhere not in log, [line for line in log.splitlines() if elsewhere in line][:5]
    finally:
        scoped.stop()
        for ns in (namespace, elsewhere):
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, "twiliotrunks", "acme", {"metadata": {"finalizers": None}}
            )
        core.delete_namespace(elsewhere)
