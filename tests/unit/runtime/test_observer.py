"""The observer (runtime.observer): what it reads of each pod over its rounds, and how it
shares a pod with deliveries (with a fake API; no cluster)."""

import asyncio
import threading
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.helpers import (
    FakeKube,
    GateKube,
    NoDelivery,
    plan_with_two_trunks,
    pod_body,
    trunk_body,
)
from trunk_operator.core import asterisk_output, verify
from trunk_operator.core.render import files_hash
from trunk_operator.pod import channel
from trunk_operator.pod.ari import ARI_CREDENTIALS_ANNOTATION
from trunk_operator.runtime import pod_workers
from trunk_operator.runtime.pod_workers import Pod, PodState, PodWorker

pytestmark = pytest.mark.usefixtures("delivering_written_at_once")


def test_the_observer_audits_every_endpoint_in_depth_over_the_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes = plan_with_two_trunks().outcomes
    worker = PodWorker(Pod("p", "u", {}, True, ""), PodState("p"))
    assert worker.audit_batch(outcomes) == ["A", "B"]  # all fit in one batch
    monkeypatch.setattr(pod_workers, "AUDIT_BATCH", 1)
    seen = []
    for _ in range(3):
        batch = worker.audit_batch(outcomes)
        seen += batch
        worker.audit_cursor += len(batch)
    assert seen == ["A", "B", "A"]


def test_the_observer_reads_a_slow_pod_at_most_a_tenth_of_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 trunks take Asterisk ~2.5 s to list: observed every 5 s, its CLI would be busy
    half the time. A pod whose read took `t` is left be for 9 t; a quick pod keeps the interval."""
    calls = {"big": 0, "small": 0}

    async def scenario() -> None:
        ctl = NoDelivery(FakeKube({"username": "u", "password": "p"}))
        ctl.pods.settings = replace(ctl.pods.settings, observe_interval=0.01)

        async def observe(namespace: str, worker: PodWorker) -> float:
            calls[worker.pod.name] += 1
            took = 0.04 if worker.pod.name == "big" else 0.0
            await asyncio.sleep(took)
            return took

        monkeypatch.setattr(ctl.observer, "observe", observe)
        for name in calls:
            worker = PodWorker(Pod(name, name, {}, True, ""), PodState(name))
            ctl.pods.workers[("ns", name)] = worker
        loop = asyncio.create_task(ctl.observer.loop())
        await asyncio.sleep(1.0)
        loop.cancel()

    asyncio.run(scenario())
    assert calls["big"] >= 1
    # Without the limit both are read every round (about 20 times here).
    assert calls["small"] >= 3 * calls["big"], calls


@pytest.mark.parametrize("over_ari", [False, True])
def test_a_delivery_waits_for_an_observation_only_over_ari(
    monkeypatch: pytest.MonkeyPatch, over_ari: bool
) -> None:
    """Reading 10,000 trunks on a busy node takes 30 s and more: a change must not wait for
    it, and what it read before the change must not become the pod's observation. Over ARI
    it waits: a PJSIP CLI read that prints an endpoint a push replaces can find it between its
    two states and crash Asterisk 22 (pod/scripts/ari-push.pl)."""
    reading, release = threading.Event(), threading.Event()
    order: list[str] = []
    fresh = verify.Observation(asterisk_output.Listing(), "fresh")

    def slow_observe(*args: Any) -> verify.Observation:
        reading.set()
        release.wait(10)
        order.append("read")
        return verify.Observation(asterisk_output.Listing(), "stale")

    def delivered(pod_exec: Any, files: Any, *args: Any) -> channel.DeliveryResult:
        order.append("push")
        return channel.DeliveryResult(True, files_hash(files), [], fresh)

    monkeypatch.setattr(channel, "observe", slow_observe)
    monkeypatch.setattr(channel, "deliver", delivered)

    async def scenario() -> None:
        ctl = NoDelivery(GateKube())
        body = pod_body("asterisk-0")
        if over_ari:
            body["metadata"]["annotations"] = {ARI_CREDENTIALS_ANNOTATION: "ari-user"}
        ctl.upsert_pod(body)
        ctl.upsert("TwilioTrunk", trunk_body("acme"))
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        worker.adoptable = False
        observing = asyncio.ensure_future(ctl.observer.observe("ns", worker))
        await asyncio.to_thread(reading.wait, 5)

        async def deliver() -> None:
            async with worker.busy:  # as the worker's loop does
                await ctl.pods.deliver_once("ns", worker)

        delivering = asyncio.ensure_future(deliver())
        await asyncio.sleep(0.3)
        assert order == ([] if over_ari else ["push"])
        release.set()
        await asyncio.wait_for(asyncio.gather(observing, delivering), 5)
        assert order == (["read", "push"] if over_ari else ["push", "read"])
        assert worker.state.observation is fresh  # not the read from before the change
        await ctl.stop()

    asyncio.run(scenario())
