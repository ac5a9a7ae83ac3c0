"""Measurement 9: the operator's own work per change, with many trunks in the pod.

No cluster and no Asterisk: the controller of a checkout runs with a recording stand-in for
the API (tests/unit/helpers.py GateKube) and one pod whose delivery returns at once
after the operator-side part of a real one over ARI (packing the pod's files; a push that
only replaced objects, read without listings). One trunk's codec is changed again and again;
each change is timed from the watch event to its Ready status written, which is what the
operator adds to Asterisk's time on a real platform (measurement 8).

Side by side in one run: this checkout, and the operator at BASELINE_COMMIT (before the
incremental status pass and plan) from `git archive`, each in its own process; and the floor,
the work no change can skip with whole-file delivery: joining, hashing and packing the pod's
files once.

    python bench/operator_work.py SIZE CHANGES     # one process: prints its figures as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "4cc462b1fb51daa850ba7b4c524d290d331eab7f"  # before the incremental passes


def measure(size: int, changes: int) -> dict[str, Any]:
    """In this process, with whichever trunk_operator is on sys.path."""
    from rig import percentile, trunk_spec

    from tests.unit.helpers import GateKube, pod_body
    from trunk_operator.core.asterisk_output import Listing
    from trunk_operator.core.desired import files_of
    from trunk_operator.core.render import files_hash
    from trunk_operator.core.verify import Observation
    from trunk_operator.pod import channel
    from trunk_operator.runtime import pod_workers
    from trunk_operator.runtime.controller import Controller
    from trunk_operator.runtime.settings import Settings

    full_collections = [0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full_collections[0] += 1

    def deliver(
        exec_: Any, files: Any, expected: Any, *args: Any, **kwargs: Any
    ) -> channel.DeliveryResult:
        digest = files_hash(files)  # the real one hashes too, unless given the digest
        channel.pack(files)
        if not hasattr(deliver, "listed"):  # the first delivery lists everything
            deliver.listed = True  # type: ignore[attr-defined]
            listing = Listing(
                endpoints={e.name: "Not in use" for e in expected.endpoints},
                aors={a for e in expected.endpoints for a in e.aors},
                auths={e.auth: e.username for e in expected.endpoints},
                identifies={e.identify: e.name for e in expected.endpoints},
            )
            return channel.DeliveryResult(True, digest, [], Observation(listing).attach(expected))
        return channel.DeliveryResult(True, digest, [], Observation(Listing(read=set())))

    pod_workers.channel.deliver = deliver
    pod_workers.channel.observe = lambda *a, **k: Observation(Listing())

    def body(i: int, generation: int = 1, codec: str = "ulaw") -> dict[str, Any]:
        name = f"t{i:05d}"
        return {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": name,
                "generation": generation,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "resourceVersion": str(generation),
                "finalizers": ["trunks.asterisk-operator.dev/delivered"],
            },
            "spec": trunk_spec(i, name, "sip", codecs=[codec]),
        }

    async def run() -> dict[str, Any]:
        kube = GateKube()
        kube.rendered_hashes = dict  # type: ignore[attr-defined]
        ctl = Controller(kube, Settings(observe_interval=1e6))  # type: ignore[arg-type]
        ctl.upsert_pod(pod_body("asterisk-0"))
        for i in range(size):
            ctl.upsert("TwilioTrunk", body(i))
        ctl.start()
        key = ("ns", "asterisk-0")
        while not (
            (worker := ctl.pods.workers.get(key))
            and worker.state.delivered_hash == worker.state.desired_hash is not None
            and not ctl.dirty
            and len(kube.statuses) == size
        ):
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)  # the grace's deferred pass
        gc.callbacks.append(count)
        took = []
        for change in range(changes):
            generation = 2 + change
            started = time.perf_counter()
            ctl.upsert("TwilioTrunk", body(7, generation, "alaw" if change % 2 == 0 else "ulaw"))
            while True:
                await asyncio.sleep(0.001)
                status = kube.statuses.get("t00007") or {}
                if status.get("observedGeneration") == generation and status["conditions"][0][
                    "status"
                ] == ("True"):
                    break
            took.append(time.perf_counter() - started)
            await asyncio.sleep(1.2)  # past the grace's deferred pass
        gc.callbacks.remove(count)
        worker = ctl.pods.workers[key]
        started = time.perf_counter()
        channel.pack(files := files_of(worker.owners))
        files_hash(files)
        floor = time.perf_counter() - started
        await ctl.stop()
        return {
            "p50": percentile(took, 50),
            "max": max(took),
            "floor": floor,
            "full collections per change": full_collections[0] / changes,
        }

    return asyncio.run(run())


def in_process(source: Path, size: int, changes: int) -> dict[str, Any]:
    """`measure` in a new process with the trunk_operator package of `source`."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(source), str(ROOT), str(ROOT / "bench")])
    )
    out = subprocess.run(
        [sys.executable, __file__, str(size), str(changes)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def run(args: argparse.Namespace, sec: Any) -> None:
    from scale import baseline_source

    for size in [int(s) for s in args.work_sizes.split(",") if s]:
        new = in_process(ROOT / "operator", size, args.work_changes)
        old = in_process(baseline_source(BASELINE_COMMIT), size, args.work_changes)
        what = f"{size} trunks"
        sec.add(
            f"{what}: one change -> Ready p50, this checkout",
            new["p50"],
            "s",
            note=f"{new['p50'] / new['floor']:.1f}x the floor, max {new['max']:.2f} s",
        )
        sec.add(
            f"{what}: one change -> Ready p50, at {BASELINE_COMMIT[:7]}",
            old["p50"],
            "s",
            note=f"{old['p50'] / new['p50']:.1f}x this checkout's, max {old['max']:.2f} s",
        )
        sec.add(f"{what}: floor: join, hash and pack the pod's files", new["floor"], "s")
        sec.add(
            f"{what}: full GC collections per change, this checkout / at {BASELINE_COMMIT[:7]}",
            new["full collections per change"],
            "",
            note=f"{old['full collections per change']:.2f} at {BASELINE_COMMIT[:7]}",
        )


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))))
