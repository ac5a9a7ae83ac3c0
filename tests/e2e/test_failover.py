"""Edge failover: a trunk with two edges, each a Twilio stand-in. The outbound dialplan moves
to the next edge on the results listed in `outbound.failoverOn`, in `edges` order."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from testbed.sipp import TwilioStandIn
from tests.conftest import wait_for
from tests.e2e.helpers import PASSWORD, credentials, trunk, wait_ready

pytestmark = pytest.mark.e2e

ASHBURN, UMATILLA = "acme.pstn.ashburn.twilio.com", "acme.pstn.umatilla.twilio.com"
ASHBURN_IP, UMATILLA_IP = "127.0.0.42", "127.0.0.43"


def originate(pbx: AsteriskContainer) -> float:
    started = time.monotonic()
    pbx.rx("channel originate Local/+15551234567@to-acme application Wait 1")
    return started


@pytest.mark.parametrize(
    ("first_edge", "failover_on", "second_edge_called"),
    [
        ("503", ["CHANUNAVAIL", "CONGESTION"], True),  # out of service: CONGESTION
        ("silent", ["CHANUNAVAIL", "CONGESTION"], True),  # nothing listens: CHANUNAVAIL
        ("503", ["CHANUNAVAIL"], False),  # CONGESTION is not listed: no failover
    ],
)
def test_the_next_edge_completes_the_call_when_the_first_fails(
    first_edge: str,
    failover_on: list[str],
    second_edge_called: bool,
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    ashburn = (
        start_standin("acme-user", PASSWORD, ip=ASHBURN_IP, mode="503")
        if first_edge == "503"
        else None
    )
    umatilla = start_standin("acme-user", PASSWORD, ip=UMATILLA_IP)
    pbx = start_asterisk_pod(
        "asterisk-0", "127.0.10.39", {ASHBURN: ASHBURN_IP, UMATILLA: UMATILLA_IP}
    )
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    apply(
        trunk(
            "acme",
            edges=["ashburn", "umatilla"],
            qualifyFrequencySeconds=2,
            outbound={"context": "to-acme", "dialTimeoutSeconds": 10, "failoverOn": failover_on},
        )
    )
    wait_ready(custom, namespace, "acme")
    if first_edge == "silent":
        # Skipped once qualify found it unreachable (else SIP's 32 s timeout would decide).
        wait_for(
            lambda: (
                "ACME-ashburn/sip:acme.pstn.ashburn" in (shown := pbx.rx("pjsip show contacts"))
                and "Unavail" in shown.split("ACME-ashburn/", 1)[1].split("\n", 1)[0]
            ),
            timeout=30,
            what="qualify to find the silent edge unreachable",
        )

    started = originate(pbx)
    if ashburn is not None:
        ashburn.wait_for(lambda msgs: [m for m in msgs if m.method == "INVITE"])
        assert ashburn.invites()[0].uri == f"sip:+15551234567@{ASHBURN}"
    if second_edge_called:
        # The second edge challenges, then takes the authenticated INVITE.
        umatilla.wait_for(lambda msgs: len([m for m in msgs if m.method == "INVITE"]) >= 2)
        took = time.monotonic() - started
        print(f"\n{first_edge} first edge: the second edge had the call after {took:.2f} s")
        assert took < 10, "failover must happen within the dial timeout"
        invite = umatilla.invites()[-1]
        assert invite.uri == f"sip:+15551234567@{UMATILLA}"
        assert umatilla.verify_digest(PASSWORD)
        # Logged as received before sipp answers: wait for the answer, do not race it.
        wait_for(
            lambda: 200 in [r.status for r in umatilla.responses(invite.call_id)],
            timeout=10,
            what="the second edge to answer the authenticated INVITE",
        )
    else:
        time.sleep(3)  # time enough for a failover that must not happen
        assert umatilla.invites() == []
