"""Measurement 8: one change with many trunks in the pod, the pod layout against the old one.

Two operators run the same steps in the same bench run, each on its own platform (bench/rig.py):
- "pod file": this checkout (one file per directory in the pod, listings plus per-object
  verification, only the changed module reloaded);
- "per-CR files": the operator at BASELINE_COMMIT (one file per CR, full `pjsip show
  endpoints` and `dialplan show` after each delivery), taken with `git archive` into the
  cache and run from there with the same Python environment.

For each size: one Asterisk pod, one shared credentials Secret, N trunks created at once
(bench/rig.py trunk_spec: own accountSid, qualify 0), then one trunk changed several times,
its own Secret rotated, a new pod added (what a restarted pod gets), and Asterisk restarted
with the operator's files in place. The floor of one change is an exec round trip through the API
server with `pjsip show endpoint X`, timed with the operator's own exec client.

Sizes in `--scale-node-sizes` run again as users run them (bench/rig.py InClusterRig): the
operator installed with the chart on the real kubelet node, one Asterisk pod of
examples/asterisk there, exec through the API server to kubelet and containerd (on the kwok
rig an exec goes through kwok's exec pod to `podman exec`, which costs more). The same steps
up to the rotation (one real node: no second pod, and kubelet restarts Asterisk itself).
Sizes in `--scale-ari-sizes` run there with an examples/asterisk-ari pod (trunks pushed over
ARI, trunk_operator.pod.ari), side by side with the pod file when both run at a size.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException
from rig import (
    HOST,
    ROOT,
    STANDIN_IP,
    TRUNKS,
    AsteriskPod,
    ClusterAsteriskPod,
    InClusterRig,
    Rig,
    log,
    percentile,
    trunk_spec,
    update_latencies,
)

from testbed.release import build_operator_image
from trunk_operator.kube.api import Kube
from trunk_operator.kube.client import load_config
from trunk_operator.runtime.settings import Settings

BASELINE_COMMIT = "cd9c2b2cb5ba2ff78da67fa0532b64e8bc5f8453"  # the last per-CR-file layout
SHARED_SECRET, OWN_SECRET = "bench-sip", "first-sip"
CACHE = Path(os.environ.get("TRUNKOP_CACHE", Path.home() / ".cache/asterisk-trunk-operator"))


def baseline_source(commit: str = BASELINE_COMMIT) -> Path:
    """The package directory of the operator at `commit` (extracted once per machine)."""
    target = CACHE / "bench" / f"operator-{commit[:12]}"
    if not (target / "trunk_operator").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "operator"],
            capture_output=True,
            check=True,
        )
        subprocess.run(
            ["tar", "-x", "--strip-components=1", "-C", str(target)],
            input=archive.stdout,
            check=True,
        )
    return target


def _rotate(rig: Rig, password: str) -> str:
    body = {"stringData": {"username": "first-user", "password": password}}
    secret = rig.core.patch_namespaced_secret(OWN_SECRET, rig.namespace, body)
    return str(secret.metadata.resource_version)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


def _listed_endpoints(pod: AsteriskPod | ClusterAsteriskPod) -> int:
    out = pod.rx("pjsip list endpoints")
    found = re.search(r"Objects found: (\d+)", out)
    return int(found.group(1)) if found else 0


def sorcery_backlog(pod: AsteriskPod | ClusterAsteriskPod) -> int:
    """Tasks queued in Asterisk's sorcery observer taskprocessors (`core show taskprocessors`,
    the "In Queue" column of the `sorcery/` rows). Sorcery tells its observers about a
    created object asynchronously; res_pjsip's AOR observer then retrieves every endpoint
    into a sorted list (main/sorcery.c), so n new AORs in a pod of m endpoints keep Asterisk
    busy for n x m^2 after the pushes returned (bench/README.md, 8c)."""
    queued = 0
    for line in pod.rx("core show taskprocessors").splitlines():
        fields = line.split()
        if fields and fields[0].startswith("sorcery/") and len(fields) > 2:
            queued += int(fields[2]) if fields[2].isdigit() else 0
    return queued


def floor_seconds(
    rig: Rig, pod: AsteriskPod | ClusterAsteriskPod, endpoint: str, count: int = 7
) -> float:
    """Median of one exec round trip through the API server with `pjsip show endpoint X`."""
    assert rig.cluster and rig.cluster.kubeconfig
    kube = Kube(load_config(rig.cluster.kubeconfig))
    pod_exec = kube.pod_exec(rig.namespace, pod.name, "asterisk")
    took = []
    for _ in range(count):
        started = time.monotonic()
        result = pod_exec(["asterisk", "-rx", f"pjsip show endpoint {endpoint}"], None, 30)
        took.append(time.monotonic() - started)
        assert result.returncode == 0 and endpoint in result.stdout, result
    return percentile(took, 50)


def _steps(
    args: argparse.Namespace,
    rig: Rig,
    pod: AsteriskPod | ClusterAsteriskPod | Callable[[], ClusterAsteriskPod],
    label: str,
    n: int,
    changes: int,
) -> dict[str, Any]:
    """The steps every rig runs: `n` trunks at once, `changes` changes of one, the floor, and
    from 1,000 trunks one rotation of that trunk's Secret; figures by name. `pod` a callable:
    the pod is added once every CR has a status (its whole set in one delivery)."""
    out: dict[str, Any] = {}
    watch = rig.watch()
    rig.create_secret(SHARED_SECRET)
    rig.core.create_namespaced_secret(
        rig.namespace,
        {
            "metadata": {"name": OWN_SECRET},
            "stringData": {"username": "first-user", "password": "p0"},
        },
    )
    names = [f"s{i:05d}" for i in range(n)]
    started = time.monotonic()

    def create(i: int) -> int:
        secret = OWN_SECRET if i == 0 else SHARED_SECRET
        return rig.create(TRUNKS, "TwilioTrunk", names[i], trunk_spec(i, names[i], secret))

    gens = rig.parallel(create, range(n), workers=16)
    figure = "applied at once -> all Ready"
    if callable(pod):
        figure = "pod added after them -> all Ready"

        def statuses() -> bool:
            with watch.lock:
                return all((watch.objects.get(name) or {}).get("status") for name in names)

        _wait(statuses, args.timeout, "a status on every CR")
        log(f"[{label}] {n} trunks with a status after {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        pod = pod()
    done = watch.wait_ready(list(zip(names, gens, strict=True)), args.timeout, f"{label} all")
    out[figure] = max(done.values()) - started
    log(f"[{label}] {n} trunks Ready after {out[figure]:.1f} s")
    # The changes are measured with Asterisk done with what the bulk left it (over ARI: its
    # AOR observers, minutes at 10,000); how long that took is a figure of its own.
    busy = time.monotonic()

    def settled() -> bool:
        if sorcery_backlog(pod) == 0:
            return True
        time.sleep(1)
        return False

    _wait(settled, args.timeout, "Asterisk's sorcery observers done")
    out["Asterisk busy after all Ready"] = time.monotonic() - busy
    time.sleep(2)
    reloads_before = pod.reloads()
    updates = update_latencies(rig, watch, names[0], changes, timeout=600)
    out["one change -> Ready p50"] = percentile(updates, 50)
    out["one change -> Ready max"] = max(updates)
    out["changes"] = len(updates)
    out["PJSIP reloads per change"] = (pod.reloads() - reloads_before) / len(updates)
    out["floor: exec + pjsip show endpoint"] = floor_seconds(rig, pod, names[0].upper())
    if n >= 1000:
        version = _rotate(rig, "rotated-1")
        rotated = time.monotonic()
        _wait(
            lambda: (
                watch.conditions(names[0]).get("status") == "True"
                and (watch.objects.get(names[0]) or {})
                .get("status", {})
                .get("secretResourceVersion")
                == version
            ),
            args.timeout,
            "rotation served",
        )
        out["password rotation -> Ready (served)"] = time.monotonic() - rotated
    return out


def one_size(
    args: argparse.Namespace, workdir: Path, variant: str, source: Path | None, n: int
) -> dict[str, Any]:
    """The steps for `n` trunks with one operator process on the kwok rig; figures by name."""
    label = f"scale-{'new' if source is None else 'old'}-{n}"
    with Rig(label, workdir, args.observe_interval) as rig:
        [pod] = rig.add_pods(1, {"bench.pstn.twilio.com": "127.0.0.21"})
        operator = rig.start_operator(source)
        changes = args.scale_changes if source is None or n <= 100 else args.scale_baseline_changes
        out = _steps(args, rig, pod, label, n, changes)
        out["operator VmHWM MiB"] = operator.memory().get("VmHWM", 0) / 1024
        if n >= 1000:
            # What a restarted pod gets (kubelet reports the restart at once; kwok pods do not
            # restart): a new pod, its full set delivered and verified.
            added = time.monotonic()
            [fresh] = rig.add_pods(1, {"bench.pstn.twilio.com": "127.0.0.21"})
            _wait(lambda: _listed_endpoints(fresh) == n, args.timeout, "full set in a new pod")
            out["new pod -> full set loaded"] = time.monotonic() - added
            started = time.monotonic()
            pod.rx("core restart now")
            time.sleep(1)
            _wait(
                lambda: (
                    "fully booted" in pod.rx("core waitfullybooted") and _listed_endpoints(pod) == n
                ),
                args.timeout,
                "Asterisk start with the files",
            )
            out["Asterisk start with the files in place"] = time.monotonic() - started
    return out


NODE_ASTERISK_IP = "127.0.20.71"  # asterisk-0 of examples/asterisk (hostNetwork) binds here
RESTART_SAMPLES_UP_TO = 1000  # trunks; a bigger pod's restart is measured once (minutes each)
# After a new pod got its whole set, its CRs' statuses are written again (two each): a restart
# is measured once they are done, as the first one is, after the changes.
NEW_POD_SETTLE = 15.0


def real_node_size(
    args: argparse.Namespace, workdir: Path, n: int, example: str = "examples/asterisk"
) -> dict[str, Any]:
    """The common steps for `n` trunks as users run them: the chart's operator and an
    examples/asterisk pod (or one of `example`, e.g. examples/asterisk-ari) on the real
    kubelet node."""
    label = f"scale-node-{n}" + ("-ari" if example.endswith("-ari") else "")
    with InClusterRig(label, workdir, args.observe_interval, build_operator_image()) as rig:
        # The chart's limit is for ~1,500 trunks (values.yaml): raised as a user would.
        memory = "256Mi" if n <= 1500 else "2Gi"
        rig.install_operator(
            observeIntervalSeconds=args.observe_interval,
            resources={"limits": {"memory": memory}},
        )

        added: list[ClusterAsteriskPod] = []

        def add() -> ClusterAsteriskPod:
            added.append(rig.add_asterisk(NODE_ASTERISK_IP, {HOST: STANDIN_IP}, example))
            return added[0]

        # Applied at once to a running pod, 10,000 trunks arrive in rounds, and Asterisk takes
        # each round's new AORs in m x n^2 (bench/README.md, 8c): such sizes get the pod last.
        pod_last = n in {int(x) for x in args.scale_pod_last_sizes.split(",") if x}
        out = _steps(args, rig, add if pod_last else add(), label, n, args.scale_changes)
        [pod] = added
        out["operator VmHWM MiB"] = rig.operator_memory().get("VmHWM", 0) / 1024
        # Asterisk's container restarts (kubelet restarts it; its files stay in the pod's
        # emptyDir, pushed objects are gone): the operator closes the readiness gate and
        # reopens it once it verified (or pushed again) the new container's set. kubelet waits
        # 10 s before a container's second restart: each further sample is a new pod's first.
        samples = args.scale_restarts if n <= RESTART_SAMPLES_UP_TO else 1
        restarts: list[dict[str, float]] = []
        for sample in range(samples):
            if sample:
                _replace_pod(rig, pod, n, args.timeout)
            restarts.append(_restart(rig, pod, n, label, workdir, args.timeout))
        out["Asterisk restart -> pod Ready with its set"] = statistics.median(
            r["pod Ready"] for r in restarts
        )
        # Without the operator's gate kubelet would say Ready here: the platform's floor.
        out["floor: Asterisk restart -> its container ready"] = statistics.median(
            r["container ready (its probe)"] for r in restarts
        )
        out["restarts"] = len(restarts)
    return out


def _replace_pod(rig: InClusterRig, pod: ClusterAsteriskPod, n: int, timeout: float) -> None:
    """Delete the pod; its StatefulSet makes a new one, which gets the whole set: back once it
    is Ready with its gate open and Asterisk lists all `n` endpoints."""
    old_uid = _restart_state(rig, pod).uid
    rig.core.delete_namespaced_pod(pod.name, pod.namespace)

    def back() -> bool:
        try:
            state = _restart_state(rig, pod)
        except ApiException as error:  # 404 between the old pod's deletion and the new one
            if error.status == 404:
                return False
            raise
        if state.uid == old_uid or not (state.ready and state.gate):
            return False
        return _listed_endpoints(pod) == n

    _wait(back, timeout, "a new pod Ready with its set")
    time.sleep(NEW_POD_SETTLE)


def _restart(
    rig: InClusterRig, pod: ClusterAsteriskPod, n: int, label: str, workdir: Path, timeout: float
) -> dict[str, float]:
    """`core stop now` in the pod: seconds to each milestone of its container's restart."""
    before = _restart_state(rig, pod).restarts
    if before:
        kept = workdir / f"{label}-asterisk-previous.log"
        assert rig.cluster
        previous = rig.cluster.kubectl(
            "logs", "-n", rig.namespace, pod.name, "-c", "asterisk", "--previous",
            check=False,
        )  # fmt: skip
        kept.write_text(str(previous.stdout) + str(previous.stderr))
        log(f"[{label}] asterisk-0 restarted {before} times before `core stop now` ({kept})")
    started = time.monotonic()
    pod.rx("core stop now")
    seen: dict[str, float] = {}  # milestone -> seconds after `core stop now`, first seen

    def back() -> bool:
        # The operator's gate closed and opened again: kubelet can report the pod Ready
        # for a moment with the gate's earlier value, before it sees the gate closed.
        state = _restart_state(rig, pod)
        restarted = state.restarts > before
        for milestone, reached in (
            ("container restarted", restarted),
            ("gate closed", state.gate is False),
            ("container ready (its probe)", restarted and state.container_ready),
            ("gate open", "gate closed" in seen and bool(state.gate)),
        ):
            if reached:
                seen.setdefault(milestone, time.monotonic() - started)
        if not ("gate open" in seen and state.ready and state.gate):
            return False
        # Timed when kubelet's Ready was first seen; the listing after it (an exec of
        # ~0.2-0.4 s) confirms the set was there, and moves the figure if it was not.
        seen.setdefault("pod Ready", time.monotonic() - started)
        if _listed_endpoints(pod) == n:
            return True
        seen.pop("pod Ready")
        return False

    _wait(back, timeout, "the restarted pod Ready with its set")
    log(
        f"[{label}] restart: "
        + ", ".join(f"{what} +{at:.2f} s" for what, at in sorted(seen.items(), key=lambda i: i[1]))
    )
    return seen


@dataclass
class RestartState:
    uid: str  # the pod's: a new pod has another
    restarts: int  # of the pod's containers
    ready: bool  # the pod's Ready condition
    container_ready: bool  # every container's readiness (its probe)
    gate: bool | None  # the operator's readiness gate; None: not written yet


def _restart_state(rig: Rig, pod: ClusterAsteriskPod) -> RestartState:
    """One read of the pod's status."""
    read = rig.core.read_namespaced_pod(pod.name, pod.namespace)
    status = read.status
    containers = status.container_statuses or []
    conditions = {c.type: c.status == "True" for c in status.conditions or []}
    return RestartState(
        read.metadata.uid,
        sum(c.restart_count for c in containers),
        conditions.get("Ready", False),
        bool(containers) and all(c.ready for c in containers),
        conditions.get(Settings().readiness_condition),
    )


SIZE_FIGURES: tuple[tuple[str, str, dict[int, float]], ...] = (
    ("applied at once -> all Ready", "s", {1000: 30.0}),
    ("pod added after them -> all Ready", "s", {}),
    ("Asterisk busy after all Ready", "s", {}),
    ("one change -> Ready p50", "s", {1000: 0.7, 10000: 3.0}),
    ("one change -> Ready max", "s", {}),
    ("PJSIP reloads per change", "", {}),
    ("floor: exec + pjsip show endpoint", "s", {}),
    ("password rotation -> Ready (served)", "s", {1000: 1.0}),
    ("new pod -> full set loaded", "s", {1000: 5.0}),
    ("Asterisk start with the files in place", "s", {}),
    ("Asterisk restart -> pod Ready with its set", "s", {1000: 5.0}),  # median
    ("floor: Asterisk restart -> its container ready", "s", {}),
    ("operator VmHWM MiB", "MiB", {}),
)


def run(args: argparse.Namespace, workdir: Path, section: Any) -> None:
    """Fill `section` (bench/run.py Section): per size, this layout beside the baseline."""
    sizes = [int(x) for x in args.scale_sizes.split(",") if x]
    baseline_sizes = {int(x) for x in args.scale_baseline_sizes.split(",") if x}
    source = baseline_source()
    kwok: dict[int, dict[str, Any]] = {}
    for n in sizes:
        new = kwok[n] = one_size(args, workdir, "pod file", None, n)
        old = one_size(args, workdir, "per-CR files", source, n) if n in baseline_sizes else {}
        floor = new.get("floor: exec + pjsip show endpoint")
        for name, unit, targets in SIZE_FIGURES:
            if name not in new:
                continue
            value, before = new[name], old.get(name)
            notes = []
            if before is not None:
                notes.append(f"per-CR files {before:.2f}")
                if unit == "s" and value:
                    notes.append(f"{before / value:.1f}x faster")
            elif n not in baseline_sizes:
                notes.append("per-CR files not run at this size")
            if unit == "s" and floor and name.startswith("one change"):
                notes.append(f"{value / floor:.1f}x the floor")
            section.add(
                f"{n} trunks: {name}",
                value,
                unit,
                targets.get(n),
                note=", ".join(notes),
            )
        section.notes.append(
            f"{n} trunks: {new['changes']} changes (pod file), "
            f"{old.get('changes', 0)} (per-CR files)"
        )
    ari_sizes = {int(x) for x in args.scale_ari_sizes.split(",") if x}
    node_sizes = [int(x) for x in args.scale_node_sizes.split(",") if x]
    for n in sorted(set(node_sizes) | ari_sizes):
        files = real_node_size(args, workdir, n) if n in node_sizes else {}
        ari = real_node_size(args, workdir, n, "examples/asterisk-ari") if n in ari_sizes else {}
        for label, real, other in (("", files, ari), (" over ARI", ari, files)):
            floor = real.get("floor: exec + pjsip show endpoint")
            for name, unit, targets in SIZE_FIGURES:
                if name not in real:
                    continue
                notes = []
                if label and (with_files := other.get(name)) is not None:
                    notes.append(f"pod file {with_files:.2f}")
                    if unit == "s" and real[name]:
                        notes.append(f"{with_files / real[name]:.1f}x faster")
                if not label and (on_kwok := kwok.get(n, {}).get(name)) is not None:
                    notes.append(f"kwok rig {on_kwok:.2f}")
                if unit == "s" and floor and name.startswith("one change"):
                    notes.append(f"{real[name] / floor:.1f}x the floor")
                restart_floor = real.get("floor: Asterisk restart -> its container ready")
                if restart_floor and name.startswith("Asterisk restart"):
                    notes.append(f"{real[name] / restart_floor:.1f}x the floor")
                section.add(
                    f"{n} trunks on the real node{label}: {name}",
                    real[name],
                    unit,
                    targets.get(n),
                    note=", ".join(notes),
                )
            if real:
                section.notes.append(
                    f"{n} trunks on the real node{label}: {real['changes']} changes; the"
                    f" restart's figures are the median of {real['restarts']}"
                )
