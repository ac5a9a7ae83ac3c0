"""The operator end to end: real API server, operator process, Asterisk pods, sipp as Twilio."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from testbed.sipp import TwilioStandIn
from tests.conftest import wait_for
from tests.e2e.helpers import (
    ACME_IP,
    HOSTS,
    PASSWORD,
    SID_A,
    SID_B,
    call,
    condition,
    credentials,
    status,
    trunk,
    wait_ready,
)
from tests.kstatus import kstatus
from trunk_operator.core.asterisk_output import parse_contexts, parse_endpoints
from trunk_operator.core.models import GROUP, VERSION
from trunk_operator.core.render import POD_FILES

pytestmark = pytest.mark.e2e


def test_trunk_goes_live_qualifies_and_calls_then_follows_codec_changes(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    standin = start_standin("acme-user", PASSWORD, ip=ACME_IP)
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.31", HOSTS)
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    started = time.monotonic()
    apply(trunk("acme"))
    st = wait_ready(custom, namespace, "acme")
    print(f"apply -> Ready in {time.monotonic() - started:.2f} s")
    assert "ACME" in parse_endpoints(pbx.rx("pjsip show endpoints"))

    st = wait_for(
        lambda: (
            (s := status(custom, namespace, "acme"))
            and condition(s, "Reachable").get("status") == "True"
            and s
        ),
        timeout=30,
        what="contact Avail",
    )
    [pod] = st["pods"]
    assert pod["pod"] == "asterisk-0" and pod["contacts"][0]["status"] == "Avail"
    assert set(pod["contacts"][0]) == {"uri", "status"}  # the RTT is in /metrics

    invites = call(pbx, standin, "to-acme", "+15551234567")
    assert invites[0].uri == "sip:+15551234567@acme.pstn.twilio.com"
    assert standin.verify_digest(PASSWORD)
    assert invites[0].codecs[:2] == ["PCMU", "PCMA"]

    apply(trunk("acme", codecs=["alaw"]))
    wait_for(
        lambda: ": (alaw)" in pbx.rx("pjsip show endpoint ACME"),
        what="the codec change delivered",
    )
    wait_ready(custom, namespace, "acme")
    invites = call(pbx, standin, "to-acme", "+15551234567")
    assert "PCMU" not in invites[-1].codecs and "PCMA" in invites[-1].codecs
    assert PASSWORD not in operator.log() and PASSWORD not in str(status(custom, namespace, "acme"))


def test_trunk_asterisk_rejects_is_degraded_and_others_keep_working(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    standin = start_standin("acme-user", PASSWORD, ip=ACME_IP)
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.32", HOSTS)
    for name in ("acme", "globex"):
        core.create_namespaced_secret(namespace, credentials(namespace, name))
    apply(trunk("acme", inbound={"accountSid": SID_A}))
    wait_ready(custom, namespace, "acme")
    apply(trunk("globex", transport="transport-missing", inbound={"accountSid": SID_B}))
    st = wait_for(
        lambda: (
            (s := status(custom, namespace, "globex"))
            and condition(s, "Delivered").get("reason") == "TransportNotFound"
            and s
        ),
        timeout=30,
        what="globex to report TransportNotFound",
    )
    assert condition(st, "Ready")["status"] == "False"
    assert "transport-missing" in condition(st, "Delivered")["message"]
    assert condition(status(custom, namespace, "acme"), "Ready")["status"] == "True"
    # What Flux and kpt make of it: failed (needs a change), the other one current.
    objects = {
        name: custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", name)
        for name in ("acme", "globex")
    }
    assert kstatus(objects["globex"]) == "Failed", objects["globex"]["status"]
    assert kstatus(objects["acme"]) == "Current"
    assert set(parse_endpoints(pbx.rx("pjsip show endpoints"))) == {"ACME"}
    invites = call(pbx, standin, "to-acme", "+15551234567")
    assert 200 in [r.status for r in standin.responses(invites[-1].call_id)]


def test_restarted_pod_gets_its_set_back_and_deletion_cleans_every_pod(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    first = start_asterisk_pod("asterisk-0", "127.0.10.33", HOSTS)
    second = start_asterisk_pod("asterisk-1", "127.0.10.34", HOSTS)
    second.write_file(
        "/etc/asterisk/extensions.d/local.conf", "[local-ctx]\nexten => 1,1,Hangup()\n"
    )
    second.rx("dialplan reload")
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    apply(trunk("acme"))
    st = wait_ready(custom, namespace, "acme")
    assert sorted(p["pod"] for p in st["pods"]) == ["asterisk-0", "asterisk-1"]

    second.restart()  # a crashed container comes back empty
    started = time.monotonic()
    wait_for(
        lambda: "ACME" in parse_endpoints(second.rx("pjsip show endpoints")),
        timeout=30,
        what="the set back in the restarted pod",
    )
    print(f"restarted pod has its set again after {time.monotonic() - started:.1f} s")
    wait_ready(custom, namespace, "acme")

    # A hand edit of an operator-owned file is drift: put back within an observation round.
    path = f"/etc/asterisk/{POD_FILES[0]}"
    rendered = first.read_file(path)
    first.write_file(path, rendered.replace("allow = ulaw,alaw", "allow = gsm"))
    wait_for(lambda: first.read_file(path) == rendered, timeout=30, what="the hand edit undone")
    second.write_file(
        "/etc/asterisk/extensions.d/local.conf", "[local-ctx]\nexten => 1,1,Hangup()\n"
    )
    second.rx("dialplan reload")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
    for pbx in (first, second):

        def acme_gone(pbx: AsteriskContainer = pbx) -> bool:
            return "ACME" not in parse_endpoints(pbx.rx("pjsip show endpoints"))

        wait_for(acme_gone, what=f"ACME gone from {pbx.name}")
        served = pbx.exec("sh", "-c", "cat /etc/asterisk/pjsip.d/*.conf 2>/dev/null; true").stdout
        assert "TwilioTrunk/acme" not in served and "[ACME]" not in served
    assert "local-ctx" in parse_contexts(second.rx("dialplan show"))
    wait_for(
        lambda: (
            not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks")[
                "items"
            ]
        ),
        what="the finalizer to let the trunk go",
    )


def test_operator_down_while_trunks_change_converges_on_start(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.35", HOSTS)
    for name in ("acme", "globex"):
        core.create_namespaced_secret(namespace, credentials(namespace, name))
    apply(trunk("acme", inbound={"accountSid": SID_A}))
    apply(trunk("globex", inbound={"accountSid": SID_B}))
    wait_ready(custom, namespace, "acme")
    wait_ready(custom, namespace, "globex")

    operator.stop()
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
        apply(trunk("globex", inbound={"accountSid": SID_B}, codecs=["alaw"]))
    finally:
        operator.start()
    wait_for(
        lambda: set(parse_endpoints(pbx.rx("pjsip show endpoints"))) == {"GLOBEX"},
        timeout=60,
        what="ACME removed after the restart",
    )
    wait_for(
        lambda: "allow = alaw\n" in pbx.read_file(f"/etc/asterisk/{POD_FILES[0]}"),
        timeout=30,
        what="the globex change delivered after the restart",
    )
    st = wait_ready(custom, namespace, "globex")
    assert (
        st["observedGeneration"]
        == custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "globex")[
            "metadata"
        ]["generation"]
    )


def test_password_rotation_reaches_asterisk_without_restarts(
    operator: Any,
    cluster: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    old_twilio = start_standin("acme-user", PASSWORD, ip=ACME_IP)
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.36", HOSTS)
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    apply(trunk("acme"))
    wait_ready(custom, namespace, "acme")
    pod = cluster.get("pod", "asterisk-0", namespace)
    gate = [c for c in pod["status"]["conditions"] if c["type"] == f"{GROUP}/delivered"]
    assert gate and gate[0]["status"] == "True", pod["status"]["conditions"]
    assert old_twilio.verify_digest(PASSWORD) is False  # no call yet: nothing to verify
    old_twilio.cleanup()

    # What External Secrets Operator does on a vault rotation: rewrite the Secret's data.
    rotated = "n3w;Pa55 word"
    twilio = start_standin("acme-user", rotated, ip=ACME_IP)
    core.replace_namespaced_secret("acme-sip", namespace, credentials(namespace, "acme", rotated))
    auth = f"/etc/asterisk/{POD_FILES[0]}"
    wait_for(lambda: "n3w\\;Pa55 word" in pbx.read_file(auth), what="the rotated password")
    invites = call(pbx, twilio, "to-acme", "+15551234567")
    assert twilio.verify_digest(rotated)
    assert 200 in [r.status for r in twilio.responses(invites[-1].call_id)]
    assert rotated not in operator.log()
