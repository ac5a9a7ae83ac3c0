"""CRDs and the operator against a real kube-apiserver (no Asterisk pods in this tier)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import wait_for
from tests.integration.helpers import PASSWORD, TRUNK, secret, with_spec
from tests.kstatus import kstatus
from trunk_operator.core.models import GROUP, VERSION

pytestmark = pytest.mark.integration

SEGMENT: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "DIDSegment",
    "metadata": {"name": "acme-main"},
    "spec": {"trunkRef": {"name": "acme"}, "numbers": ["+15551230001"]},
}


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        (with_spec(TRUNK, terminationHost="sip.twilio.com"), "spec.terminationHost"),
        (with_spec(TRUNK, codecs=["gsm"]), 'Unsupported value: "gsm"'),
        (with_spec(TRUNK, secure=True), "secure trunks need a TLS transport"),
        (with_spec(SEGMENT, numbers=["5551230001"]), "spec.numbers[0]"),
        (
            with_spec(SEGMENT, numbers=[], ranges=[]),
            "a segment needs numbers or ranges",
        ),
        (
            with_spec(SEGMENT, ranges=[{"start": "+15550000000", "count": 100001}]),
            "spec.ranges[0].count",
        ),
        # A valid object name, but too long to label the rendered ConfigMaps and Secrets.
        ({**TRUNK, "metadata": {"name": "a" * 64}}, "metadata.name: at most 63 characters"),
    ],
    ids=[
        "bare-sip-twilio-com",
        "unknown-codec",
        "secure-udp",
        "not-e164",
        "empty",
        "too-many",
        "long-name",
    ],
)
def test_invalid_resources_are_rejected_with_clear_messages(
    apply: Callable[..., Any], crds: None, namespace: str, doc: dict[str, Any], needle: str
) -> None:
    result = apply(doc, check=False)
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr


def test_defaults_are_applied_by_the_api_server(
    cluster: Any, apply: Callable[..., Any], crds: None, namespace: str
) -> None:
    apply(TRUNK)
    spec = cluster.get("twiliotrunk", "acme", namespace)["spec"]
    assert spec["codecs"] == ["ulaw", "alaw"]
    assert spec["inbound"]["context"] == "from-twilio"
    assert spec["outbound"]["context"] == "TwilioDynamicIVR"
    assert spec["credentials"]["passwordKey"] == "password"
    explain = cluster.kubectl("explain", "twiliotrunk.spec.terminationHost").stdout
    assert "pstn.twilio.com" in explain


def ready(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}


def test_missing_secret_is_reported_then_recovers_without_restart(
    apply: Callable[..., Any],
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    apply(TRUNK)
    conditions = wait_for(
        lambda: (c := ready(custom, namespace, "twiliotrunks", "acme")).get("Ready") and c,
        what="a Ready condition",
    )
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "SecretNotFound"
    # The Secret may still come (External Secrets Operator): in progress, not failed.
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
    assert kstatus(obj) == "InProgress"
    events = wait_for(
        lambda: [
            e
            for e in core.list_namespaced_event(namespace).items
            if e.reason == "SecretNotFound" and e.involved_object.name == "acme"
        ],
        what="a SecretNotFound event",
    )
    assert "acme-sip" in events[0].message

    core.create_namespaced_secret(namespace, secret(namespace))
    wait_for(
        lambda: (
            ready(custom, namespace, "twiliotrunks", "acme").get("Rendered", {}).get("status")
            == "True"
        ),
        what="Rendered once the Secret exists",
    )
    # No Asterisk pod selects it in this tier: not Ready, and it says why.
    assert ready(custom, namespace, "twiliotrunks", "acme")["Ready"]["reason"] == "NoAsteriskPods"


def test_rendered_state_lives_in_owned_configmap_and_secret(
    apply: Callable[..., Any],
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    core.create_namespaced_secret(namespace, secret(namespace))
    apply(TRUNK)
    apply(SEGMENT)
    cm = wait_for(lambda: _get(core.read_namespaced_config_map, "twiliotrunk-acme", namespace))
    auth = wait_for(lambda: _get(core.read_namespaced_secret, "twiliotrunk-acme-auth", namespace))
    seg = wait_for(lambda: _get(core.read_namespaced_config_map, "didsegment-acme-main", namespace))
    assert set(cm.data) == {"pjsip.d_twiliotrunk-acme.conf", "extensions.d_twiliotrunk-acme.conf"}
    assert "extensions.d_didsegment-acme-main.conf" in seg.data
    assert cm.metadata.owner_references[0].kind == "TwilioTrunk"
    assert cm.metadata.annotations[f"{GROUP}/config-hash"]
    assert auth.metadata.owner_references[0].kind == "TwilioTrunk"

    # The password is in the auth Secret and nowhere else.
    everything = str(cm.to_dict()) + str(seg.to_dict())
    trunk = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
    everything += str(trunk)
    everything += str([e.to_dict() for e in core.list_namespaced_event(namespace).items])
    assert PASSWORD not in everything and "s3cret" not in everything
    assert "s3cret" not in operator.log()

    status = wait_for(
        lambda: (
            custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "didsegments", "acme-main"
            )
            .get("status", {})
            .get("didCount")
        )
    )
    assert status == 1

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
    wait_for(
        lambda: _get(core.read_namespaced_config_map, "twiliotrunk-acme", namespace) is None,
        timeout=60,
        what="the ConfigMap to be garbage-collected with its trunk",
    )
    wait_for(
        lambda: _get(core.read_namespaced_secret, "twiliotrunk-acme-auth", namespace) is None,
        timeout=60,
        what="the auth Secret to be garbage-collected with its trunk",
    )
    conditions = wait_for(
        lambda: (
            (c := ready(custom, namespace, "didsegments", "acme-main"))
            .get("Ready", {})
            .get("reason")
            == "TrunkNotFound"
            and c
        ),
        what="the segment to report its missing trunk",
    )
    assert conditions["Ready"]["status"] == "False"


def test_password_rotation_updates_the_auth_secret(
    apply: Callable[..., Any], operator: Any, namespace: str, core: client.CoreV1Api
) -> None:
    core.create_namespaced_secret(namespace, secret(namespace))
    apply(TRUNK)
    first = wait_for(lambda: _get(core.read_namespaced_secret, "twiliotrunk-acme-auth", namespace))
    core.replace_namespaced_secret("acme-sip", namespace, secret(namespace, "rotated;pw"))
    wait_for(
        lambda: (
            (s := _get(core.read_namespaced_secret, "twiliotrunk-acme-auth", namespace))
            and s.metadata.annotations != first.metadata.annotations
        ),
        what="the auth Secret to follow the rotation",
    )


def _get(read: Any, name: str, namespace: str) -> Any:
    try:
        return read(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise


def test_a_did_claimed_twice_is_reported_on_the_later_segment(
    apply: Callable[..., Any],
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    core.create_namespaced_secret(namespace, secret(namespace))
    later = with_spec(SEGMENT, numbers=["+15551230001", "+15551230009"])
    later["metadata"]["name"] = "acme-second"  # same second as acme-main: name order decides
    apply(TRUNK)
    apply(SEGMENT)
    wait_for(lambda: ready(custom, namespace, "didsegments", "acme-main").get("Rendered"))
    apply(later)
    degraded = wait_for(
        lambda: (
            ready(custom, namespace, "didsegments", "acme-second").get("Degraded", {}).get("reason")
            == "DIDConflict"
            and ready(custom, namespace, "didsegments", "acme-second")["Degraded"]
        ),
        what="DIDConflict on the later segment",
    )
    assert "acme-main" in degraded["message"]
    status = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, "didsegments", "acme-second"
    )["status"]
    assert status["conflicts"] == ["+15551230001"] and status["didCount"] == 1
    assert (
        ready(custom, namespace, "didsegments", "acme-main").get("Degraded", {}).get("status")
        != "True"
    )
    wait_for(
        lambda: [
            e
            for e in core.list_namespaced_event(namespace).items
            if e.reason == "DIDConflict" and e.type == "Warning"
        ],
        what="a DIDConflict Warning event",
    )
    configmap = core.read_namespaced_config_map("didsegment-acme-second", namespace)
    routed = "".join(configmap.data.values())
    assert "+15551230009" in routed and "+15551230001" not in routed


def test_a_settled_resource_is_left_alone(
    apply: Callable[..., Any],
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
) -> None:
    """No write loops: once settled, nothing rewrites the trunk (finalizer, status, annotations)."""
    core.create_namespaced_secret(namespace, secret(namespace))
    apply(TRUNK)
    wait_for(lambda: ready(custom, namespace, "twiliotrunks", "acme").get("Rendered"))
    time.sleep(2)

    def version() -> tuple[str, list[str]]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
        return obj["metadata"]["resourceVersion"], obj["metadata"].get("finalizers", [])

    settled = version()
    time.sleep(4)
    assert version() == settled
    assert settled[1] == [f"{GROUP}/delivered"]
