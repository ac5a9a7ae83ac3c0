"""Asterisk pods that go away and pods that arrive (issue 9, item 6), with real Asterisk.

A pod being deleted keeps serving the calls it has (a preStop lets them finish) but gets no
new deliveries and holds no trunk's Ready; a new pod's readiness gate opens only once it
serves the whole set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from tests.conftest import wait_for
from tests.e2e.helpers import HOSTS, condition, credentials, status, trunk
from trunk_operator.runtime.settings import Settings

pytestmark = pytest.mark.e2e

HOLD = "trunkop.test/hold"  # keeps the deleted pod in the API, as a long preStop would
GATE = Settings().readiness_condition


def codecs(pbx: AsteriskContainer) -> str:
    for line in pbx.rx("pjsip show endpoint ACME", check=False).splitlines():
        if line.strip().startswith("allow "):
            return line.split(":", 1)[1].strip()
    return ""


def gate(core: client.CoreV1Api, namespace: str, pod: str) -> str:
    conditions = core.read_namespaced_pod(pod, namespace).status.conditions or []
    return next((c.status for c in conditions if c.type == GATE), "absent")


def test_a_pod_being_deleted_gets_nothing_new_and_a_new_pod_opens_its_gate_when_served(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    leaving = start_asterisk_pod("asterisk-0", "127.0.10.48", HOSTS)
    staying = start_asterisk_pod("asterisk-1", "127.0.10.49", HOSTS)
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    apply(trunk("acme"))

    def ready_on(pods: list[str], generation: int) -> dict[str, Any] | None:
        st = status(custom, namespace, "acme")
        ok = (
            condition(st, "Ready").get("status") == "True"
            and st.get("observedGeneration") == generation
            and sorted(p["pod"] for p in st.get("pods", [])) == pods
        )
        return st if ok else None

    wait_for(lambda: ready_on(["asterisk-0", "asterisk-1"], 1), what="acme Ready on both pods")
    assert codecs(leaving) == codecs(staying) == "(ulaw|alaw)"

    core.patch_namespaced_pod("asterisk-0", namespace, {"metadata": {"finalizers": [HOLD]}})
    try:
        core.delete_namespaced_pod("asterisk-0", namespace)
        wait_for(lambda: ready_on(["asterisk-1"], 1), what="Ready held by the staying pod only")
        apply(trunk("acme", codecs=["alaw"]))
        st = wait_for(lambda: ready_on(["asterisk-1"], 2), what="the change Ready")
        assert condition(st, "Delivered")["message"] == "loaded and verified in 1 pod(s)", st
        assert codecs(staying) == "(alaw)"
        # Still serving what it had (its calls finish), and given nothing new.
        assert codecs(leaving) == "(ulaw|alaw)"
        assert core.read_namespaced_pod("asterisk-0", namespace).metadata.deletion_timestamp
    finally:
        # finalizers merge in a strategic merge patch: delete from the list explicitly
        release = {"metadata": {"$deleteFromPrimitiveList/finalizers": [HOLD]}}
        core.patch_namespaced_pod("asterisk-0", namespace, release)

    # A new pod: its gate stays shut until it serves the set (sampled as it comes up).
    arriving = start_asterisk_pod("asterisk-2", "127.0.10.50", HOSTS)
    samples: list[tuple[str, str]] = []

    def opened() -> bool:
        samples.append((gate(core, namespace, "asterisk-2"), codecs(arriving)))
        return samples[-1][0] == "True"

    wait_for(opened, interval=0.05, what="the new pod's readiness gate")
    early = [s for s in samples if s[0] == "True" and s[1] != "(alaw)"]
    assert not early, f"gate open before the set was served: {samples}"
    wait_for(lambda: ready_on(["asterisk-1", "asterisk-2"], 2), what="Ready on the new pod too")
    st = status(custom, namespace, "acme")
    assert condition(st, "Delivered")["message"] == "loaded and verified in 2 pod(s)", st
    print(f"new pod: gate samples {samples[:3]} ... {samples[-1]}")
