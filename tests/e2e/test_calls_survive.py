"""A call that is up survives what the operator does: other trunks created, changed and
deleted in the same pod, its own trunk's password rotating, the operator restarting. And
what happens to a call whose own trunk is deleted, measured and stated."""

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
    assert_still_up,
    credentials,
    status,
    tone_call,
    trunk,
    wait_ready,
)
from trunk_operator.core.models import GROUP, VERSION

pytestmark = pytest.mark.e2e


def test_a_call_stays_up_through_changes_rotation_and_operator_restart(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    twilio = start_standin("acme-user", PASSWORD, ip=ACME_IP)
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.41", HOSTS)
    for name in ("acme", "globex"):
        core.create_namespaced_secret(namespace, credentials(namespace, name))
    apply(trunk("acme", inbound={"accountSid": SID_A}))
    wait_ready(custom, namespace, "acme")

    call_id = tone_call(pbx, twilio)

    def still_up(step: str) -> None:
        assert_still_up(pbx, twilio, call_id, step)

    still_up("the call starting")
    apply(trunk("globex", inbound={"accountSid": SID_B}))
    wait_ready(custom, namespace, "globex")
    still_up("trunk globex created")
    apply(trunk("globex", inbound={"accountSid": SID_B}, codecs=["alaw"]))
    wait_for(lambda: status(custom, namespace, "globex").get("observedGeneration") == 2)
    wait_ready(custom, namespace, "globex")
    still_up("trunk globex changed")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "globex")
    wait_for(lambda: "GLOBEX" not in pbx.rx("pjsip show endpoints"), what="globex removed")
    still_up("trunk globex deleted")
    core.replace_namespaced_secret(
        "acme-sip", namespace, credentials(namespace, "acme", "rotated;pw")
    )
    wait_for(
        lambda: ": rotated;pw" in pbx.rx("pjsip show auth ACME-auth"),
        what="the rotated password delivered",
    )
    wait_ready(custom, namespace, "acme")
    still_up("its own password rotated")
    operator.stop()
    operator.start()
    time.sleep(4)  # start-up, adoption, two observation rounds
    wait_ready(custom, namespace, "acme")
    still_up("the operator restarted")

    # Its own trunk deleted: the endpoint leaves Asterisk's configuration; the call is a
    # channel, not configuration, and stays until either side hangs up.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
    wait_for(lambda: "ACME" not in pbx.rx("pjsip show endpoints"), what="acme removed")
    still_up("its own trunk deleted")
    pbx.rx("channel request hangup all")
    wait_for(
        lambda: [m for m in twilio.messages() if m.method == "BYE" and m.call_id == call_id],
        what="the BYE once the call is hung up",
    )
