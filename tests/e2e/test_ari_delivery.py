"""Pods that take their trunks over ARI (pod/ari.py, pod/delivery.py): real Asterisk with ARI
and sorcery `memory` wizards, the operator process, sipp as Twilio in both directions.

What must hold for such a pod, beyond what the file delivery proves: no PJSIP reload at all,
a change replaces objects (an AOR moved to another host keeps no old contact: a PUT would
merge), the pushed password and source ACL work on real calls, a call up on a trunk survives
its objects being replaced, a restarted Asterisk (memory gone) gets its trunks again, refused
ARI credentials are a clear condition, and a pod that had the trunk file moves to ARI with the
file gone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import ARI_PORT, AsteriskContainer
from testbed.sipp import TwilioCaller, TwilioStandIn
from tests.conftest import wait_for
from tests.e2e.helpers import (
    ACME_IP,
    DESTINATIONS,
    HOSTS,
    OUTSIDER_IP,
    PASSWORD,
    SID_A,
    SID_B,
    TWILIO_EDGE_IP,
    assert_still_up,
    call,
    condition,
    credentials,
    landed,
    status,
    tone_call,
    trunk,
    wait_ready,
)
from trunk_operator.core.render import POD_FILE
from trunk_operator.pod.ari import ARI_CREDENTIALS_ANNOTATION, ARI_URL_ANNOTATION
from trunk_operator.pod.channel import CONFIG_DIR, PUSHED_DIR, STATE_DIR

pytestmark = pytest.mark.e2e

ARI_USER, ARI_PASSWORD = "trunkop", "ari-pass-1"
RELOADED = "Reloading module 'res_pjsip.so'"
EDGE = {"extraSourceRanges": [f"{TWILIO_EDGE_IP}/32"]}


def ari_secret(namespace: str, password: str) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name="asterisk-ari", namespace=namespace),
        string_data={"username": ARI_USER, "password": password},
    )


def ari_annotations(bind_ip: str) -> dict[str, str]:
    """The pod's opt-in; the testbed's ARI listens on the container's own address."""
    url = f"http://{bind_ip}:{ARI_PORT}/ari"
    return {ARI_CREDENTIALS_ANNOTATION: "asterisk-ari", ARI_URL_ANNOTATION: url}


def ari_pod(
    start_asterisk_pod: Callable[..., AsteriskContainer],
    core: client.CoreV1Api,
    namespace: str,
    bind_ip: str,
    secret_password: str = ARI_PASSWORD,
    annotated: bool = True,
) -> AsteriskContainer:
    """An Asterisk pod with ARI (its user's password ARI_PASSWORD), the ARI Secret (with
    `secret_password`), and the pod's opt-in unless not `annotated` (yet)."""
    core.create_namespaced_secret(namespace, ari_secret(namespace, secret_password))
    return start_asterisk_pod(
        "asterisk-0",
        bind_ip,
        HOSTS,
        ari=(ARI_USER, ARI_PASSWORD),
        annotations=ari_annotations(bind_ip) if annotated else None,
    )


def pjsip_d(pbx: AsteriskContainer) -> str:
    return pbx.exec("ls", f"{CONFIG_DIR}/pjsip.d").stdout


def test_trunks_pushed_over_ari_call_change_and_come_back_after_a_restart(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    standin = start_standin("acme-user", PASSWORD, ip=ACME_IP)
    pbx = ari_pod(start_asterisk_pod, core, namespace, "127.0.10.48")
    pbx.write_file(f"{CONFIG_DIR}/extensions.d/local.conf", DESTINATIONS)
    pbx.rx("dialplan reload")
    for name, sid in (("acme", SID_A), ("globex", SID_B)):
        core.create_namespaced_secret(namespace, credentials(namespace, name))
        apply(trunk(name, inbound={"accountSid": sid, **EDGE}))
    for name in ("acme", "globex"):
        wait_ready(custom, namespace, name)

    # Served from memory: the file is the record of what was pushed, not in pjsip.d/.
    assert POD_FILE not in pjsip_d(pbx)
    record = pbx.exec("cat", f"{PUSHED_DIR}/pjsip.d/{POD_FILE}").stdout
    assert "[ACME]" in record and "[GLOBEX]" in record
    assert RELOADED not in pbx.logs()
    # The pushed password (with `;` and `#`) answers Twilio's digest challenge...
    invites = call(pbx, standin, "to-acme", "+15551234567")
    assert invites[0].uri == "sip:+15551234567@acme.pstn.twilio.com"
    assert standin.verify_digest(PASSWORD)
    # ...and the pushed identify and ACL tell callers apart.
    result = TwilioCaller(TWILIO_EDGE_IP, SID_B).call(pbx.bind, "+15559990001", "+15550000001")
    assert result.status == 200
    assert landed(pbx, "+15550000001") == "from-twilio/+15559990001/GLOBEX"
    spoofed = TwilioCaller(OUTSIDER_IP, SID_B).call(pbx.bind, "+15559990001", "+15550000002")
    assert spoofed.status in (401, 403) and landed(pbx, "+15550000002") is None

    # A change replaces the objects: the AOR's old contact is gone, the codecs are new.
    apply(
        trunk(
            "acme",
            terminationHost="globex.pstn.twilio.com",
            codecs=["alaw"],
            inbound={"accountSid": SID_A, **EDGE},
        )
    )
    wait_for(
        lambda: (
            (st := status(custom, namespace, "acme"))
            and st.get("observedGeneration") == 2
            and condition(st, "Ready").get("status") == "True"
        ),
        what="acme Ready for its change",
    )
    aor = pbx.rx("pjsip show aor ACME-aor")
    assert "globex.pstn.twilio.com" in aor and "acme.pstn.twilio.com" not in aor, aor
    # Only replaced objects: read in depth, no listing of the pod; the status still has the
    # endpoint's state and its new contact, the other trunk's too.
    assert f"{namespace}/asterisk-0: 2 resources" in operator.log()
    assert "no listings: only replaced objects" in operator.log()
    contacts = wait_for(
        lambda: status(custom, namespace, "acme")["pods"][0].get("contacts"),
        what="acme's contacts in its status",
    )
    assert [c["uri"] for c in contacts] == ["sip:globex.pstn.twilio.com"], contacts
    assert status(custom, namespace, "globex")["pods"][0].get("endpointState")
    assert ": (alaw)" in pbx.rx("pjsip show endpoint ACME")
    assert "acme.pstn.twilio.com" not in pbx.exec("cat", f"{PUSHED_DIR}/pjsip.d/{POD_FILE}").stdout
    assert RELOADED not in pbx.logs()

    # Memory objects die with Asterisk: a restarted one gets them again (the operator's
    # observer finds them missing), all of them, as the record of another start is void.
    pushed_for = pbx.exec("head", "-1", f"{STATE_DIR}/pushed.state").stdout
    pbx.restart_in_place()
    wait_for(
        lambda: "ACME" in (shown := pbx.rx("pjsip list endpoints")) and "GLOBEX" in shown,
        timeout=60,
        what="the trunks pushed again into the restarted Asterisk",
    )
    assert pbx.exec("head", "-1", f"{STATE_DIR}/pushed.state").stdout != pushed_for
    for name in ("acme", "globex"):
        wait_ready(custom, namespace, name)
    result = TwilioCaller(TWILIO_EDGE_IP, SID_A).call(pbx.bind, "+15559990003", "+15550000003")
    assert result.status == 200
    assert landed(pbx, "+15550000003") == "from-twilio/+15559990003/ACME"


def test_refused_ari_credentials_are_a_condition_and_a_fixed_secret_clears_it(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    pbx = ari_pod(start_asterisk_pod, core, namespace, "127.0.10.49", "not-the-password")
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    apply(trunk("acme", inbound={"accountSid": SID_A, **EDGE}))
    st = wait_for(
        lambda: (
            (s := status(custom, namespace, "acme"))
            and condition(s, "Ready").get("reason") == "AriPushFailed"
            and s
        ),
        timeout=60,
        what="acme to report the refused ARI push",
    )
    message = condition(st, "Ready")["message"]
    assert "401" in message, message
    assert "not-the-password" not in str(st) and ARI_PASSWORD not in str(st)
    assert "ACME" not in pbx.rx("pjsip list endpoints")

    core.patch_namespaced_secret(
        "asterisk-ari", namespace, {"stringData": {"password": ARI_PASSWORD}}
    )
    wait_ready(custom, namespace, "acme", timeout=60)  # the next retry reads the Secret again
    assert "ACME" in pbx.rx("pjsip list endpoints")
    assert "not-the-password" not in operator.log() and ARI_PASSWORD not in operator.log()


def test_a_pod_that_had_the_trunk_file_moves_to_ari(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    pbx = ari_pod(start_asterisk_pod, core, namespace, "127.0.10.50", annotated=False)
    pbx.write_file(f"{CONFIG_DIR}/extensions.d/local.conf", DESTINATIONS)
    pbx.rx("dialplan reload")
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    apply(trunk("acme", inbound={"accountSid": SID_A, **EDGE}))
    wait_ready(custom, namespace, "acme")
    assert POD_FILE in pjsip_d(pbx)  # delivered as a file: no annotation yet

    core.patch_namespaced_pod(
        "asterisk-0", namespace, {"metadata": {"annotations": ari_annotations("127.0.10.50")}}
    )
    wait_for(
        lambda: (
            POD_FILE not in pjsip_d(pbx)
            and pbx.exec("test", "-e", f"{PUSHED_DIR}/pjsip.d/{POD_FILE}", check=False).returncode
            == 0
        ),
        timeout=60,
        what="the trunk file moved out and pushed",
    )
    wait_ready(custom, namespace, "acme")
    # The file's objects were unloaded before the same ids were pushed (an id in two stores
    # can crash Asterisk): it is still up, and serves the trunk.
    assert "ACME" in pbx.rx("pjsip list endpoints")
    result = TwilioCaller(TWILIO_EDGE_IP, SID_A).call(pbx.bind, "+15559990004", "+15550000004")
    assert result.status == 200
    assert landed(pbx, "+15550000004") == "from-twilio/+15559990004/ACME"


def test_a_call_up_survives_its_own_trunk_being_replaced_over_ari(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    """A change deletes and creates the trunk's objects again: a call already up on the
    endpoint keeps its channel and its media (Asterisk plays a tone to Twilio all along)."""
    twilio = start_standin("acme-user", PASSWORD, ip=ACME_IP)
    pbx = ari_pod(start_asterisk_pod, core, namespace, "127.0.10.51")
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    apply(trunk("acme", inbound={"accountSid": SID_A, **EDGE}))
    wait_ready(custom, namespace, "acme")

    call_id = tone_call(pbx, twilio)

    def still_up(step: str) -> None:
        assert_still_up(pbx, twilio, call_id, step)

    still_up("the call starting")
    apply(trunk("acme", inbound={"accountSid": SID_A, **EDGE}, codecs=["ulaw"]))
    wait_for(
        lambda: (
            (st := status(custom, namespace, "acme"))
            and st.get("observedGeneration") == 2
            and condition(st, "Ready").get("status") == "True"
        ),
        what="acme Ready for its codec change",
    )
    assert ": (ulaw)" in pbx.rx("pjsip show endpoint ACME")
    still_up("its endpoint replaced")
    core.replace_namespaced_secret(
        "acme-sip", namespace, credentials(namespace, "acme", "rotated;pw")
    )
    wait_for(
        lambda: ": rotated;pw" in pbx.rx("pjsip show auth ACME-auth"),
        what="the rotated password pushed",
    )
    still_up("its auth replaced")
    pbx.rx("channel request hangup all")
