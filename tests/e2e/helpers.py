"""Helpers the e2e tests share (fixtures, builders, waits)."""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client

from testbed.asterisk import AsteriskContainer
from testbed.sipp import TwilioStandIn
from tests.conftest import wait_for
from trunk_operator.core.models import GROUP, VERSION

ACME_IP, GLOBEX_IP = "127.0.0.14", "127.0.0.15"
HOSTS = {"acme.pstn.twilio.com": ACME_IP, "globex.pstn.twilio.com": GLOBEX_IP}
PASSWORD = "pa;ss #1"
SID_A, SID_B = "AC" + "a" * 32, "AC" + "b" * 32


def trunk(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TwilioTrunk",
        "metadata": {"name": name},
        "spec": {
            "terminationHost": f"{name}.pstn.twilio.com",
            "credentials": {"secretName": f"{name}-sip"},
            "qualifyFrequencySeconds": 2,
            "outbound": {"context": f"to-{name}"},
            **spec,
        },
    }


def credentials(namespace: str, name: str, password: str = PASSWORD) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=f"{name}-sip", namespace=namespace),
        string_data={"username": f"{name}-user", "password": password},
    )


def status(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", name)
    return obj.get("status", {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == type_), {})


def wait_ready(
    custom: client.CustomObjectsApi, namespace: str, name: str, timeout: float = 30
) -> dict:
    return wait_for(
        lambda: (
            (st := status(custom, namespace, name))
            and condition(st, "Ready").get("status") == "True"
            and st
        ),
        timeout=timeout,
        what=f"TwilioTrunk {name} Ready",
    )


def call(pbx: AsteriskContainer, standin: TwilioStandIn, context: str, number: str) -> Any:
    before = len(standin.invites())
    pbx.rx(f"channel originate Local/{number}@{context} application Wait 1")
    standin.wait_for(lambda msgs: len([m for m in msgs if m.method == "INVITE"]) >= before + 2)
    standin.wait_for(lambda msgs: [m for m in msgs if m.method == "BYE"], timeout=30)
    return standin.invites()[before:]


def sent_packets(pbx: AsteriskContainer) -> int:
    """RTP packets Asterisk has sent on the trunk's channel (`pjsip show channelstats`)."""
    for line in pbx.rx("pjsip show channelstats").splitlines():
        # BridgeId ChannelId UpTime Codec | Receive: Count Lost Pct Jitter | Transmit: Count ...
        fields = line.split()
        if len(fields) >= 13 and fields[1].startswith("ACME-"):
            return int(fields[8])
    return -1


def trunk_channel_up(pbx: AsteriskContainer) -> bool:
    return "PJSIP/ACME-" in pbx.rx("core show channels concise")


def tone_call(pbx: AsteriskContainer, twilio: TwilioStandIn) -> str | None:
    """A call to Twilio through ACME in which Asterisk plays a tone (Milliwatt), so media
    flows all along; its Call-ID once it is up."""
    pbx.rx("channel originate Local/+15551234567@to-acme application Milliwatt")
    twilio.wait_for(lambda msgs: len([m for m in msgs if m.method == "INVITE"]) >= 2)
    call_id = twilio.invites()[-1].call_id
    wait_for(lambda: 200 in [r.status for r in twilio.responses(call_id)], what="answered")
    wait_for(lambda: trunk_channel_up(pbx), what="the trunk channel up")
    return call_id


def assert_still_up(
    pbx: AsteriskContainer, twilio: TwilioStandIn, call_id: str | None, step: str
) -> None:
    """The call has its channel, no BYE, and Asterisk sent RTP in the last second."""
    before = sent_packets(pbx)
    time.sleep(1)
    after = sent_packets(pbx)
    byes = [m for m in twilio.messages() if m.method == "BYE" and m.call_id == call_id]
    assert trunk_channel_up(pbx) and not byes, f"the call ended during: {step}"
    assert after > before, f"no media flowing after: {step} ({before} -> {after})"
    print(f"{step}: {before} -> {after} RTP packets sent")


TWILIO_EDGE_IP = "127.0.0.30"  # inside the trunks' source ranges (inbound.extraSourceRanges)
OUTSIDER_IP = "127.0.0.31"  # anyone else on the network
DESTINATIONS = """
; Test destinations: each records where the call landed, keyed by the caller's number.
[from-twilio]
exten => _+X.,1,Set(DB(calls/${CALLERID(num):1})=from-twilio/${EXTEN}/${CHANNEL(endpoint)})
 same => n,Answer()
 same => n,Wait(10)
[did-main]
exten => _+X.,1,Set(DB(calls/${CALLERID(num):1})=did-main/${EXTEN}/${CHANNEL(endpoint)})
 same => n,Answer()
 same => n,Wait(10)
[sales]
exten => 100,1,Set(DB(calls/${CALLERID(num):1})=sales/${EXTEN}/${CHANNEL(endpoint)})
 same => n,Answer()
 same => n,Wait(10)
[lost-conflict]
exten => _+X.,1,Set(DB(calls/${CALLERID(num):1})=lost-conflict/${EXTEN}/${CHANNEL(endpoint)})
 same => n,Answer()
 same => n,Wait(10)
"""


def landed(pbx: AsteriskContainer, caller: str) -> str | None:
    out = pbx.rx(f"database get calls {caller.lstrip('+')}", check=False)
    return out.split("Value:", 1)[1].strip() if "Value:" in out else None


def reloads(pbx: AsteriskContainer) -> int:
    return pbx.logs().count("Reloading module 'res_pjsip.so'")


def served_password(pbx: AsteriskContainer) -> str:
    """The password Asterisk has loaded for the trunk (not the file: what it uses)."""
    for line in pbx.rx("pjsip show auth ACME-auth", check=False).splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "password":
            return value.strip()
    return ""


STORE = "vault"  # the ClusterSecretStore examples/vault/externalsecret.yaml names
VAULT_KEY = "telephony/twilio/acme"


def vault_store(data: dict[str, str]) -> dict[str, Any]:
    """The ClusterSecretStore, its fake provider holding `data` under VAULT_KEY as JSON (what
    the ExternalSecret's `property` picks from)."""
    return {
        "apiVersion": "external-secrets.io/v1",
        "kind": "ClusterSecretStore",
        "metadata": {"name": STORE},
        "spec": {"provider": {"fake": {"data": [{"key": VAULT_KEY, "value": json.dumps(data)}]}}},
    }
