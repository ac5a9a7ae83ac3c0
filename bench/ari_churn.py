"""Measurement 10: Asterisk over ARI, one endpoint replaced again and again beside PJSIP reads.

Asterisk 22 crashes when a PJSIP CLI read prints an endpoint without its Stasis state
(asterisk/asterisk#2172). The pusher of BASELINE_COMMIT deleted and re-created a changed endpoint at
once, and res_pjsip then shut the new endpoint's state down with the old one's; this
checkout's steps wait for Asterisk's tasks of the deletion first (pod/ari_plan.py). The
baseline is those steps without the wait (`replaced_at_once`), run by this checkout's executor.

One podman Asterisk (the examples' image, ARI, sorcery `memory` wizards) gets TRUNKS trunks
with the operator's own delivery (`channel.deliver`), then one trunk's codecs change CHANGES
times, each change one delivery. Beside them another thread runs `pjsip show endpoint` and
`pjsip list endpoints` every 0.05-0.4 s, never during a delivery (as the operator's observer).
Each gets its own Asterisk; the figure is the changes it took until Asterisk died.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from rig import HOST, trunk_spec

from testbed.asterisk import AsteriskContainer
from tests.cases import Case
from tests.e2e.conftest import podman_exec
from trunk_operator.core.models import TwilioTrunkSpec
from trunk_operator.pod import ari_plan, channel
from trunk_operator.pod import delivery as delivery_module
from trunk_operator.pod.ari import AriAccess
from trunk_operator.pod.ari_plan import Key, Op, PjsipObject
from trunk_operator.pod.delivery import AriDelivery, Delivery

BASELINE_COMMIT = "78ec7a94472a26421ca3a2dee5aa2eec0a33efae"  # DELETE, then PUT at once
USER, PASSWORD = "trunkop", "churn-pass"
CODECS = (["alaw"], ["ulaw", "alaw"], ["ulaw"])


@dataclass
class Churn:
    changes: int  # deliveries that returned before Asterisk died (all of them: it did not)
    died: bool
    reads: int
    seconds: float


def _case(trunks: int, codecs: list[str]) -> Case:
    specs = {
        # Qualified every 30 s, the default (OPTIONS to a host that does not answer).
        f"c{i:05d}": TwilioTrunkSpec.model_validate(
            {**trunk_spec(i, f"c{i:05d}", "sip"), "qualifyFrequencySeconds": 30}
        )
        for i in range(trunks)
    }
    specs["c00000"] = specs["c00000"].model_copy(update={"codecs": codecs})
    return Case(specs)


def replaced_at_once(wanted: Mapping[Key, PjsipObject], had: Mapping[Key, str]) -> tuple[Op, ...]:
    """The steps as 78ec7a9's pusher took them: a changed endpoint DELETEd and PUT at once."""
    steps = ari_plan.push_ops(wanted, had)
    return tuple(
        replace(op, verb="replace") if op.verb == "refill" else op
        for op in steps
        if op.verb not in ("clear", "await")
    )


@contextlib.contextmanager
def steps(baseline: bool) -> Iterator[None]:
    """Deliveries made meanwhile take the baseline's steps, or this checkout's."""
    mine = delivery_module.push_ops
    if baseline:
        delivery_module.push_ops = replaced_at_once
    try:
        yield
    finally:
        delivery_module.push_ops = mine


def churn(trunks: int, changes: int, bind_ip: str) -> Churn:
    pbx = AsteriskContainer("churn", bind_ip, {HOST: "127.0.0.32"}, ari=(USER, PASSWORD))
    pbx.start()
    stop, lock = threading.Event(), threading.Lock()
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            command = random.choice(
                ("pjsip show endpoint C00000", "pjsip show endpoint C00001", "pjsip list endpoints")
            )
            with lock:
                subprocess.run(
                    ["podman", "exec", pbx.name, "asterisk", "-rx", command],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
            reads += 1
            time.sleep(random.uniform(0.05, 0.4))

    thread = threading.Thread(target=reader, daemon=True)
    try:
        pod_exec = podman_exec(pbx.name)
        delivery: Delivery = AriDelivery(AriAccess(pbx.ari_url, USER, PASSWORD))
        case = _case(trunks, CODECS[-1])
        files = case.pod_files()
        result = channel.deliver(pod_exec, files, case.expected(files), 600, delivery=delivery)
        assert result.ok
        delivery = result.delivery
        thread.start()
        started, done = time.monotonic(), 0
        for change in range(changes):
            case = _case(trunks, CODECS[change % len(CODECS)])
            files = case.pod_files()
            # An exec the container died under fails: told below.
            with lock, contextlib.suppress(channel.ExecError):
                result = channel.deliver(
                    pod_exec, files, case.expected(files), 120, delivery=delivery
                )
                delivery = result.delivery
            if not pbx.running():
                break
            done += 1
            time.sleep(0.1)  # the reads' turn
        return Churn(done, not pbx.running(), reads, time.monotonic() - started)
    finally:
        stop.set()
        thread.join(timeout=70)
        pbx.stop()


def run(args: Any, section: Any) -> None:
    """Fill `section` (bench/run.py Section): the baseline's steps, then this checkout's."""
    results = {}
    for label, baseline, bind_ip in (
        ("before (replaced at once)", True, "127.0.10.71"),
        ("this checkout", False, "127.0.10.72"),
    ):
        with steps(baseline):
            results[label] = churn(args.churn_trunks, args.churn_changes, bind_ip)
    for label, result in results.items():
        section.add(
            f"{label}: changes until Asterisk died",
            result.changes,
            "",
            note=("died" if result.died else f"did not die in {args.churn_changes}")
            + f", {result.reads} reads beside, {result.seconds:.0f} s",
        )
