"""Two replicas with leader election (TRUNKOP_LEADER_ELECTION=true): exactly one holds the
Lease and only that one writes; when the leader is cut off from the API server, it stops
acting before the other replica takes the Lease over, and the other one then serves.

Each replica reaches the API server through its own TCP relay (test_token_rotation's):
closing a relay cuts that replica's connections and refuses new ones, a network partition
between it and the API server only. Both replicas log with timestamps from the same clock,
so their logs say which came first: the old leader stopping, or the new one leading.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from testbed.operator_process import OperatorProcess
from tests.conftest import wait_for
from tests.integration.helpers import (
    LEASE,
    TRUNK,
    Relay,
    admin_cluster_entry,
    generations,
    secret,
    stamp,
)
from trunk_operator.core.models import GROUP, VERSION

pytestmark = pytest.mark.integration

# urllib3's debug line for each call our API client makes (the processes run with --verbose)
CALL = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.1" (\d+)')


@dataclass
class Replica:
    name: str  # HOSTNAME: the Lease's holderIdentity is "<name>_<random>"
    relay: Relay
    process: OperatorProcess

    def log(self) -> str:
        return self.process.log()

    def holds(self) -> str:
        return f"leader election: {self.name}_"

    def writes(self, since: int = 0, until: int | None = None, leases: bool = False) -> list[str]:
        """Write calls (method, path, response status) in this part of the log: those to
        the Lease with `leases`, all others without."""
        return [
            f"{m[1]} {m[2]} {m[3]}"
            for m in CALL.finditer(self.log()[since:until])
            if m[1] != "GET" and ("/coordination.k8s.io/" in m[2]) == leases
        ]


def relayed_kubeconfig(kubeconfig: str, port: int, path: Path) -> Path:
    """The admin kubeconfig with every cluster's server replaced by the relay (TLS passes
    through the relay untouched, so the server certificate still matches) and relative file
    references made absolute."""
    base = Path(kubeconfig).resolve().parent
    config = yaml.safe_load(Path(kubeconfig).read_text())
    for entry in config.get("clusters") or []:
        entry["cluster"]["server"] = f"https://127.0.0.1:{port}"
    for section, key in (("clusters", "cluster"), ("users", "user")):
        for entry in config.get(section) or []:
            for field in ("certificate-authority", "client-certificate", "client-key"):
                if value := entry[key].get(field):
                    entry[key][field] = str(base / value)  # unchanged when absolute
    path.write_text(yaml.safe_dump(config))
    return path


def holder(coordination: client.CoordinationV1Api, namespace: str) -> str:
    try:
        lease = coordination.read_namespaced_lease(LEASE, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str((lease.spec and lease.spec.holder_identity) or "")


def test_one_leader_writes_and_a_partitioned_leader_stops_before_the_other_leads(
    cluster: Any,
    crds: None,
    no_host_operator: None,
    namespace: str,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[..., Any],
    tmp_path: Path,
) -> None:
    coordination = client.CoordinationV1Api(api)
    replicas: list[Replica] = []
    # Undone in reverse, each step even when one before it failed: the processes, each
    # with its relay, then the finalizer.
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(_release_finalizer, custom, namespace)
        for name in ("op-a", "op-b"):
            relay = Relay(*_upstream(cluster.kubeconfig))
            cleanup.callback(relay.close)
            process = _operator(cluster, namespace, name, relay, tmp_path)
            cleanup.callback(process.stop)
            replicas.append(Replica(name, relay, process))
        try:
            _check(replicas, coordination, core, custom, namespace, apply)
        except BaseException:
            for replica in replicas:
                print(f"\n---- {replica.name} log (tail) ----\n{replica.log()[-6000:]}")
            raise


def _check(
    replicas: list[Replica],
    coordination: client.CoordinationV1Api,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    apply: Callable[..., Any],
) -> None:
    for replica in replicas:  # together: both contend for the Lease from the start
        replica.process.start()

    # 1. Exactly one holds the Lease, and it is the one that says so.
    identity = wait_for(
        lambda: holder(coordination, namespace), timeout=30, what=f"a holder of Lease {LEASE}"
    )
    (leader,) = [r for r in replicas if identity.startswith(f"{r.name}_")]
    (follower,) = [r for r in replicas if r is not leader]
    wait_for(
        lambda: f"leader election: {identity} holds lease" in leader.log(),
        what=f"{leader.name} logging that it holds the Lease",
    )
    # The follower is up and contending: it reads the Lease every retry period.
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    wait_for(
        lambda: follower.log().count(f'"GET {lease_path} HTTP/1.1" 200') >= 2,
        timeout=20,
        what=f"{follower.name} polling the Lease",
    )

    # Only the leader writes: the trunk's status, its finalizer, its rendered objects.
    core.create_namespaced_secret(namespace, secret(namespace))
    apply(TRUNK)
    status = wait_for(
        lambda: _conditions(custom, namespace).get("Ready"), timeout=30, what="the trunk's status"
    )
    assert status["reason"] == "NoAsteriskPods", status
    status_path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/twiliotrunks/acme/status"
    wait_for(
        lambda: f"PATCH {status_path} 200" in leader.writes(),
        timeout=10,
        what=f"{leader.name}'s status write in its log",
    )
    assert holder(coordination, namespace) == identity

    # 2. The leader is cut off from the API server; the follower is not. Up to this moment
    # the follower never led and never wrote: its Lease attempts, if any (both started at
    # once), were all refused (409 Conflict).
    follower_mark = len(follower.log())
    leader.relay.close()
    assert follower.holds() not in follower.log()[:follower_mark]
    assert follower.writes(until=follower_mark) == [], f"{follower.name}, a follower, wrote"
    lost_races = follower.writes(until=follower_mark, leases=True)
    assert all(w.endswith(" 409") for w in lost_races), lost_races
    print(
        f"\n{leader.name} leads ({identity}) and wrote {len(leader.writes())} times;"
        f" {follower.name} follows and wrote nothing (Lease races lost: {len(lost_races)})"
    )
    wait_for(
        lambda: follower.holds() in follower.log(),
        timeout=40,
        interval=0.5,
        what=f"{follower.name} taking the Lease over",
    )
    wait_for(
        lambda: leader.process.proc is not None and leader.process.proc.poll() is not None,
        timeout=30,
        interval=0.5,
        what=f"{leader.name} exiting after losing the Lease",
    )
    lost = stamp(leader.log(), f"leader election: lease {LEASE} lost; stopping")
    took = stamp(follower.log(), follower.holds())
    assert lost is not None, f"{leader.name} never logged that it stopped leading"
    assert took is not None
    print(
        f"{leader.name} stopped at {lost:%H:%M:%S.%f}, {follower.name} led at"
        f" {took:%H:%M:%S.%f}: {(took - lost).total_seconds():+.3f} s"
    )
    assert lost < took, (
        f"{follower.name} took the Lease over ({took}) while {leader.name} still acted as"
        f" the leader (it stopped at {lost}): two leaders at once"
    )
    new_identity = holder(coordination, namespace)
    assert new_identity.startswith(f"{follower.name}_"), new_identity

    # The new leader serves: a change after the takeover gets its status.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "twiliotrunks", "acme", {"spec": {"codecs": ["alaw"]}}
    )
    generation, _ = generations(custom, namespace, "acme")
    assert generation == 2
    wait_for(
        lambda: generations(custom, namespace, "acme")[1] == generation,
        timeout=20,
        what=f"status.observedGeneration {generation} from {follower.name}",
    )
    assert f"PATCH {status_path} 200" in follower.writes(since=follower_mark)


def _release_finalizer(custom: client.CustomObjectsApi, namespace: str) -> None:
    """The controller's finalizer would hold the namespace's deletion."""
    with contextlib.suppress(client.ApiException):
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "twiliotrunks", "acme", {"metadata": {"finalizers": None}}
        )


def _upstream(kubeconfig: str) -> tuple[str, int]:
    server = urlsplit(admin_cluster_entry(kubeconfig)["server"])
    return server.hostname or "127.0.0.1", server.port or 443


def _operator(
    cluster: Any, namespace: str, name: str, relay: Relay, tmp_path: Path
) -> OperatorProcess:
    kubeconfig = relayed_kubeconfig(cluster.kubeconfig, relay.port, tmp_path / f"{name}.kubeconfig")
    return OperatorProcess(
        str(kubeconfig),
        tmp_path / f"{name}.log",
        env={
            "TRUNKOP_LEADER_ELECTION": "true",
            "POD_NAMESPACE": namespace,
            "HOSTNAME": name,
            "TRUNKOP_WATCH_NAMESPACES": namespace,
            "TRUNKOP_OBSERVE_INTERVAL": "2",
        },
    )


def _conditions(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", "acme")
    status = cast(dict[str, Any], obj).get("status") or {}
    return {c["type"]: c for c in status.get("conditions", [])}
