"""Argo CD health of real objects: each state the operator produces, as Argo CD's Lua would
judge it (charts/asterisk-trunk-operator/argocd/health.lua in a real Lua 5.1).

UPDATE_HEALTH_TESTDATA=1 also writes these objects to argocd/testdata/, the upstream-style
health_test.yaml cases that tests/packaging checks without a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from tests.conftest import wait_for
from tests.e2e.helpers import HOSTS, SID_A, SID_B, credentials, trunk, wait_ready
from tests.health import ARGOCD, health
from trunk_operator.core.models import GROUP, VERSION

pytestmark = pytest.mark.e2e


def get(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return obj


def keep(name: str, obj: dict[str, Any]) -> None:
    """As `kubectl get -o yaml` shows it, minus what varies from run to run."""
    if not os.environ.get("UPDATE_HEALTH_TESTDATA"):
        return
    meta = obj["metadata"]
    meta.pop("managedFields", None)
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        meta.pop(key, None)
    meta["namespace"] = "telephony"
    (ARGOCD / "testdata" / f"{name}.yaml").write_text(yaml.safe_dump(obj, sort_keys=False))


def test_argocd_health_of_every_state(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    start_asterisk_pod("asterisk-0", "127.0.10.42", HOSTS)
    for name in ("acme", "globex"):
        core.create_namespaced_secret(namespace, credentials(namespace, name))
    served = {"accountSid": SID_A, "context": "default"}  # a context the pod has
    seen: dict[str, dict[str, str]] = {}

    def judge(state: str, plural: str, name: str) -> dict[str, str]:
        obj = get(custom, namespace, plural, name)
        keep(state, obj)
        seen[state] = health(obj)
        return seen[state]

    # Created while the operator is down: no status yet; then a spec change not yet seen.
    operator.stop()
    try:
        apply(trunk("acme", inbound=served, qualifyFrequencySeconds=0))
        assert judge("trunk-no-status", "twiliotrunks", "acme")["status"] == "Progressing"
    finally:
        operator.start()
    wait_ready(custom, namespace, "acme")
    assert judge("trunk-ready", "twiliotrunks", "acme")["status"] == "Healthy"
    operator.stop()
    try:
        apply(trunk("acme", inbound=served, qualifyFrequencySeconds=0, codecs=["alaw"]))
        assert judge("trunk-generation-ahead", "twiliotrunks", "acme")["status"] == "Progressing"
    finally:
        operator.start()
    wait_for(
        lambda: (
            get(custom, namespace, "twiliotrunks", "acme")
            .get("status", {})
            .get("observedGeneration")
            == 2
        )
    )
    wait_ready(custom, namespace, "acme")

    # Refused by Asterisk (stalled), and its Secret missing (may still come).
    apply(trunk("globex", transport="transport-missing", inbound={"accountSid": SID_B}))
    wait_for(
        lambda: (
            get(custom, namespace, "twiliotrunks", "globex").get("status", {}).get("reason")
            == "TransportNotFound"
        ),
        what="globex TransportNotFound",
    )
    assert judge("trunk-stalled", "twiliotrunks", "globex")["status"] == "Degraded"
    apply(trunk("initech", inbound={"accountSid": "AC" + "c" * 32}))
    wait_for(
        lambda: (
            get(custom, namespace, "twiliotrunks", "initech").get("status", {}).get("reason")
            == "SecretNotFound"
        ),
        what="initech SecretNotFound",
    )
    # Not degraded: nothing was ever served, and the Secret may still come (ESO).
    assert judge("trunk-secret-missing", "twiliotrunks", "initech")["status"] == "Progressing"

    # A segment: delivering (a 100,000-DID segment takes seconds to load), then Ready; and one
    # whose trunk does not exist.
    apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DIDSegment",
            "metadata": {"name": "acme-bulk"},
            "spec": {
                "trunkRef": {"name": "acme"},
                "ranges": [{"start": "+15557000000", "count": 100000}],
                "destination": {"context": "default"},
            },
        }
    )
    delivering = wait_for(
        lambda: (
            (obj := get(custom, namespace, "didsegments", "acme-bulk")).get("status", {}).get(
                "reason"
            ) == "Delivering"
            and obj
        ),
        interval=0.05,
        what="the segment Delivering",
    )  # fmt: skip
    keep("segment-delivering", delivering)
    seen["segment-delivering"] = health(delivering)
    assert seen["segment-delivering"]["status"] == "Progressing"
    wait_for(
        lambda: (
            get(custom, namespace, "didsegments", "acme-bulk").get("status", {}).get("reason")
            == "Ready"
        ),
        timeout=60,
        what="the segment Ready",
    )
    assert judge("segment-ready", "didsegments", "acme-bulk")["status"] == "Healthy"
    apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DIDSegment",
            "metadata": {"name": "orphan"},
            "spec": {"trunkRef": {"name": "nosuch"}, "numbers": ["+15550001111"]},
        }
    )
    wait_for(
        lambda: (
            get(custom, namespace, "didsegments", "orphan").get("status", {}).get("reason")
            == "TrunkNotFound"
        ),
        what="orphan TrunkNotFound",
    )
    assert judge("segment-trunk-missing", "didsegments", "orphan")["status"] == "Progressing"
    for state, result in sorted(seen.items()):
        print(f"{state:<24} {result['status']:<12} {result['message']}")
