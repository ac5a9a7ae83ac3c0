"""Install, use, restart, upgrade and uninstall the operator the way users do, on a real node.

One scenario, in order (each step needs the previous one): helm install -> a Secret, trunk and
DID segment applied with kubectl go Ready in an Asterisk pod of examples/asterisk and a call
authenticates at the Twilio stand-in -> the operator pod is deleted and its successor takes the
pods over without a reload -> helm upgrade with a changed value -> helm uninstall keeps the
CRDs, the CRs and what Asterisk serves. Throughout: no 403 in the operator's log, and the
ServiceAccount can do exactly what the chart documents.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from testbed.node import KubeletNode
from testbed.release import Release, asterisk_objects
from testbed.sipp import TwilioStandIn
from tests.conftest import ROOT, wait_for
from tests.incluster.helpers import (
    HOST,
    asterisk_rx,
    deploy_asterisk,
    gate,
    pjsip_reloads,
    ready,
    restart_asterisk,
    trunk_status,
)
from tests.integration.helpers import LEASE, stamp
from tests.packaging.helpers import PERMISSIONS
from trunk_operator.core.asterisk_output import parse_endpoints

pytestmark = pytest.mark.incluster

STANDIN_IP = "127.0.0.16"
ASTERISK_IP = "127.0.10.40"


def lease_holder(cluster: Any, namespace: str) -> str:
    """The pod holding the operator's Lease (its identity is `<pod name>_<random>`)."""
    lease = cluster.kubectl(
        "get", "lease", "asterisk-trunk-operator", "-n", namespace, "-o", "json", check=False
    )
    if lease.returncode != 0:
        return ""
    holder = json.loads(lease.stdout).get("spec", {}).get("holderIdentity") or ""
    return str(holder).rsplit("_", 1)[0]


def can_i_list(cluster: Any, who: str, namespace: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the subject may use in `namespace`, minus what every
    authenticated user may (self reviews, discovery)."""
    out = cluster.kubectl("auth", "can-i", "--list", f"--as={who}", "-n", namespace).stdout
    everyone = cluster.kubectl(
        "auth", "can-i", "--list", "--as=system:serviceaccount:default:nobody", "-n", namespace
    ).stdout
    return _parse_can_i(out) - _parse_can_i(everyone)


def _parse_can_i(text: str) -> set[tuple[str, str, str]]:
    rules = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if not parts or parts[0].startswith("/") or "[" not in line:
            continue  # non-resource URLs
        verbs = line[line.rindex("[") + 1 : line.rindex("]")].split()
        name, _, subresource = parts[0].partition("/")  # twiliotrunks.<group>/status
        plural, _, group = name.partition(".")
        resource = f"{plural}/{subresource}" if subresource else plural
        rules |= {(group, resource, verb) for verb in verbs}
    return rules


def test_install_use_restart_upgrade_uninstall(
    cluster: Any,
    release: Release,
    telephony: str,
    start_standin: Any,
) -> None:
    node: KubeletNode = release.node
    # ---- the operator runs as the chart made it: restricted, non-root, its own identity ----
    pods = release.operator_pods()
    assert len(pods) == 2  # two replicas, one holding the Lease
    pod = pods[0]
    spec = pod["spec"]
    assert spec["nodeName"] == node.name
    assert spec["serviceAccountName"] == "asterisk-trunk-operator"
    assert spec["securityContext"]["runAsNonRoot"] is True
    container = spec["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert "KUBECONFIG" not in env

    # ---- Asterisk from examples/asterisk, a Twilio stand-in, then the user's three objects ----
    standin: TwilioStandIn = start_standin("acme-trunk", "S3cret;with#chars", ip=STANDIN_IP)
    deploy_asterisk(
        cluster, telephony, asterisk_objects(cluster, node, ASTERISK_IP, {HOST: STANDIN_IP})
    )
    started = time.monotonic()
    for example in ("acme-secret.yaml", "acme-trunk.yaml", "acme-dids.yaml"):
        cluster.kubectl("apply", "-n", telephony, "-f", str(ROOT / "examples" / example))
    status = wait_for(
        lambda: (s := trunk_status(cluster, telephony)) and ready(s) and s,
        timeout=90,
        what="TwilioTrunk acme Ready",
    )
    print(f"\napply -> Ready through the in-cluster operator: {time.monotonic() - started:.1f} s")
    assert [p["pod"] for p in status["pods"]] == ["asterisk-0"]
    # The pod's /metrics (the chart's metrics port) reports the trunk it just made Ready.
    leading = lease_holder(cluster, release.namespace)
    pod_ip = next(
        p["status"]["podIP"] for p in release.operator_pods() if p["metadata"]["name"] == leading
    )
    scraped = urllib.request.urlopen(f"http://{pod_ip}:8081/metrics", timeout=10).read().decode()
    assert (
        'asterisk_trunk_operator_resource_condition{kind="TwilioTrunk",name="acme",'
        f'namespace="{telephony}",status="True",type="Ready"}} 1.0'
    ) in scraped
    assert "ACME" in parse_endpoints(asterisk_rx(cluster, telephony, "pjsip show endpoints"))
    # The pod's readiness gate opened: the operator delivered and verified its set.
    cluster.kubectl("wait", "-n", telephony, "--for=condition=Ready", "pod/asterisk-0",
                    "--timeout=60s")  # fmt: skip

    # A call through the trunk authenticates with the Secret's password.
    asterisk_rx(
        cluster, telephony,
        "channel originate Local/5551234567@TwilioDynamicIVR application Wait 1",
    )  # fmt: skip
    standin.wait_for(lambda msgs: len([m for m in msgs if m.method == "INVITE"]) >= 2)
    assert standin.verify_digest("S3cret;with#chars")

    # ---- Asterisk's container restarts: its gate closes until the new one is verified ----
    opened = gate(cluster, telephony)
    restart_asterisk(cluster, telephony)
    print(f"gate before the restart {opened}, after {gate(cluster, telephony)}")
    cluster.kubectl("wait", "-n", telephony, "--for=condition=Ready", "pod/asterisk-0",
                    "--timeout=60s")  # fmt: skip
    assert "ACME" in parse_endpoints(asterisk_rx(cluster, telephony, "pjsip show endpoints"))
    assert "readiness gate on" not in release.operator_log()  # no failed gate write

    # ---- the leader goes: the other replica takes over, adopting the pod without a reload ----
    leader = lease_holder(cluster, release.namespace)
    assert leader in {p["metadata"]["name"] for p in pods}
    reloads = pjsip_reloads(cluster, telephony)
    deleted = time.monotonic()
    cluster.kubectl("delete", "pod", "-n", release.namespace, leader, "--wait=false")
    successor = wait_for(
        lambda: (holder := lease_holder(cluster, release.namespace)) not in ("", leader) and holder,
        timeout=30,
        interval=0.2,
        what="the other replica holding the Lease",
    )
    print(f"leader pod deleted -> {successor} leads after {time.monotonic() - deleted:.1f} s")
    cluster.kubectl("patch", "twiliotrunk", "acme", "-n", telephony, "--type=merge",
                    "-p", '{"spec":{"codecs":["alaw"]}}')  # fmt: skip
    wait_for(lambda: ready(trunk_status(cluster, telephony)), timeout=60, what="Ready again")
    assert "adopted" in release.operator_log()
    # The codec change is the only reload: the takeover itself reloaded nothing.
    assert pjsip_reloads(cluster, telephony) == reloads + 1

    # ---- the leader is cut off from the API server: it stops before the other one leads ----
    leader = lease_holder(cluster, release.namespace)
    [leader_pod] = [p for p in release.operator_pods() if p["metadata"]["name"] == leader]
    api = {e["name"]: e["value"] for e in node.api_env()}
    reloads = pjsip_reloads(cluster, telephony)
    with node.cut_off(
        leader_pod["status"]["containerStatuses"][0]["containerID"],
        api["KUBERNETES_SERVICE_HOST"],
        int(api["KUBERNETES_SERVICE_PORT"]),
    ):
        cut = time.monotonic()
        successor = wait_for(
            lambda: (
                (holder := lease_holder(cluster, release.namespace)) not in ("", leader) and holder
            ),
            timeout=60,
            interval=0.2,
            what="the other replica taking the Lease from the cut-off leader",
        )
        print(f"leader cut off -> {successor} leads after {time.monotonic() - cut:.1f} s")
        # The cut-off leader logged when it stopped (then exited: kubelet restarts it, and
        # its previous container's log has the line); both pods log with the node's clock.
        stopped = f"leader election: lease {LEASE} lost; stopping"
        lost = wait_for(
            lambda: stamp(release.pod_log(leader), stopped),
            timeout=60,
            what=f"{leader} logging that it stopped leading",
        )
        took = stamp(release.pod_log(successor), f"leader election: {successor}_")
        assert took is not None
        print(f"{leader} stopped at {lost:%H:%M:%S.%f}, {successor} led at {took:%H:%M:%S.%f}")
        assert lost < took, f"two leaders at once: {successor} led at {took}, {leader} {lost}"
        # The new leader serves while the old one is still cut off: one reload per change.
        cluster.kubectl("patch", "twiliotrunk", "acme", "-n", telephony, "--type=merge",
                        "-p", '{"spec":{"codecs":["ulaw"]}}')  # fmt: skip
        wait_for(lambda: ready(trunk_status(cluster, telephony)), timeout=60, what="Ready")
        assert pjsip_reloads(cluster, telephony) == reloads + 1

    # Healed: the old leader runs again (kubelet restarted it, after a back-off) and follows;
    # a change still reloads once, not twice.
    def back(pod: dict[str, Any]) -> bool:
        [status] = pod["status"].get("containerStatuses") or [{}]
        return bool(status.get("ready")) and status.get("restartCount", 0) > 0

    wait_for(
        lambda: any(p["metadata"]["name"] == leader and back(p) for p in release.operator_pods()),
        timeout=180,
        what=f"{leader} running again after the partition",
    )
    cluster.kubectl("patch", "twiliotrunk", "acme", "-n", telephony, "--type=merge",
                    "-p", '{"spec":{"codecs":["alaw"]}}')  # fmt: skip
    wait_for(lambda: ready(trunk_status(cluster, telephony)), timeout=60, what="Ready, healed")
    time.sleep(3)  # a second leader would deliver too: give it the time
    assert pjsip_reloads(cluster, telephony) == reloads + 2
    assert lease_holder(cluster, release.namespace) == successor

    # ---- helm upgrade with a changed value: a new pod with it, the trunk stays served ----
    before_upgrade = {p["metadata"]["name"] for p in release.operator_pods()}
    release.upgrade(observeIntervalSeconds=3)
    for upgraded in release.operator_pods():
        env = {e["name"]: e.get("value") for e in upgraded["spec"]["containers"][0]["env"]}
        assert env["TRUNKOP_OBSERVE_INTERVAL"] == "3"

    def taken_over() -> bool:
        """A new pod leads and has adopted the Asterisk pod; the trunk Ready. (The status
        alone says Ready from before the upgrade: the old operator's.)"""
        holder = lease_holder(cluster, release.namespace)
        return (
            holder not in ("", *before_upgrade)
            and "adopted" in release.pod_log(holder)
            and ready(trunk_status(cluster, telephony))
        )

    wait_for(taken_over, timeout=90, what="the upgraded operator leading, Asterisk adopted")

    # ---- RBAC: enough (no 403 anywhere) and no more than documented ----
    log = release.operator_log()
    assert " 403" not in log and "Forbidden" not in log, log[-3000:]
    granted = can_i_list(cluster, release.service_account, telephony)
    assert granted == PERMISSIONS, sorted(granted ^ PERMISSIONS)

    # ---- helm uninstall: the operator goes, CRDs, CRs and Asterisk's configuration stay ----
    release.uninstall()
    wait_for(lambda: not release.operator_pods(), timeout=60, what="the operator pod gone")
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout
    assert "twiliotrunks.trunks.asterisk-operator.dev" in crds
    assert ready(trunk_status(cluster, telephony))
    assert "ACME" in parse_endpoints(asterisk_rx(cluster, telephony, "pjsip show endpoints"))
