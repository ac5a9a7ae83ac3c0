"""examples/asterisk-ari on a real node, with the chart's operator: the pod's trunks are
pushed over ARI (no PJSIP reload, nothing in pjsip.d/), a call authenticates with the pushed
password, and when the Asterisk container restarts (its memory gone, its emptyDir kept) the
new one gets every trunk again before its readiness gate reopens.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from testbed.release import Release, asterisk_objects
from testbed.sipp import TwilioStandIn
from tests.conftest import ROOT, wait_for
from tests.incluster.helpers import (
    HOST,
    asterisk_rx,
    deploy_asterisk,
    pjsip_reloads,
    ready,
    restart_asterisk,
    trunk_status,
)
from trunk_operator.core.asterisk_output import parse_endpoints
from trunk_operator.core.render import POD_FILE
from trunk_operator.pod.channel import CONFIG_DIR, PUSHED_DIR

pytestmark = pytest.mark.incluster

STANDIN_IP = "127.0.0.17"
ASTERISK_IP = "127.0.10.41"


def in_pod(cluster: Any, namespace: str, *command: str) -> str:
    out = cluster.kubectl("exec", "-n", namespace, "asterisk-0", "-c", "asterisk", "--", *command)
    return str(out.stdout)


def test_trunks_pushed_over_ari_into_a_real_pod_and_again_after_its_container_restarts(
    cluster: Any, release: Release, telephony: str, start_standin: Any
) -> None:
    ari_password = secrets.token_hex(16)
    cluster.kubectl(
        "create", "secret", "generic", "asterisk-ari", "-n", telephony,
        "--from-literal=username=trunkop", f"--from-literal=password={ari_password}",
    )  # fmt: skip
    standin: TwilioStandIn = start_standin("acme-trunk", "S3cret;with#chars", ip=STANDIN_IP)
    deploy_asterisk(
        cluster,
        telephony,
        asterisk_objects(
            cluster, release.node, ASTERISK_IP, {HOST: STANDIN_IP}, example="examples/asterisk-ari"
        ),
    )
    for example in ("acme-secret.yaml", "acme-trunk.yaml"):
        cluster.kubectl("apply", "-n", telephony, "-f", str(ROOT / "examples" / example))
    wait_for(lambda: ready(trunk_status(cluster, telephony)), timeout=90, what="acme Ready")
    cluster.kubectl("wait", "-n", telephony, "--for=condition=Ready", "pod/asterisk-0",
                    "--timeout=60s")  # fmt: skip

    assert POD_FILE not in in_pod(cluster, telephony, "ls", f"{CONFIG_DIR}/pjsip.d")
    assert "[ACME]" in in_pod(cluster, telephony, "cat", f"{PUSHED_DIR}/pjsip.d/{POD_FILE}")
    assert pjsip_reloads(cluster, telephony) == 0
    asterisk_rx(
        cluster, telephony,
        "channel originate Local/5551234567@TwilioDynamicIVR application Wait 1",
    )  # fmt: skip
    standin.wait_for(lambda msgs: len([m for m in msgs if m.method == "INVITE"]) >= 2)
    assert standin.verify_digest("S3cret;with#chars")

    # The container restarts: memory objects are gone, the emptyDir (and the record of what
    # was pushed to the previous process) is not. The gate reopens once all is pushed again.
    restart_asterisk(cluster, telephony)
    assert "ACME" in parse_endpoints(asterisk_rx(cluster, telephony, "pjsip show endpoints"))
    assert ready(trunk_status(cluster, telephony))
    assert ari_password not in release.operator_log()
