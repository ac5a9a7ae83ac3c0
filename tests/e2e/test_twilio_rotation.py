"""A password rotated on both ends of a trunk while calls go out: the operator process, a real
Asterisk pod, Twilio's REST side (the stand-in built from its specs, as the operator's
TRUNKOP_TWILIO_BASE_URL) and its SIP side (sipp behind the gate of testbed/sip_gate.py, which
accepts a digest only against the credentials the REST side holds at that moment, and a new one
only after `credential_delay`: the strict reading of what Twilio does not document)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from testbed.sip_gate import TwilioSipSide
from testbed.twilio_rest import TwilioRestStandIn
from tests.conftest import ROOT, put_secret, wait_for
from tests.e2e.helpers import condition, status, trunk, vault_store, wait_ready
from trunk_operator.core.models import GROUP, VERSION, twilio_credential_secret

pytestmark = pytest.mark.e2e

GATE_IP, ASTERISK_IP = "127.0.0.17", "127.0.10.60"
FIRST, SECOND = "First-Passw0rd-of-acme", "Second-Passw0rd-of-acme"
DELAY = 2.0  # the SIP side takes a new credential this long after the REST side has it
PROPAGATION = 4  # what the trunk gives Twilio before Asterisk switches (> DELAY)


class Calls:
    """Calls through the trunk, one every `every` seconds, until stopped."""

    def __init__(self, pbx: AsteriskContainer, every: float = 0.7) -> None:
        self.pbx, self.every, self.placed = pbx, every, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.pbx.rx("channel originate Local/+15551234567@to-acme application Wait 1")
            self.placed += 1
            self.stop.wait(self.every)

    def __enter__(self) -> Calls:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def twilio_sip(twilio_rest: TwilioRestStandIn, tmp_path: Any) -> Iterator[TwilioSipSide]:
    delay = twilio_rest.account.rules.credential_delay
    twilio_rest.account.rules.credential_delay = DELAY
    (tmp_path / "sipp").mkdir()
    side = TwilioSipSide(twilio_rest.account, GATE_IP, workdir=tmp_path / "sipp")
    side.start()
    try:
        yield side
    finally:
        side.cleanup()
        twilio_rest.account.rules.credential_delay = delay


@pytest.fixture(params=["by-hand", "external-secrets"])
def set_password(
    request: pytest.FixtureRequest,
    cluster: Any,
    core: client.CoreV1Api,
    apply: Callable[[dict[str, Any]], None],
    namespace: str,
) -> Callable[[str], None]:
    """How the trunk's Secret gets a password: written by hand, or by External Secrets
    Operator from its fake provider (the vault), as examples/vault has it."""
    if request.param == "by-hand":
        return lambda password: put_secret(
            core, namespace, "acme-sip", {"username": "acme-user", "password": password}
        )
    request.getfixturevalue("external_secrets")
    external = yaml.safe_load((ROOT / "examples" / "vault" / "externalsecret.yaml").read_text())
    external["spec"]["refreshInterval"] = "1s"

    def at_the_vault(password: str) -> None:
        cluster.apply(vault_store({"username": "acme-user", "password": password}))
        apply(external)

    return at_the_vault


@pytest.fixture
def opted_in(
    operator: Any,
    set_password: Callable[[str], None],
    twilio_rest: TwilioRestStandIn,
    twilio_sip: TwilioSipSide,
    apply: Callable[[dict[str, Any]], None],
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> tuple[AsteriskContainer, str]:
    """An Asterisk pod, an account and an opted-in trunk Ready; its domain and pod."""
    domain = f"{namespace}.pstn.twilio.com"
    pbx = start_asterisk_pod("asterisk-0", ASTERISK_IP, {domain: GATE_IP}, tls=False)
    put_secret(core, namespace, "twilio-api", {"authToken": twilio_rest.account.auth_token})
    apply(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TwilioAccount",
            "metadata": {"name": "main"},
            "spec": {"accountSid": twilio_rest.account.account_sid, "secretName": "twilio-api"},
        }
    )
    set_password(FIRST)
    twilio = {
        "accountRef": {"name": "main"},
        "credentialPropagationSeconds": PROPAGATION,
        "rotationGraceSeconds": 3,
    }
    apply(trunk("acme", terminationHost=domain, qualifyFrequencySeconds=0, twilio=twilio))
    wait_ready(custom, namespace, "acme", timeout=120)
    return pbx, domain


def test_calls_through_a_rotation_all_authenticate_and_twilio_ends_with_the_new_credential(
    opted_in: tuple[AsteriskContainer, str],
    set_password: Callable[[str], None],
    twilio_rest: TwilioRestStandIn,
    twilio_sip: TwilioSipSide,
    operator: Any,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    pbx, domain = opted_in
    gate = twilio_sip.gate
    assert twilio_rest.account.credentials_of_domain(domain) == {"acme-user-1": FIRST}
    with Calls(pbx) as calls:
        wait_for(lambda: _accepted(gate, "acme-user-1") >= 3, timeout=60, what="calls going out")
        started = time.monotonic()
        set_password(SECOND)
        # The operator killed once Twilio has the new credential, before Asterisk switched.
        wait_for(lambda: "acme-user-2" in twilio_rest.account.credentials_of_domain(domain),
                 timeout=60, what="the new credential at Twilio")  # fmt: skip
        operator.stop()
        time.sleep(1)
        operator.start()
        wait_for(
            lambda: _accepted(gate, "acme-user-2") >= 3, timeout=120, what="calls with the new"
        )
        wait_for(
            lambda: twilio_rest.account.credentials_of_domain(domain) == {"acme-user-2": SECOND},
            timeout=120,
            what="the old credential removed",
        )
        print(f"\nSecret changed -> Twilio holds only the new: {time.monotonic() - started:.1f} s")
        time.sleep(2)  # calls after the removal too
    assert calls.placed >= 10
    assert gate.failures() == [], gate.failures()[:3]
    st = wait_ready(custom, namespace, "acme", timeout=60)
    assert st["twilio"]["username"] == "acme-user-2" and st["twilio"]["generation"] == 2
    secret = core.read_namespaced_secret(twilio_credential_secret("acme"), namespace)
    assert st["secretResourceVersion"] == secret.metadata.resource_version

    # A weak password changes neither side; calls still go out.
    set_password("weak")
    wait_for(
        lambda: (
            condition(status(custom, namespace, "acme"), "TwilioSynced").get("reason")
            == "WeakPassword"
        ),
        timeout=60,
        what="WeakPassword",
    )
    assert twilio_rest.account.credentials_of_domain(domain) == {"acme-user-2": SECOND}
    before = _accepted(gate, "acme-user-2")
    pbx.rx("channel originate Local/+15551234567@to-acme application Wait 1")
    wait_for(lambda: _accepted(gate, "acme-user-2") > before, timeout=30, what="a call after")
    assert gate.failures() == []

    # Revoked API credentials: the condition says so, and calls still go out.
    put_secret(core, namespace, "twilio-api", {"authToken": "revoked"})
    wait_for(
        lambda: (
            condition(status(custom, namespace, "acme"), "TwilioSynced").get("reason")
            == "TwilioCredentialsRefused"
        ),
        timeout=60,
        what="TwilioCredentialsRefused",
    )
    before = _accepted(gate, "acme-user-2")
    pbx.rx("channel originate Local/+15551234567@to-acme application Wait 1")
    wait_for(lambda: _accepted(gate, "acme-user-2") > before, timeout=30, what="a call after")
    assert gate.failures() == []

    # The link holds: a password Twilio does not hold is refused at the SIP side.
    list_sid = st["twilio"]["credentialListSid"]
    (held,) = twilio_rest.account.find(
        "SipCredential", username="acme-user-2", credential_list_sid=list_sid
    )
    twilio_rest.account.console_update("SipCredential", held["sid"], password="Console-Passw0rd")
    pbx.rx("channel originate Local/+15551234567@to-acme application Wait 1")
    wait_for(lambda: gate.failures(), timeout=30, what="the refused call")
    assert gate.failures()[0].username == "acme-user-2"


def _accepted(gate: Any, username: str) -> int:
    return sum(1 for d in gate.decisions if d.accepted and d.username == username)
