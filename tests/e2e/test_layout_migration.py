"""Operator 0.1.0 left one file per CR in each pod; the current layout is one file per
directory. A pod that holds the old layout is taken over without a moment in which its
trunks are not served, and ends with only the new files."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from tests.e2e.conftest import podman_exec
from tests.e2e.test_operator import HOSTS, PASSWORD, SID_A, SID_B, credentials, trunk, wait_ready
from trunk_operator.core.desired import expected_for
from trunk_operator.core.plan import TRUNK, Inputs, Resource, plan_namespace
from trunk_operator.core.render import POD_FILES
from trunk_operator.pod import channel

pytestmark = pytest.mark.e2e

# In the pod, about 30 times a second until stopped: how many of the two endpoints and of
# their inbound contexts Asterisk serves.
SAMPLER = (
    "while [ ! -e /tmp/stop-sampling ]; do"
    " e=$(asterisk -rx 'pjsip list endpoints' | grep -c 'Endpoint:  \\(ACME\\|GLOBEX\\) ');"
    " c=0; for x in ACME GLOBEX; do"
    "  asterisk -rx \"dialplan show trunkop-in-$x\" | grep -q '^\\[ Context' && c=$((c+1));"
    ' done; echo "$e $c"; done'
)


def test_a_pod_with_the_old_layout_is_migrated_without_a_gap(
    operator: Any,
    cluster: Any,
    namespace: str,
    core: client.CoreV1Api,
    apply: Callable[[dict[str, Any]], None],
    custom: client.CustomObjectsApi,
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    pbx = start_asterisk("migrate", "127.0.10.47", HOSTS)
    trunks = {
        "acme": trunk("acme", inbound={"accountSid": SID_A}),
        "globex": trunk("globex", inbound={"accountSid": SID_B}),
    }
    # What 0.1.0 delivered for these CRs: each CR's files under their own names.
    inputs = Inputs(
        trunks=[Resource(TRUNK, n, "", t["spec"]) for n, t in trunks.items()],
        secrets={f"{n}-sip": {"username": f"{n}-user", "password": PASSWORD} for n in trunks},
    )
    plan = plan_namespace(inputs)
    old_layout = plan.all_files()
    assert "pjsip.d/twiliotrunk-acme-auth.conf" in old_layout
    assert channel.deliver(podman_exec(pbx.name), old_layout, expected_for(plan.outcomes)).ok
    reloads_before = pbx.logs().count("Reloading module 'res_pjsip.so'")

    sampler = subprocess.Popen(
        ["podman", "exec", pbx.name, "sh", "-c", SAMPLER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for name, doc in trunks.items():
            core.create_namespaced_secret(namespace, credentials(namespace, name))
            apply(doc)
        cluster.add_exec_pod(namespace, "asterisk-0", pbx.name, {"app": "asterisk"})
        try:
            for name in trunks:
                wait_ready(custom, namespace, name)
            listed = pbx.exec("sh", "-c", "ls /etc/asterisk/pjsip.d /etc/asterisk/extensions.d")
        finally:
            cluster.delete_exec_pod(namespace, "asterisk-0", wait=False)
    finally:
        pbx.exec("touch", "/tmp/stop-sampling")
        samples, _ = sampler.communicate(timeout=30)

    counts = [line.split() for line in samples.splitlines() if line.strip()]
    assert len(counts) > 10, samples
    gaps = [c for c in counts if c != ["2", "2"]]
    assert not gaps, f"{len(gaps)} of {len(counts)} samples lacked a trunk: {gaps[:5]}"
    assert "twiliotrunk-" not in listed.stdout, listed.stdout
    for path in POD_FILES:
        assert path.split("/")[1] in listed.stdout
    # The old files left and the new one came in one swap: one reload.
    assert pbx.logs().count("Reloading module 'res_pjsip.so'") == reloads_before + 1
    print(f"{len(counts)} samples during the migration, none without both trunks")
