"""Secure trunks (`secure: true`): TLS signalling and SRTP (SDES) media, end to end.

Twilio is played by testbed/sipp.py TlsTwilioStandIn: stunnel terminates TLS on the stand-in's
address, port 5061, with a certificate made for the test, and forwards plain TCP to a sipp UAS
(Debian's sipp has no TLS). Asterisk reaches it through its `transport-tls` only: it has no TCP
transport, so whatever sipp received came through stunnel, whose log names the client and the
TLS it negotiated. What the trunk put on the wire is read from sipp's message trace, never from
files in the pod.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from testbed.sipp import SipMessage, TlsTwilioStandIn, TwilioStandIn
from tests.conftest import wait_for
from tests.e2e.helpers import (
    PASSWORD,
    SID_A,
    SID_B,
    condition,
    credentials,
    status,
    trunk,
    wait_ready,
)
from trunk_operator.core.asterisk_output import parse_endpoints

pytestmark = pytest.mark.e2e

ACME_TLS_IP = "127.0.0.45"  # stunnel on :5061 (TLS), sipp behind it on :5062 (TCP)
GLOBEX_IP = "127.0.0.46"  # a plain UDP stand-in for the trunk that is not secure
HOSTS = {"acme.pstn.twilio.com": ACME_TLS_IP, "globex.pstn.twilio.com": GLOBEX_IP}
NUMBER = "+15551234567"
STUNNEL_SESSION = re.compile(r"accepted connection|TLS accepted|TLSv[\d.]+ ciphersuite|s_connect: ")
CRYPTO = re.compile(r"^a=crypto:\d+ AES_CM_128_HMAC_SHA1_(80|32) inline:\S+$", re.M)


def secure_trunk(name: str, **spec: Any) -> dict[str, Any]:
    return trunk(name, secure=True, transport="transport-tls", **spec)


@pytest.fixture
def start_tls_standin() -> Iterator[Callable[..., TlsTwilioStandIn]]:
    """TLS stand-ins, stopped (stunnel and sipp, by pid) and removed whatever the test did."""
    started: list[TlsTwilioStandIn] = []

    def start(username: str, password: str, ip: str = ACME_TLS_IP) -> TlsTwilioStandIn:
        standin = TlsTwilioStandIn(ip, username, password, common_name="acme.pstn.twilio.com")
        started.append(standin)
        return standin.start()

    yield start
    for standin in started:
        standin.cleanup()


def sdp_media(message: SipMessage) -> list[str]:
    return re.findall(r"^m=audio \d+ (\S+) ", message.body, re.M)


def describe(standin: TlsTwilioStandIn) -> str:
    """What the stand-in saw, for assertion messages."""
    trace = "\n".join(f"{m.direction}: {m.start_line}" for m in standin.log())
    return f"sipp trace:\n{trace}\nstunnel log (tail):\n{standin.stunnel_log()[-2000:]}"


def test_secure_trunk_calls_over_tls_offers_sdes_and_authenticates(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_tls_standin: Callable[..., TlsTwilioStandIn],
) -> None:
    twilio = start_tls_standin("acme-user", PASSWORD)
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.45", HOSTS)
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    started = time.monotonic()
    apply(secure_trunk("acme"))
    wait_ready(custom, namespace, "acme")
    print(f"\nsecure trunk: apply -> Ready in {time.monotonic() - started:.2f} s")
    # Qualify reaches Twilio over TLS too.
    st = wait_for(
        lambda: (
            (s := status(custom, namespace, "acme"))
            and condition(s, "Reachable").get("status") == "True"
            and s
        ),
        timeout=30,
        what="the TLS contact Avail",
    )
    assert st["pods"][0]["contacts"][0]["status"] == "Avail"

    pbx.rx(f"channel originate Local/{NUMBER}@to-acme application Wait 1")
    twilio.wait_for(lambda msgs: [m for m in msgs if m.method == "BYE"], timeout=30)
    invites = twilio.invites()
    assert len(invites) == 2, describe(twilio)  # challenged once, then authenticated
    challenged, authenticated = invites

    # Signalled over TLS: to the TLS URI, every request Asterisk sent names TLS in its Via,
    # and each came through a TLS connection stunnel accepted from Asterisk's address
    # (sipp's TCP socket is where stunnel forwards; Asterisk has no TCP transport).
    assert challenged.uri == f"sip:{NUMBER}@acme.pstn.twilio.com:5061;transport=tls"
    vias = [m.header("Via") or "" for m in twilio.messages()]
    assert vias and all(v.startswith("SIP/2.0/TLS 127.0.10.45:5061") for v in vias), vias
    sessions = twilio.tls_sessions()
    assert sessions, describe(twilio)
    for session in sessions:
        assert session.peer.startswith("127.0.10.45:"), session
        assert session.negotiated and session.protocol == "TLSv1.2", session
        assert session.forwarded_to == f"{ACME_TLS_IP}:{twilio.port}", session
    print(f"TLS sessions seen by stunnel: {sessions}")

    # SRTP with SDES keys: both offers are RTP/SAVP with a crypto line, never plain RTP/AVP.
    for invite in invites:
        assert sdp_media(invite) == ["RTP/SAVP"], invite.body
        assert CRYPTO.search(invite.body), invite.body

    # Authenticated with the Secret's password, after the stand-in's 401.
    call = challenged.call_id
    assert [r.status for r in twilio.responses(call) if r.cseq and r.cseq[1] == "INVITE"] == [
        401,
        200,
    ], describe(twilio)
    assert authenticated.authorization is not None
    assert twilio.verify_digest(PASSWORD), twilio.digest_checks(PASSWORD)
    assert not twilio.verify_digest(PASSWORD + "x")  # the check can tell a wrong password
    # Asterisk took the SDES answer: it acknowledged the 200 and the call ran until its BYE.
    methods = [m.method for m in twilio.messages() if m.call_id == call]
    assert methods == ["INVITE", "ACK", "INVITE", "ACK", "BYE"], methods

    # The call as the stand-in saw it (pytest -s shows it).
    print("\n".join(f"{m.direction}: {m.start_line}" for m in twilio.log() if m.call_id == call))
    print(f"Via: {authenticated.header('Via')}")
    print("\n".join(line for line in authenticated.body.splitlines() if line[:2] in ("m=", "a=")))
    print(
        "\n".join(
            line.split(": ", 1)[1]
            for line in twilio.stunnel_log().splitlines()
            if STUNNEL_SESSION.search(line)
        )
    )


# The Asterisk of this test has no TLS transport. A secure trunk may name one that does not
# exist, or an existing transport that is not TLS (the CRD refuses only `transport-udp`):
# either way Asterisk could not place a single call (`PJSIP_ETPNOTSUITABLE` for the second).
ALT_UDP_TRANSPORT = "[transport-udp-alt]\ntype = transport\nprotocol = udp\nbind = {ip}:5070\n"


@pytest.mark.parametrize(
    "transport",
    [
        "transport-tls",
        "transport-udp-alt",
    ],
)
def test_secure_trunk_without_a_tls_transport_is_reported_and_the_pod_keeps_its_other_trunks(
    transport: str,
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    globex_twilio = start_standin("globex-user", PASSWORD, ip=GLOBEX_IP)
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.46", HOSTS, tls=False)
    if transport != "transport-tls":  # a second UDP transport, added by the deployment
        pbx.write_file(
            "/etc/asterisk/pjsip.d/local-transports.conf", ALT_UDP_TRANSPORT.format(ip=pbx.bind_ip)
        )
        pbx.rx("module reload res_pjsip.so")
    transports = pbx.rx("pjsip show transports")
    assert " tls " not in transports  # no TLS transport at all
    assert (transport in transports) == (transport != "transport-tls")
    for name in ("acme", "globex"):
        core.create_namespaced_secret(namespace, credentials(namespace, name))
    # Two Twilio trunks on one pod are told apart by Account SID.
    apply(trunk("globex", inbound={"accountSid": SID_B}))
    wait_ready(custom, namespace, "globex")

    apply(trunk("acme", secure=True, transport=transport, inbound={"accountSid": SID_A}))
    # Settled either way: refused (the expected outcome) or loaded and verified.
    settled = ("TransportNotFound", "AsteriskRejected", "Ready")
    st = wait_for(
        lambda: (
            (s := status(custom, namespace, "acme"))
            and condition(s, "Ready").get("reason") in settled
            and s
        ),
        timeout=30,
        what="the secure trunk's delivery to settle",
    )
    ready = condition(st, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TransportNotFound"), st
    assert transport in ready["message"], ready
    assert condition(st, "Delivered")["reason"] == "TransportNotFound"
    assert condition(st, "Stalled")["status"] == "True"  # only a change can help
    print(
        "\n".join(
            f"{c['type']}={c['status']} {c['reason']}: {c['message']}" for c in st["conditions"]
        )
    )
    # Nothing that cannot work was left loaded: the pod serves globex alone, as before.
    time.sleep(3)  # an observation round or so: the state must stay that way
    st = status(custom, namespace, "acme")
    assert condition(st, "Ready")["reason"] == "TransportNotFound", st
    assert set(parse_endpoints(pbx.rx("pjsip show endpoints"))) == {"GLOBEX"}
    assert "acme.pstn.twilio.com" not in pbx.rx("pjsip show contacts")
    globex = status(custom, namespace, "globex")
    assert condition(globex, "Ready")["status"] == "True", globex

    before = len(globex_twilio.invites())
    pbx.rx(f"channel originate Local/{NUMBER}@to-globex application Wait 1")
    globex_twilio.wait_for(lambda msgs: [m for m in msgs if m.method == "BYE"], timeout=30)
    invite = globex_twilio.invites()[before:][-1]
    assert invite.uri == f"sip:{NUMBER}@globex.pstn.twilio.com"
    assert globex_twilio.verify_digest(PASSWORD)
    assert 200 in [r.status for r in globex_twilio.responses(invite.call_id)]
