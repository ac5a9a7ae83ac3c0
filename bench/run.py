"""Benchmarks of the trunk operator on the local platform; prints measured figures.

    .venv/bin/python bench/run.py                 # all measurements
    .venv/bin/python bench/run.py --only 1,3      # some of them
    .venv/bin/python bench/run.py --only 3 --trunks 200 --burst 50

Each measurement gets its own platform (bench/rig.py): a kwok cluster, the CRDs, fresh Asterisk
containers (bind 127.0.20.N) with their exec pods, and the operator as a subprocess; all of it
is stopped by its handle afterwards. Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ari_churn
import operator_work
import scale
import twilio_side
from rig import (
    BASE_IMAGE,
    HOST,
    SEGMENTS,
    STANDIN_IP,
    TRUNKS,
    InClusterRig,
    Rig,
    StatusWatch,
    image_size,
    log,
    percentile,
    trunk_spec,
    update_latencies,
)

from testbed.asterisk import AsteriskContainer
from testbed.release import build_operator_image
from tests.cases import large_case
from tests.e2e.conftest import podman_exec
from tests.e2e.ready_invariant import ReadyInvariant
from trunk_operator.pod import channel


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    target: float | None = None  # upper bound
    note: str = ""

    def line(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.2f}".rstrip("0").rstrip(".")
        verdict = ""
        if self.target is not None:
            met = self.value is not None and self.value <= self.target
            verdict = f"target <= {self.target:g} {self.unit}: {'MET' if met else 'NOT MET'}"
        text = f"  {self.name:<58} {shown:>9} {self.unit:<4} {verdict}"
        return (text + (f"  ({self.note})" if self.note else "")).rstrip()


@dataclass
class Section:
    title: str
    setup: str = ""
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> Figure:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        print(f"{self.title} | {figure.line().strip()}", flush=True)
        return figure

    def render(self) -> str:
        lines = [f"{self.title}", f"  setup: {self.setup}"] if self.setup else [self.title]
        lines += [f.line() for f in self.figures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def secret_for(args: argparse.Namespace, name: str) -> str:
    return "bench-sip" if args.shared_secret else f"{name}-sip"


def make_secrets(rig: Rig, args: argparse.Namespace, names: list[str]) -> None:
    wanted = sorted({secret_for(args, n) for n in names})
    rig.parallel(rig.create_secret, wanted)


def reloads(rig: Rig) -> list[int]:
    return [p.reloads() for p in rig.pods]


def hosts() -> dict[str, str]:
    return {HOST: STANDIN_IP}


# ---- 1. apply -> Ready latency ---------------------------------------------------------------


def apply_latencies(
    rig: Rig, watch: StatusWatch, args: argparse.Namespace, names: list[str]
) -> tuple[list[float], list[float]]:
    """`names` created one after another (their Secrets exist), then `args.applies` spec
    changes (codecs) of the first; seconds from just before each API call to Ready at its
    generation."""
    creates, changes = [], []
    for i, name in enumerate(names):
        started = time.monotonic()
        gen = rig.create(TRUNKS, "TwilioTrunk", name, trunk_spec(i, name, secret_for(args, name)))
        done = watch.wait_ready([(name, gen)], 60, f"create {name}")
        creates.append(done[(name, gen)] - started)
    for i in range(args.applies):
        codecs = ["alaw"] if i % 2 == 0 else ["ulaw", "alaw"]
        started = time.monotonic()
        gen = rig.patch_spec(TRUNKS, names[0], {"codecs": codecs})
        done = watch.wait_ready([(names[0], gen)], 60, f"update {i}")
        changes.append(done[(names[0], gen)] - started)
    return creates, changes


def m1_latency(args: argparse.Namespace, workdir: Path) -> Section:
    sec = Section(
        "1. CR apply -> Ready latency",
        f"{args.pods} Asterisk pod(s); {args.applies} trunks created one after another, then"
        f" {args.applies} spec changes of one trunk (codecs), each waiting for Ready with"
        " observedGeneration == generation (API watch, times from before the API call)",
    )
    with Rig("latency", workdir, args.observe_interval) as rig:
        rig.add_pods(args.pods, hosts())
        rig.start_operator()
        watch = rig.watch()
        names = [f"lat-{i:03d}" for i in range(args.applies)]
        make_secrets(rig, args, names)
        creates, updates = apply_latencies(rig, watch, args, names)
        both = creates + updates
        for label, values in (("create", creates), ("update", updates), ("all", both)):
            n = len(values)
            sec.add(f"{label}: p50 (n={n})", percentile(values, 50), "s", 1.0)
            sec.add(f"{label}: p95 (n={n})", percentile(values, 95), "s", 2.0)
            sec.add(f"{label}: max", max(values), "s")
        sec.add("PJSIP reloads per pod over the whole run", max(reloads(rig)), "")
        assert rig.operator
        sec.notes.append(f"operator stats: {rig.operator.stats()}")
    return sec


# ---- 2. burst ------------------------------------------------------------------------------


def m2_burst(args: argparse.Namespace, workdir: Path) -> Section:
    n = args.burst
    sec = Section(
        f"2. Burst of {n} trunk changes",
        f"{args.pods} Asterisk pod(s); (a) {n} trunks created as fast as possible (8 API"
        f" threads), (b) then one spec change (codecs) of each of the {n}; time from the first"
        " API call to all Ready at their generation; reloads counted as"
        " \"Reloading module 'res_pjsip.so'\" lines in each container's log",
    )
    with Rig("burst", workdir, args.observe_interval) as rig:
        rig.add_pods(args.pods, hosts())
        op = rig.start_operator()
        watch = rig.watch()
        names = [f"burst-{i:03d}" for i in range(n)]
        make_secrets(rig, args, names)
        base = op.stats()
        for phase in ("create", "update"):
            before = reloads(rig)
            started = time.monotonic()
            if phase == "create":
                gens = rig.parallel(
                    lambda i: rig.create(
                        TRUNKS, "TwilioTrunk", names[i],
                        trunk_spec(i, names[i], secret_for(args, names[i])),
                    ),
                    range(n),
                )  # fmt: skip
            else:
                gens = rig.parallel(
                    lambda name: rig.patch_spec(TRUNKS, name, {"codecs": ["alaw"]}), names
                )
            applied = time.monotonic() - started
            done = watch.wait_ready(list(zip(names, gens, strict=True)), 300, phase)
            total = max(done.values()) - started
            time.sleep(2)  # a reload still running after the last status shows up too
            per_pod = [a - b for a, b in zip(reloads(rig), before, strict=True)]
            stats = op.stats()
            sec.add(f"({phase}) {n} API calls took", applied, "s")
            sec.add(f"({phase}) burst start -> all {n} Ready", total, "s")
            sec.add(f"({phase}) PJSIP reloads per pod (max of {per_pod})", max(per_pod), "", 3)
            sec.notes.append(
                f"{phase}: operator plans +{stats.get('plans', 0) - base.get('plans', 0)},"
                f" delivery rounds +{stats.get('reloads', 0) - base.get('reloads', 0)}"
                f" (all pods)"
            )
            base = stats
    return sec


# ---- 3. restart ----------------------------------------------------------------------------


class EndpointSampler:
    """Counts the endpoints one pod's Asterisk has loaded, as often as exec allows."""

    def __init__(self, container: AsteriskContainer) -> None:
        self.container = container
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from trunk_operator.core.asterisk_output import parse_endpoints

        while not self._stop.is_set():
            text = self.container.rx("pjsip show endpoints", timeout=60, check=False)
            self.samples.append((time.monotonic(), len(parse_endpoints(text))))
            self._stop.wait(0.3)

    def __enter__(self) -> EndpointSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def m3_restart(args: argparse.Namespace, workdir: Path) -> Section:
    n, pods = args.trunks, args.restart_pods
    sec = Section(
        "3. Convergence after an operator restart",
        f"{n} trunks on {pods} pods, all Ready; operator stopped (SIGTERM), every trunk's status"
        " reset to Ready=Unknown while it is down (otherwise the old Ready=True would hide"
        " convergence), operator started again; pods untouched",
    )
    with Rig("restart", workdir, args.observe_interval) as rig:
        rig.add_pods(pods, hosts())
        op = rig.start_operator()
        watch = rig.watch()
        names = [f"rs-{i:04d}" for i in range(n)]
        make_secrets(rig, args, names)
        started = time.monotonic()
        gens = rig.parallel(
            lambda i: rig.create(
                TRUNKS, "TwilioTrunk", names[i], trunk_spec(i, names[i], secret_for(args, names[i]))
            ),
            range(n),
        )
        keys = list(zip(names, gens, strict=True))
        done = watch.wait_ready(keys, args.timeout, "initial")
        sec.add(f"initial: {n} trunks created -> all Ready", max(done.values()) - started, "s")
        time.sleep(3)
        sec.add("initial: PJSIP reloads per pod (max)", max(reloads(rig)), "")
        stats = op.stats()
        sec.notes.append(f"initial: operator stats {stats}")
        counts = [p.endpoint_count() for p in rig.pods]
        sec.notes.append(f"endpoints loaded per pod before the restart: {counts}")

        op.stop()
        rig.parallel(
            lambda name: rig.patch_status(
                TRUNKS,
                name,
                {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "Unknown",
                            "reason": "BenchReset",
                            "message": "reset by bench/run.py while the operator is down",
                        }
                    ]
                },
            ),
            names,
        )
        # The watch only records the first Ready per generation: start a fresh one.
        time.sleep(1)
        watch.stop()
        watch = rig.watch()
        time.sleep(1)
        if watch.count_ready(keys):
            sec.notes.append("WARNING: some trunks still Ready after the status reset")
        before = reloads(rig)
        with EndpointSampler(rig.pods[0].container) as sampler:
            restart_wall = time.time()
            answered = op.start()
            t0 = op.started
            done = watch.wait_ready(keys, args.timeout, "after restart")
            ready_after = max(done.values()) - t0
            time.sleep(max(5.0, args.observe_interval / 3))
        per_pod = [a - b for a, b in zip(reloads(rig), before, strict=True)]
        last_reload = max(
            (t for p in rig.pods for t in p.reload_times() if t >= restart_wall), default=None
        )
        sec.add("operator start -> liveness probe answers", answered, "s")
        sec.add(f"operator start -> all {n} Ready again", ready_after, "s", 30)
        sec.add(
            f"PJSIP reloads per pod after the restart (max of {per_pod})", max(per_pod), "",
            note="~0 expected when delivered hashes match",
        )  # fmt: skip
        if last_reload is not None:
            sec.add("operator start -> last reload seen", last_reload - restart_wall, "s")
        low = min((c for _, c in sampler.samples), default=None)
        sec.add(
            f"fewest endpoints seen in {rig.pods[0].name} during convergence", low, "",
            note=f"{len(sampler.samples)} samples; {n} expected throughout",
        )  # fmt: skip
        dips = [(round(t - t0, 1), c) for t, c in sampler.samples if c < n]
        if dips:
            sec.add(
                f"{rig.pods[0].name} served fewer than {n} endpoints from", dips[0][0], "s",
                note=f"to {dips[-1][0]} s after start; {len(dips)} samples, counts"
                f" {sorted({c for _, c in dips})}",
            )  # fmt: skip
        pod0 = [round(t - restart_wall, 1) for t in rig.pods[0].reload_times() if t >= restart_wall]
        sec.notes.append(f"PJSIP reloads in {rig.pods[0].name} at (s after start): {pod0}")
        sec.notes.append(f"after restart: operator stats {op.stats()}")
    return sec


# ---- 4. memory -----------------------------------------------------------------------------


def m4_memory(args: argparse.Namespace, workdir: Path) -> Section:
    n, pods = args.memory_trunks, args.memory_pods
    sec = Section(
        "4. Operator peak RSS",
        f"{n} trunks, {pods} Asterisk pod(s)"
        + ("" if pods else " (trunks end Ready=False NoAsteriskPods, rendered)")
        + "; VmHWM of the operator process from /proc/<pid>/status once settled",
    )
    with Rig("memory", workdir, args.observe_interval) as rig:
        if pods:
            rig.add_pods(pods, hosts())
        op = rig.start_operator()
        watch = rig.watch()
        idle = op.memory()
        names = [f"mem-{i:04d}" for i in range(n)]
        make_secrets(rig, args, names)
        started = time.monotonic()
        gens = rig.parallel(
            lambda i: rig.create(
                TRUNKS, "TwilioTrunk", names[i], trunk_spec(i, names[i], secret_for(args, names[i]))
            ),
            range(n),
        )
        created = time.monotonic() - started
        keys = list(zip(names, gens, strict=True))
        peak_seen = 0
        settled = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            peak_seen = max(peak_seen, op.memory()["VmRSS"])
            if pods:
                if watch.count_ready(keys) == n:
                    settled = time.monotonic() - started
                    break
            else:
                with watch.lock:
                    reasons = [
                        (o.get("status") or {}).get("observedGeneration")
                        == o["metadata"]["generation"]
                        for o in watch.objects.values()
                    ]
                if len(reasons) == n and all(reasons):
                    settled = time.monotonic() - started
                    break
            time.sleep(0.5)
        if settled is None:
            sec.notes.append(
                f"NOT settled after {args.timeout:.0f} s: {watch.count_ready(keys)}/{n} Ready"
            )
        time.sleep(5)
        memory = op.memory()
        sec.add("operator RSS idle before the trunks", idle["VmRSS"] / 1024, "MiB")
        sec.add(f"{n} trunks + secrets created (API calls)", created, "s")
        sec.add(
            f"created -> all {n} {'Ready' if pods else 'statused'}",
            settled, "s",
        )  # fmt: skip
        sec.add("operator VmHWM (peak RSS)", memory["VmHWM"] / 1024, "MiB", 120)
        sec.add("operator VmRSS after settling", memory["VmRSS"] / 1024, "MiB")
        scrapes = [op.scrape() for _ in range(5)]
        sec.add(
            f"/metrics scrape with {n} trunks, p50 of 5", percentile([t for t, _ in scrapes], 50),
            "s", note=f"{scrapes[-1][1] // 1024} KiB",
        )  # fmt: skip
        stats = op.stats()
        sec.notes.append(f"operator stats {stats}")
        if pods:
            sec.notes.append(f"PJSIP reloads per pod: {reloads(rig)}")
    return sec


# ---- 5. 100k DIDs --------------------------------------------------------------------------


def m5_dids(args: argparse.Namespace, workdir: Path) -> Section:
    count = args.dids
    sec = Section(
        f"5. Render + deliver + reload of a {count}-DID segment",
        "pure: tests.cases.large_case rendered in-process and delivered with"
        " trunk_operator.asterisk.deliver over `podman exec`; operator: a DIDSegment with"
        f" {args.did_ranges} ranges totalling {count} applied to a Ready trunk on 1 pod",
    )
    bulk_host = "bulk.pstn.twilio.com"
    # -- pure path
    container = AsteriskContainer("bench-dids-pure", "127.0.20.40", {bulk_host: "127.0.0.22"})
    try:
        container.start()
        started = time.monotonic()
        case = large_case(count)
        files = case.files()
        rendered = time.monotonic() - started
        expected = case.expected(files)
        size = sum(len(t) for t in files.values())
        for attempt in ("first", "again"):
            t = time.monotonic()
            result = channel.deliver(podman_exec(container.name), files, expected, 300)
            took = time.monotonic() - t
            if not result.ok:
                sec.notes.append(f"pure {attempt} delivery FAILED: {result.problems[:3]}")
            if attempt == "first":
                sec.add(f"pure: render ({size / 1e6:.1f} MB of config)", rendered, "s")
                sec.add("pure: deliver + reload + verify (empty pod)", took, "s")
                sec.add("pure: render + deliver total", rendered + took, "s", 5)
            else:
                sec.add("pure: deliver again (same set, pod already has it)", took, "s")
        t = time.monotonic()
        container.rx("dialplan reload", timeout=300)
        sec.add("pure: a bare `dialplan reload` with the set loaded", time.monotonic() - t, "s")
        t = time.monotonic()
        container.rx("module reload res_pjsip.so", timeout=300)
        sec.add("pure: a bare PJSIP reload with the set loaded", time.monotonic() - t, "s")
    finally:
        container.stop()
    # -- through the operator
    with Rig("dids", workdir, args.observe_interval) as rig:
        rig.add_pods(1, {bulk_host: "127.0.0.22"}, first_ip=41)
        rig.start_operator()
        trunks, segments = rig.watch(TRUNKS), rig.watch(SEGMENTS)
        rig.create_secret("bulk-sip")
        gen = rig.create(
            TRUNKS, "TwilioTrunk", "bulk",
            {"terminationHost": bulk_host, "credentials": {"secretName": "bulk-sip"},
             "qualifyFrequencySeconds": 0},
        )  # fmt: skip
        trunks.wait_ready([("bulk", gen)], 60, "bulk trunk")
        per = count // args.did_ranges
        ranges = [
            {
                "start": f"+1555{i:03d}00000",
                "count": per if i else count - per * (args.did_ranges - 1),
            }
            for i in range(args.did_ranges)
        ]
        before = reloads(rig)
        started, started_wall = time.monotonic(), time.time()
        sgen = rig.create(
            SEGMENTS, "DIDSegment", "bulk-all",
            {"trunkRef": {"name": "bulk"}, "ranges": ranges,
             "callerIdPool": {"enabled": True, "strategy": "random"}},
        )  # fmt: skip
        applied = time.monotonic() - started
        done = segments.wait_ready([("bulk-all", sgen)], args.timeout, "segment")
        seg_ready = done[("bulk-all", sgen)] - started
        trunk_obj = trunks.objects.get("bulk") or {}
        sec.add("operator: DIDSegment create API call", applied, "s")
        sec.add(f"operator: create -> segment Ready ({count} DIDs)", seg_ready, "s", 5)
        time.sleep(2)
        times = [t for t in rig.pods[0].reload_times() if t >= started_wall]
        first_reload = min(times, default=None)
        if first_reload is not None:
            sec.add(
                "operator: create -> PJSIP reload starts in the pod", first_reload - started_wall,
                "s", note="plan, render, rendered-state writes, tar transfer over exec",
            )  # fmt: skip
        sec.add(
            "operator: PJSIP reloads in the pod for it",
            max(a - b for a, b in zip(reloads(rig), before, strict=True)), "",
        )  # fmt: skip
        sec.notes.append(
            f"trunk status didCount={(trunk_obj.get('status') or {}).get('didCount')},"
            f" trunk Ready={trunks.conditions('bulk').get('status')}"
        )
        assert rig.operator
        sec.notes.append(f"operator stats {rig.operator.stats()}")
        sec.notes.append(
            f"operator RSS after the segment: {rig.operator.memory()['VmHWM'] / 1024:.0f} MiB peak"
        )
    return sec


# ---- 6. the Ready invariant at scale ----------------------------------------------------------


def m6_invariant(args: argparse.Namespace, workdir: Path) -> Section:
    """tests/e2e/ready_invariant.py with hundreds and a thousand trunks in one pod."""
    sec = Section(
        "6. Ready invariant (Ready only for what Asterisk serves; one Event per transition)",
        setup=f"1 pod, {args.invariant_sizes} trunks, 5 hot trunks, {args.invariant_actions}"
        f" random spec/Secret changes, seed {args.seed}",
    )
    for size in [int(x) for x in args.invariant_sizes.split(",")]:
        with Rig(f"inv{size}", workdir, args.observe_interval) as rig:
            [pod] = rig.add_pods(1, hosts())
            rig.start_operator()
            scenario = ReadyInvariant(
                rig.core,
                rig.custom,
                rig.namespace,
                pod.container,
                seed=args.seed,
                trunks=size,
                hot=5,
                actions=args.invariant_actions,
                log=log,
            )
            report = scenario.run(ready_timeout=args.timeout)
            events = sum(sum(c.values()) for c in report.events.values())
            transitions = sum(report.transitions.values())
            sec.add(f"{size} trunks: checks in Asterisk when Ready", report.checks, "")
            sec.add(f"{size} trunks: Ready for a generation not served", len(report.violations), "")
            sec.add(
                f"{size} trunks: Events / condition transitions",
                events,
                "",
                note=f"{transitions} transitions",
            )
            sec.add(f"{size} trunks: trunks whose Events differ", len(report.event_problems), "")
            sec.add(f"{size} trunks: scenario time", report.seconds, "s")
            sec.notes += report.violations[:5] + report.event_problems[:5]
    return sec


# ---- 7. the operator in-cluster, as users run it --------------------------------------------

INCLUSTER_IP = "127.0.20.70"  # asterisk-0 of examples/asterisk (hostNetwork) binds here
MIB = 1024 * 1024
UPDATES_AT_SCALE = 5  # updates timed with all trunks in the pod, before and after a restart


def add_memory(
    sec: Section,
    who: str,
    when: str,
    memory: Callable[[], dict[str, int]],
    cgroup: Callable[[], dict[str, int]] | None = None,
) -> None:
    group = cgroup() if cgroup else {}  # before the exec, whose process the cgroup counts
    status = memory()
    sec.add(
        f"{who}: {when}: VmRSS", status["VmRSS"] / 1024, "MiB",
        note=f"RssAnon {status.get('RssAnon', 0) / 1024:.0f} MiB,"
        f" RssFile {status.get('RssFile', 0) / 1024:.0f} MiB",
    )  # fmt: skip
    sec.add(f"{who}: {when}: VmHWM", status["VmHWM"] / 1024, "MiB")
    if group:
        sec.add(
            f"{who}: {when}: cgroup working set", group["working_set"] / MIB, "MiB",
            note=f"anon {group['anon'] / MIB:.0f} MiB, usage {group['usage'] / MIB:.0f} MiB,"
            f" peak usage {group['peak'] / MIB:.0f} MiB",
        )  # fmt: skip


def trunk_scenario(
    sec: Section,
    rig: Rig,
    args: argparse.Namespace,
    who: str,
    pod: Any,
    memory: Callable[[], dict[str, int]],
    cgroup: Callable[[], dict[str, int]] | None = None,
) -> tuple[StatusWatch, list[str]]:
    """The trunk steps of measurement 7, the same for the in-cluster operator and the host
    process: memory idle (one Asterisk pod, no trunks), apply -> Ready one at a time as in
    measurement 1, the rest of the trunks at once, memory with all of them Ready."""
    n = max(args.incluster_trunks, args.applies)
    watch = rig.watch()
    time.sleep(5)
    add_memory(sec, who, "idle (1 pod, no trunks)", memory, cgroup)
    names = [f"inc-{i:04d}" for i in range(n)]
    make_secrets(rig, args, names)
    creates, updates = apply_latencies(rig, watch, args, names[: args.applies])
    for label, values in (("create", creates), ("update", updates)):
        k = len(values)
        sec.add(f"{who}: {label} -> Ready p50 (n={k})", percentile(values, 50), "s", 1.0)
        sec.add(f"{who}: {label} -> Ready p95 (n={k})", percentile(values, 95), "s", 2.0)
    started = time.monotonic()
    gens = rig.parallel(
        lambda i: rig.create(
            TRUNKS, "TwilioTrunk", names[i], trunk_spec(i, names[i], secret_for(args, names[i]))
        ),
        range(args.applies, n),
    )
    if gens:
        keys = list(zip(names[args.applies :], gens, strict=True))
        done = watch.wait_ready(keys, args.timeout, f"{who}: {len(keys)} trunks at once")
        sec.add(
            f"{who}: {len(keys)} more at once -> all {n} Ready", max(done.values()) - started, "s"
        )
    time.sleep(5)
    add_memory(sec, who, f"{n} trunks Ready", memory, cgroup)
    updates = update_latencies(rig, watch, names[0], UPDATES_AT_SCALE)
    sec.add(
        f"{who}: update -> Ready, {n} trunks in the pod, p50 (n={len(updates)})",
        percentile(updates, 50), "s", note=f"max {max(updates):.2f} s",
    )  # fmt: skip
    sec.add(f"{who}: PJSIP reloads in the pod so far", pod.reloads(), "")
    return watch, names


def after_restart(sec: Section, rig: Rig, watch: StatusWatch, who: str, name: str, n: int) -> None:
    updates = update_latencies(rig, watch, name, UPDATES_AT_SCALE)
    sec.add(f"{who}: after the restart, first update -> Ready", updates[0], "s")
    sec.add(
        f"{who}: after the restart, update -> Ready p50 (n={len(updates)})",
        percentile(updates, 50), "s", note=f"{n} trunks in the pod",
    )  # fmt: skip


def m7_incluster(args: argparse.Namespace, workdir: Path) -> Section:
    n = max(args.incluster_trunks, args.applies)
    secrets = "one shared Secret" if args.shared_secret else "one Secret per trunk"
    sec = Section(
        "7. In-cluster operator (Helm release on the real kubelet node)",
        "helm install of charts/asterisk-trunk-operator, image built from the Dockerfile,"
        f" restricted namespace, chart defaults (observeIntervalSeconds"
        f" {args.observe_interval:g}); one Asterisk pod of examples/asterisk on the same node;"
        f" {args.applies} creates one after another, {args.applies} updates, then"
        f" {n - args.applies} more trunks at once: {n} trunks as bench/rig.py trunk_spec (own"
        f" accountSid, qualify 0), {secrets}. Memory: /proc/1/status of PID 1 in the operator"
        " container (kubectl exec), its memory cgroup read on the host. Baseline (host"
        " process): the same steps with the operator process of measurement 1 and a podman"
        " Asterisk container behind a kwok exec pod"
        + ("" if args.incluster_baseline else " (skipped: --no-incluster-baseline)"),
    )
    image = build_operator_image()
    size, base = image_size(image), image_size(BASE_IMAGE)
    sec.add(f"image size: {image}", size / 1e6, "MB")
    sec.add(f"image size: base {BASE_IMAGE}", base / 1e6, "MB")
    sec.add("image size: venv (dependencies + package) on top", (size - base) / 1e6, "MB")

    with InClusterRig("incluster", workdir, args.observe_interval, image) as rig:
        sec.notes.append(f"image import into the node, s (0: already there): {rig.imports}")
        times = rig.install_operator(observeIntervalSeconds=args.observe_interval)
        for what, took in times.items():
            sec.add(f"in-cluster: helm install -> {what}", took, "s")
        started = time.monotonic()
        pod = rig.add_asterisk(INCLUSTER_IP, hosts())
        sec.notes.append(
            "examples/asterisk applied -> Asterisk answering in asterisk-0:"
            f" {time.monotonic() - started:.1f} s"
        )
        watch, names = trunk_scenario(
            sec, rig, args, "in-cluster", pod, rig.operator_memory, rig.operator_cgroup
        )
        before = pod.reloads()
        for what, took in rig.restart_operator().items():
            sec.add(f"in-cluster: operator pod deleted -> {what}", took, "s")
        time.sleep(10)
        sec.add(
            "in-cluster: PJSIP reloads from the takeover", pod.reloads() - before, "",
            note="0 expected: the new pod adopts what asterisk-0 serves",
        )  # fmt: skip
        add_memory(
            sec, "in-cluster", f"new pod, {n} trunks", rig.operator_memory, rig.operator_cgroup
        )
        after_restart(sec, rig, watch, "in-cluster", names[0], n)
        sec.notes.append(f"in-cluster: endpoints in asterisk-0 at the end: {pod.endpoint_count()}")
        sec.notes.append(
            f"in-cluster: operator stats (Kopf caches <= 10 s): {rig.operator_stats()}"
        )

    if not args.incluster_baseline:
        return sec
    with Rig("incluster-host", workdir, args.observe_interval) as host:
        [host_pod] = host.add_pods(1, hosts())
        op = host.start_operator()
        watch, names = trunk_scenario(sec, host, args, "host process", host_pod, op.memory)
        before = host_pod.reloads()
        started = time.monotonic()
        op.stop()
        answered = op.start()
        sec.add(
            "host process: SIGTERM -> new process answers /healthz",
            time.monotonic() - started,
            "s",
            note=f"start -> /healthz {answered:.2f} s",
        )
        time.sleep(10)
        sec.add("host process: PJSIP reloads from the restart", host_pod.reloads() - before, "")
        add_memory(sec, "host process", f"new process, {n} trunks", op.memory)
        after_restart(sec, host, watch, "host process", names[0], n)
        sec.notes.append(f"host process: operator stats {op.stats()}")
    return sec


def m8_scale(args: argparse.Namespace, workdir: Path) -> Section:
    sec = Section(
        "8. One change with many trunks in the pod: one file per directory vs per-CR files",
        f"one Asterisk pod, sizes {args.scale_sizes} (per-CR files, the layout of"
        f" {scale.BASELINE_COMMIT[:7]}, at {args.scale_baseline_sizes}); one shared Secret,"
        " trunks as bench/rig.py trunk_spec (own accountSid, qualify 0) created at once, then"
        f" {args.scale_changes} codec changes of one trunk ({args.scale_baseline_changes} with"
        " per-CR files from 1,000 trunks: a minute each), its own Secret rotated, a new pod"
        " added, `core restart now` with the files in place. Floor: one exec round trip"
        " through the API server with `pjsip show endpoint X` (the operator's exec client)."
        f" Sizes {args.scale_node_sizes or 'none'} again with the chart's operator and an"
        " examples/asterisk pod on the real kubelet node (exec through kubelet and containerd"
        " instead of kwok's exec pod and podman), up to the rotation; sizes"
        f" {args.scale_ari_sizes or 'none'} there with an examples/asterisk-ari pod (ARI push)."
        f" Observer interval {args.observe_interval:g} s",
    )
    scale.run(args, workdir, sec)
    return sec


def m9_operator_work(args: argparse.Namespace, workdir: Path) -> Section:
    sec = Section(
        "9. The operator's own work per change: this checkout vs before the incremental passes",
        f"sizes {args.work_sizes}, no cluster and no Asterisk (bench/operator_work.py): a"
        " stand-in API and one pod whose delivery returns at once after packing its files"
        f" (a light ARI push's reads); {args.work_changes} codec changes of one trunk, each"
        " timed from its watch event to its Ready written. The same in another process with"
        f" the operator at {operator_work.BASELINE_COMMIT[:7]}. Floor: joining, hashing and"
        " packing the pod's files once (what whole-file delivery cannot skip)",
    )
    operator_work.run(args, sec)
    return sec


def m10_ari_churn(args: argparse.Namespace, workdir: Path) -> Section:
    sec = Section(
        "10. Over ARI, one endpoint replaced again and again beside PJSIP reads",
        f"a podman Asterisk over ARI with {args.churn_trunks} trunks (the operator's own"
        f" delivery), then up to {args.churn_changes} codec changes of one trunk, one delivery"
        " each; `pjsip show endpoint` / `pjsip list endpoints` every 0.05-0.4 s from another"
        " thread, never during a delivery (as the operator's observer). The steps of"
        f" {ari_churn.BASELINE_COMMIT[:7]}'s pusher (an endpoint deleted and created again at"
        " once) as the baseline, in its own Asterisk (bench/ari_churn.py;"
        " asterisk/asterisk#2172)",
    )
    ari_churn.run(args, sec)
    return sec


def m11_twilio(args: argparse.Namespace, workdir: Path) -> Section:
    sec = Section(
        "11. The Twilio end: a rotation on both ends, and the API requests of resyncs",
        f"one Asterisk container, the operator, Twilio's REST stand-in; {args.twilio_trunks}"
        f" trunks with spec.twilio (credentialPropagationSeconds {args.twilio_propagation}) and"
        f" one without; {args.twilio_rotations} rotations of each, interleaved: Secret changed ->"
        " Twilio holds the new password and Asterisk serves it (`pjsip show auth`); then"
        f" {args.twilio_resyncs} resyncs (resyncSeconds {args.twilio_resync}) counted at the"
        " stand-in (bench/twilio_side.py)",
    )
    twilio_side.run(args, workdir, sec)
    return sec


MEASUREMENTS = {
    1: m1_latency,
    2: m2_burst,
    3: m3_restart,
    4: m4_memory,
    5: m5_dids,
    6: m6_invariant,
    7: m7_incluster,
    8: m8_scale,
    9: m9_operator_work,
    10: m10_ari_churn,
    11: m11_twilio,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--only", default="1,2,3,4,5,6,7,8,9,10,11", help="measurements to run, e.g. 1,3"
    )
    p.add_argument("--applies", type=int, default=20, help="(1, 7) creates and updates, each")
    p.add_argument("--pods", type=int, default=2, help="(1, 2) Asterisk pods")
    p.add_argument("--burst", type=int, default=50, help="(2) trunks in the burst")
    p.add_argument("--trunks", type=int, default=200, help="(3) trunks")
    p.add_argument("--restart-pods", type=int, default=3, help="(3) Asterisk pods")
    p.add_argument("--memory-trunks", type=int, default=1000, help="(4) trunks")
    p.add_argument("--memory-pods", type=int, default=1, help="(4) Asterisk pods (0: none)")
    p.add_argument("--dids", type=int, default=100_000, help="(5) DIDs in the segment")
    p.add_argument("--did-ranges", type=int, default=4, help="(5) ranges of the segment")
    p.add_argument("--invariant-sizes", default="300,1000", help="(6) trunks in the pod, per run")
    p.add_argument("--invariant-actions", type=int, default=30, help="(6) random changes")
    p.add_argument("--seed", type=int, default=7, help="(6) seed of the random changes")
    p.add_argument(
        "--incluster-trunks", type=int, default=200, help="(7) trunks in the Asterisk pod"
    )
    p.add_argument(
        "--incluster-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(7) the same steps with the host-process operator, as the baseline",
    )
    p.add_argument("--scale-sizes", default="10,100,1000,10000", help="(8) trunks per run")
    p.add_argument(
        "--scale-baseline-sizes", default="10,100,1000", help="(8) sizes run with per-CR files"
    )
    p.add_argument("--scale-changes", type=int, default=10, help="(8) changes of one trunk")
    p.add_argument(
        "--scale-restarts",
        type=int,
        default=5,
        help="(8) restarts measured per real-node size up to 1,000 trunks (median; from the"
        " second on, each in a new pod: kubelet waits 10 s before a second restart)",
    )
    p.add_argument(
        "--scale-node-sizes",
        default="1000",
        help="(8) sizes run again with the chart's operator and Asterisk on the real node",
    )
    p.add_argument(
        "--scale-ari-sizes",
        default="1000,10000",
        help="(8) sizes run on the real node with an examples/asterisk-ari pod (ARI push)",
    )
    p.add_argument(
        "--scale-pod-last-sizes",
        default="10000",
        help="(8) real-node sizes whose pod is added once every CR has a status",
    )
    p.add_argument(
        "--scale-baseline-changes", type=int, default=2, help="(8) per-CR files, >= 1,000 trunks"
    )
    p.add_argument("--work-sizes", default="1000,10000", help="(9) trunks per run")
    p.add_argument("--work-changes", type=int, default=10, help="(9) changes of one trunk")
    p.add_argument("--churn-trunks", type=int, default=1000, help="(10) trunks in the pod")
    p.add_argument("--churn-changes", type=int, default=300, help="(10) changes at most")
    p.add_argument("--twilio-trunks", type=int, default=10, help="(11) trunks with spec.twilio")
    p.add_argument("--twilio-rotations", type=int, default=10, help="(11) rotations of each")
    p.add_argument("--twilio-propagation", type=int, default=1, help="(11) propagation (s)")
    p.add_argument("--twilio-resync", type=int, default=30, help="(11) resyncSeconds")
    p.add_argument("--twilio-resyncs", type=int, default=3, help="(11) resyncs counted")
    p.add_argument(
        "--shared-secret",
        action="store_true",
        help="all trunks use one credentials Secret (default: one Secret per trunk)",
    )
    p.add_argument(
        "--observe-interval", type=float, default=30, help="TRUNKOP_OBSERVE_INTERVAL (s)"
    )
    p.add_argument("--timeout", type=float, default=900, help="per wait for many CRs (s)")
    p.add_argument("--logs", help="keep operator logs in this directory")
    args = p.parse_args(argv)
    # SIGTERM (a background run has SIGINT ignored) unwinds like Ctrl-C: every rig closes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    chosen = [int(x) for x in args.only.replace(" ", "").split(",") if x]

    workdir = Path(args.logs or tempfile.mkdtemp(prefix="trunkop-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"operator logs in {workdir}")
    sections: list[Section] = []
    failed = []
    for number in chosen:
        log(f"measurement {number} ...")
        started = time.monotonic()
        try:
            sections.append(MEASUREMENTS[number](args, workdir))
        except Exception as error:
            failed.append(number)
            sec = Section(f"{number}. FAILED")
            sec.notes.append(f"{type(error).__name__}: {error}")
            sections.append(sec)
            log(f"measurement {number} failed: {error}")
        log(f"measurement {number} took {time.monotonic() - started:.0f} s")

    print("\n==== trunk operator bench ====")
    for sec in sections:
        print(sec.render())
        print()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
