"""Twilio's SIP side follows its REST side (testbed/sip_gate.py): a real Asterisk dials out
through the gate, which accepts a digest only when it matches a credential the REST stand-in
holds at that moment for the trunk the INVITE names (with `Rules.credential_delay`), and answers
403 itself otherwise. Addresses: gate 127.0.0.201, Asterisk 127.0.0.210 (no other test's)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError

import pytest
from twilio.rest import Client

from testbed import asterisk as asterisk_mod
from testbed import sipp as sipp_mod
from testbed.asterisk import AsteriskContainer
from testbed.sip_gate import GateDecision, TwilioSipSide, check_digest
from testbed.sipp import REALM, digest_response
from testbed.twilio_rest import ADMIN, StandInHttpClient, TwilioAccount, TwilioRestStandIn

DOMAIN = "acme.pstn.twilio.com"
GATE_IP, ASTERISK_IP = "127.0.0.201", "127.0.0.210"
NUMBER, CALLER_ID = "+15551234567", "+15550001111"
FIRST, SECOND = "Rotation-Passw0rd-1", "Rotation-Passw0rd-2"

NEEDS_ASTERISK = (
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed"),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
)
_SIPP_PIDS: set[int] = set()


@pytest.fixture
def rest() -> Iterator[TwilioRestStandIn]:
    standin = TwilioRestStandIn()
    standin.serve()
    yield standin
    standin.close()
    assert standin.violations == []


@pytest.fixture
def trunk(rest: TwilioRestStandIn) -> Any:
    """The trunk of DOMAIN with its credential list (returned) holding acme-1, via the API."""
    base = f"http://127.0.0.1:{rest.server.server_address[1]}"  # type: ignore[union-attr]
    sdk = Client(
        rest.account.account_sid, rest.account.auth_token, http_client=StandInHttpClient(base)
    )
    tk = sdk.trunking.v1.trunks.create(domain_name=DOMAIN)
    creds = sdk.api.v2010.account.sip.credential_lists.create(friendly_name="acme")
    creds.credentials.create(username="acme-1", password=FIRST)
    sdk.trunking.v1.trunks(tk.sid).credentials_lists.create(credential_list_sid=creds.sid)
    return creds


@pytest.fixture(scope="module")
def pbx() -> Iterator[AsteriskContainer]:
    asterisk_mod.ensure_image()
    with AsteriskContainer("gate", ASTERISK_IP, {DOMAIN: GATE_IP}, tls=False) as container:
        yield container


def needs_asterisk(test: Any) -> Any:
    for mark in NEEDS_ASTERISK:
        test = mark(test)
    return test


def side(request: pytest.FixtureRequest, account: TwilioAccount, qop: bool = False):
    twilio = TwilioSipSide(account, GATE_IP, qop=qop)
    request.addfinalizer(twilio.cleanup)
    twilio.start()
    assert twilio.sipp.pid is not None
    _SIPP_PIDS.add(twilio.sipp.pid)
    return twilio


def use(pbx: AsteriskContainer, username: str, password: str) -> None:
    """The trunk's endpoint in Asterisk, dialing out with username/password."""
    pbx.write_file(
        "/etc/asterisk/pjsip.d/acme.conf",
        f"[acme]\ntype = endpoint\ntransport = transport-udp\ncontext = from-acme\n"
        f"disallow = all\nallow = ulaw,alaw\noutbound_auth = acme-auth\naors = acme-aor\n"
        f"from_domain = {DOMAIN}\nfrom_user = {CALLER_ID}\n\n"
        f"[acme-auth]\ntype = auth\nauth_type = userpass\nusername = {username}\n"
        f"password = {password}\n\n[acme-aor]\ntype = aor\ncontact = sip:{DOMAIN}\n",
    )
    assert "reloaded successfully" in pbx.rx("module reload res_pjsip.so")


def call(pbx: AsteriskContainer, twilio: TwilioSipSide) -> tuple[GateDecision, list[int]]:
    """One call out; the gate's verdict on its authenticated INVITE and the INVITE's statuses
    as Asterisk got them (a refused call is over at the 403, an answered one at the BYE)."""
    before = len(twilio.gate.decisions)
    pbx.rx(f"channel originate PJSIP/{NUMBER}@acme application Wait 1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(twilio.gate.decisions) > before:
            decision = twilio.gate.decisions[before]
            statuses = twilio.gate.statuses(decision.call_id)
            done = [m for m in twilio.sipp.messages() if m.method == "BYE"]
            if (403 in statuses) or any(m.call_id == decision.call_id for m in done):
                return decision, statuses
        time.sleep(0.2)
    raise AssertionError(f"no verdict and end of call in 30 s: {twilio.gate.messages[-4:]}")


@needs_asterisk
@pytest.mark.parametrize("qop", [False, True], ids=["plain", "qop-auth"])
def test_the_credential_the_trunk_holds_is_answered(request, rest, trunk, pbx, qop) -> None:
    rest.account.rules.credential_delay = 0
    twilio = side(request, rest.account, qop)
    use(pbx, "acme-1", FIRST)
    decision, statuses = call(pbx, twilio)
    assert decision.accepted and (decision.username, decision.domain) == ("acme-1", DOMAIN)
    assert statuses == [407, 200], statuses
    invite = twilio.sipp.invites()[-1]  # what reached sipp carried the digest, with its qop
    assert invite.header("Proxy-Authorization") and invite.authorization is not None
    assert invite.authorization.get("qop") == ("auth" if qop else None)
    assert twilio.sipp.verify_digest(FIRST, "acme-1")
    assert twilio.gate.failures() == [] and rest.account.sip_decisions == [decision]
    assert twilio.gate.errors == []


@needs_asterisk
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("api-delete", "not a credential of the trunk"),
        ("console-delete", "not a credential of the trunk"),
        ("api-new-password", "wrong password for 'acme-1'"),
    ],
)
def test_a_removed_or_replaced_credential_is_refused_at_once(
    request, rest, trunk, pbx, how, reason
) -> None:
    rest.account.rules.credential_delay = 0
    creds = trunk
    twilio = side(request, rest.account)
    use(pbx, "acme-1", FIRST)
    assert call(pbx, twilio)[0].accepted
    (cred,) = rest.account.find("SipCredential", username="acme-1")
    if how == "api-delete":
        creds.credentials(cred["sid"]).delete()
    elif how == "console-delete":
        rest.account.console_delete("SipCredential", cred["sid"])
    else:
        creds.credentials(cred["sid"]).update(password=SECOND)
    decision, statuses = call(pbx, twilio)
    assert not decision.accepted and reason in decision.reason, decision
    assert statuses == [407, 403], statuses
    # The refused INVITE and its ACK never reached sipp: only the challenged one and the ACK.
    seen = [m for m in twilio.sipp.messages() if m.call_id == decision.call_id]
    assert [(m.method, m.authorization) for m in seen] == [("INVITE", None), ("ACK", None)]


@needs_asterisk
def test_a_created_credential_is_accepted_only_after_the_delay(request, rest, trunk, pbx) -> None:
    delay = rest.account.rules.credential_delay = 6.0
    creds = trunk
    twilio = side(request, rest.account)
    creds.credentials.create(username="acme-2", password=SECOND)
    created = rest.account.credential_history[-1][0]
    use(pbx, "acme-2", SECOND)
    early, statuses = call(pbx, twilio)
    assert early.at < created + delay, "the first call came too late to test the delay"
    assert not early.accepted and "not in effect yet" in early.reason and statuses == [407, 403]
    time.sleep(max(0.0, created + delay - time.time()) + 0.2)
    late, statuses = call(pbx, twilio)
    assert late.accepted and late.at >= created + delay and statuses == [407, 200]
    assert twilio.gate.failures() == [early]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"realm": "example.com"}, "realm"),
        ({"algorithm": "SHA-256"}, "algorithm"),
        ({"nonce": "made-up"}, "was not issued"),
        ({"qop": "auth", "nc": "00000001", "cnonce": "c"}, "qop"),
        ({"uri": "sip:+15550000000@acme.pstn.twilio.com"}, "Request-URI"),
        ({"username": "someone"}, "not a credential"),
        ({"response": "0" * 32}, "wrong password"),
    ],
)
def test_a_digest_is_checked_whole(change: dict[str, str], reason: str) -> None:
    uri = f"sip:{NUMBER}@{DOMAIN}"
    auth = {"username": "u", "realm": REALM, "nonce": "n1", "uri": uri, "algorithm": "MD5"}
    auth["response"] = digest_response(
        username="u", realm=REALM, password=FIRST, method="INVITE", uri=uri, nonce="n1"
    )
    held, issued = frozenset({("u", FIRST)}), {"n1": None}
    assert check_digest(auth, uri, held, issued) == ""
    assert reason in check_digest({**auth, **change}, uri, held, issued)
    assert "2 passwords" in check_digest(auth, uri, held | {("u", SECOND)}, issued)


def test_the_history_applies_the_delay_both_ways() -> None:
    """New credentials and new passwords wait `credential_delay`; removed ones stop at once."""
    account, now = TwilioAccount(), [100.0]
    account.clock = lambda: now[0]
    account.credential_history = [(now[0], {})]
    account.rules.credential_delay = 10
    tk = account.create("Trunk", {"domain_name": DOMAIN}, {})
    cl = account.create("SipCredentialList", {"friendly_name": "acme"}, {})
    cr = account.create(
        "SipCredential", {"username": "u", "password": FIRST}, {"CredentialListSid": cl}
    )
    account.create("CredentialList", {"credential_list_sid": cl}, {"TrunkSid": tk})
    assert account.accepted_credentials(DOMAIN, 109.9) == frozenset()
    assert account.accepted_credentials(DOMAIN, 110) == {("u", FIRST)}
    now[0] = 120
    account.update("SipCredential", account.objects["SipCredential"][cr], {"password": SECOND})
    assert account.accepted_credentials(DOMAIN, 120) == frozenset()  # neither password
    assert account.accepted_credentials(DOMAIN, 130) == {("u", SECOND)}
    assert account.accepted_credentials(DOMAIN, 115) == {("u", FIRST)}  # as it was then
    now[0] = 140
    account.delete("SipCredential", cr)
    assert account.accepted_credentials(DOMAIN, 140) == frozenset()
    assert account.credentials_of_domain(DOMAIN) == {}


def test_the_admin_api_for_a_stand_in_in_another_process(rest, trunk) -> None:
    assert not [o.template for o in rest.operations if o.template.startswith(ADMIN)]
    base = f"http://127.0.0.1:{rest.server.server_address[1]}{ADMIN}"

    def admin(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except HTTPError as error:
            return error.code, json.loads(error.read())

    status, seeded = admin("POST", "numbers", {"phone_number": NUMBER})
    assert status == 201 and rest.account.find("IncomingPhoneNumber")[0]["sid"] == seeded["sid"]
    assert admin("POST", "rules", {"credential_delay": 2.5})[1]["credential_delay"] == 2.5
    admin("POST", "faults", {"latency": 0, "fail": {"operation_id": "ListTrunk", "status": 503}})
    assert rest.faults.scripted == {"ListTrunk": [(503, False)]}
    (cred,) = rest.account.find("SipCredential")
    assert admin("DELETE", f"console/SipCredential/{cred['sid']}") == (204, None)
    assert rest.account.credentials_of_domain(DOMAIN) == {}
    assert admin("DELETE", f"console/SipCredential/{cred['sid']}")[0] == 404
    state = admin("GET", "state")[1]
    assert state["rules"]["credential_delay"] == 2.5 and "SipCredential" in state["objects"]
    assert admin("GET", "sip-decisions") == (200, [])
    assert admin("GET", "nothing-here")[0] == 404


@pytest.mark.e2e
def test_zz_nothing_left_behind() -> None:
    """Runs last here: every sipp this module started is gone and the gate's port is free."""
    assert not sipp_mod.running_pids() & _SIPP_PIDS
    for pid in _SIPP_PIDS:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert b"sipp" not in f.read(), f"sipp pid {pid} still running"
        except FileNotFoundError:
            pass
    assert not sipp_mod._udp_bound(GATE_IP, 5060) and not sipp_mod._udp_bound(GATE_IP, 5070)
