"""Inbound calls as Twilio places them, through the operator's DID routing, into real Asterisk.

A sipp UAC plays Twilio (testbed/sipp.py TwilioCaller): E.164 request URI with its `+`,
`X-Twilio-AccountSid`, PCMU/PCMA. Where a call landed is read from what the destination
dialplan did (it records context, extension and endpoint in AstDB), never from files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from testbed.sipp import TwilioCaller
from tests.conftest import wait_for
from tests.e2e.helpers import (
    DESTINATIONS,
    HOSTS,
    OUTSIDER_IP,
    SID_A,
    SID_B,
    TWILIO_EDGE_IP,
    credentials,
    landed,
    status,
    trunk,
    wait_ready,
)
from trunk_operator.core.models import GROUP, VERSION

pytestmark = pytest.mark.e2e


def segment(name: str, trunk_name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DIDSegment",
        "metadata": {"name": name},
        "spec": {"trunkRef": {"name": trunk_name}, **spec},
    }


def test_inbound_dids_route_where_their_segment_says_and_strangers_are_refused(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.38", HOSTS)
    pbx.write_file("/etc/asterisk/extensions.d/local.conf", DESTINATIONS)
    pbx.rx("dialplan reload")
    edge = {"extraSourceRanges": [f"{TWILIO_EDGE_IP}/32"]}
    for name in ("acme", "globex"):
        core.create_namespaced_secret(namespace, credentials(namespace, name))
    apply(trunk("acme", inbound={"accountSid": SID_A, **edge}))
    apply(trunk("globex", inbound={"accountSid": SID_B, **edge}))
    apply(
        segment(
            "acme-main",
            "acme",
            numbers=["+15551230001", "+15551230002"],
            ranges=[{"start": "+15557650000", "count": 100}],
            destination={"context": "did-main"},
            overrides=[{"number": "+15551230002", "context": "sales", "extension": "100"}],
        )
    )
    wait_ready(custom, namespace, "acme")
    wait_ready(custom, namespace, "globex")
    wait_for(
        lambda: (
            custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "didsegments", "acme-main"
            ).get("status", {}).get("reason") == "Ready"
        ),
        what="DIDSegment acme-main Ready",
    )  # fmt: skip
    # A later segment claims a number acme-main routes: it loses that number (created later,
    # or in the same second and later by name).
    apply(segment("acme-overlap", "acme", numbers=["+15551230001"],
                  destination={"context": "lost-conflict"}))  # fmt: skip
    wait_for(
        lambda: (
            custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "didsegments", "acme-overlap"
            ).get("status", {}).get("conflictCount") == 1
        ),
        timeout=60,
        what="DIDSegment acme-overlap to report its conflict",
    )  # fmt: skip

    twilio_a = TwilioCaller(TWILIO_EDGE_IP, SID_A)
    twilio_b = TwilioCaller(TWILIO_EDGE_IP, SID_B)
    target = pbx.bind
    cases = [
        (twilio_a, "+15551230001", "did-main/+15551230001/ACME"),  # a listed number
        (twilio_a, "+15557650042", "did-main/+15557650042/ACME"),  # a number of a range
        (twilio_a, "+15551230002", "sales/100/ACME"),  # a per-number override
        (twilio_a, "+15559990000", "from-twilio/+15559990000/ACME"),  # routed by no segment
        (twilio_b, "+15559990001", "from-twilio/+15559990001/GLOBEX"),  # the other trunk
    ]
    for caller_index, (twilio, did, expected) in enumerate(cases):
        caller = f"+1555000{caller_index:04d}"
        result = twilio.call(target, did, caller)
        if caller_index == 0:  # one routed call, as sipp traced it (pytest -s shows it)
            print("\n".join(f"{m.direction}: {m.start_line}" for m in result.messages))
            print(result.messages[0].raw)
        assert result.status == 200, (did, result.status)
        assert landed(pbx, caller) == expected, did
    assert "lost-conflict" not in str(pbx.rx("database show calls"))

    # Spoofed: the right Account SID header from outside the source ranges, for either trunk.
    for index, sid in enumerate((SID_A, SID_B)):
        caller = f"+1555666{index:04d}"
        result = TwilioCaller(OUTSIDER_IP, sid).call(target, "+15551230001", caller)
        # The endpoint ACL refuses it; Asterisk answers 401, as for an unknown peer.
        assert result.status in (401, 403), result.status
        assert landed(pbx, caller) is None
    assert status(custom, namespace, "acme")["observedGeneration"] == 1
