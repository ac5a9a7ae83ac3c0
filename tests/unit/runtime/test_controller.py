"""The controller's decisions: what each pod must get, what Asterisk must show, and what the
status may claim while plans and deliveries interleave (with a fake API; no cluster)."""

import asyncio
import logging
import os
import threading
from typing import Any

import pytest

from tests.unit.helpers import (
    FakeKube,
    GateKube,
    NoDelivery,
    one_pod,
    pod_body,
    ready,
    trunk_body,
)
from trunk_operator.core import asterisk_output, verify
from trunk_operator.core.render import files_hash
from trunk_operator.pod import channel
from trunk_operator.runtime import controller
from trunk_operator.runtime.controller import Controller

pytestmark = pytest.mark.usefixtures("delivering_written_at_once")


def test_status_never_claims_a_generation_no_pod_serves() -> None:
    """The bug of issue 7: a status written between a spec change and its delivery (by the
    observer or another pod's delivery) reported Ready for the new generation."""

    async def scenario() -> None:
        kube = FakeKube({"username": "u", "password": "p"})
        controller = NoDelivery(kube)
        controller.upsert_pod(pod_body("asterisk-0"))
        controller.upsert("TwilioTrunk", trunk_body("acme", 1, codecs=["alaw"]))
        await controller.reconcile_namespace("ns")
        worker = controller.pods.workers[("ns", "asterisk-0")]
        worker.set_delivered(dict(worker.owners))  # generation 1 delivered and verified
        worker.state.delivered_hash = worker.state.desired_hash
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"]) == ("True", "Ready", 1)

        # Generation 2 seen, not planned yet: the status still speaks of generation 1.
        controller.upsert("TwilioTrunk", trunk_body("acme", 2, codecs=["ulaw"]))
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"])[2] == 1

        # Generation 2 planned, its rendered state being written: no status may be Ready 2.
        writing, release = threading.Event(), threading.Event()

        def pause_write() -> None:
            writing.set()
            release.wait(5)

        kube.during_write = pause_write
        plan = asyncio.create_task(controller.reconcile_namespace("ns"))
        await asyncio.to_thread(writing.wait, 5)
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"]) != ("True", "Ready", 2)
        release.set()
        await plan
        assert ready(kube.statuses["acme"]) == ("False", "Delivering", 2)

        worker.set_delivered(dict(worker.owners))
        worker.state.delivered_hash = worker.state.desired_hash
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"]) == ("True", "Ready", 2)
        await controller.stop()

    asyncio.run(scenario())


def test_a_spec_changed_back_is_not_ready_while_the_pod_is_given_the_version_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Codecs alaw (generation 1), ulaw (2), alaw again (3) while 2 is being delivered:
    generation 3's files are those the pod had, but Asterisk is taking generation 2's (the
    Ready invariant test's violation, CI 2026-11-28)."""
    pushing, release = threading.Event(), threading.Event()

    def slow_deliver(pod_exec: Any, files: Any, *args: Any) -> channel.DeliveryResult:
        pushing.set()
        release.wait(5)
        observation = verify.Observation(asterisk_output.Listing())
        return channel.DeliveryResult(True, files_hash(files), [], observation)

    monkeypatch.setattr(channel, "deliver", slow_deliver)

    async def scenario() -> None:
        kube = GateKube()
        controller = NoDelivery(kube)
        controller.upsert_pod(pod_body("asterisk-0"))
        controller.upsert("TwilioTrunk", trunk_body("acme", 1, codecs=["alaw"]))
        await controller.reconcile_namespace("ns")
        worker = controller.pods.workers[("ns", "asterisk-0")]
        worker.adoptable = False
        worker.set_delivered(dict(worker.owners))
        worker.state.delivered_hash = worker.state.desired_hash
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"]) == ("True", "Ready", 1)

        controller.upsert("TwilioTrunk", trunk_body("acme", 2, codecs=["ulaw"]))
        await controller.reconcile_namespace("ns")
        delivering = asyncio.create_task(controller.pods.deliver_once("ns", worker))
        await asyncio.to_thread(pushing.wait, 5)
        controller.upsert("TwilioTrunk", trunk_body("acme", 3, codecs=["alaw"]))
        await controller.reconcile_namespace("ns")
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"]) != ("True", "Ready", 3)
        release.set()
        await delivering  # generation 2 in the pod: 3 is delivered next
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"]) == ("False", "Delivering", 3)
        await controller.stop()

    asyncio.run(scenario())


def test_a_secret_event_during_the_read_neither_loses_nor_caches_it() -> None:
    async def scenario() -> None:
        kube = FakeKube({"username": "u", "password": "p"})
        controller = Controller(kube)  # type: ignore[arg-type]
        controller.upsert("TwilioTrunk", trunk_body("acme"))
        kube.during_read = lambda: controller.secret_changed("ns", "sip")  # rotation mid-read
        await controller.reconcile_namespace("ns")
        assert not controller.store.plans["ns"].outcomes["TwilioTrunk/acme"].problems
        assert ("ns", "sip") not in controller.secrets  # may be stale: read again next time
        kube.during_read = lambda: None
        await controller.reconcile_namespace("ns")
        await controller.reconcile_namespace("ns")
        assert kube.reads == 2  # cached after a clean read
        ready = kube.statuses["acme"]["conditions"][0]
        assert (ready["type"], ready["reason"]) == ("Ready", "NoAsteriskPods")
        assert kube.finalizers["acme"] == ["trunks.asterisk-operator.dev/delivered"]

    asyncio.run(scenario())


def test_each_transition_posts_one_event_when_watch_echoes_race_the_write() -> None:
    """Our own status write comes back as a watch event, which may be handled while the
    write is still in flight; the next transition must still be compared with what we wrote
    (it was compared with the status from before, and ContextMissing was announced again)."""
    from trunk_operator.core.asterisk_output import Listing
    from trunk_operator.core.verify import Observation

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        kube = FakeKube({"username": "u", "password": "p"})
        controller = NoDelivery(kube)
        controller.upsert_pod(pod_body("asterisk-0"))
        controller.upsert("TwilioTrunk", trunk_body("acme"))
        await controller.reconcile_namespace("ns")
        assert ready(kube.statuses["acme"])[:2] == ("False", "Delivering")

        def echo(name: str) -> None:  # the watch event of this very write, handled meanwhile
            handled = threading.Event()
            body = {**trunk_body(name), "status": {}}

            def upsert(body: dict[str, Any] = body) -> None:
                controller.upsert("TwilioTrunk", body)
                handled.set()

            loop.call_soon_threadsafe(upsert)
            handled.wait(5)

        kube.during_status = echo
        worker = controller.pods.workers[("ns", "asterisk-0")]
        # The inbound context was looked for and is missing.
        worker.state.observation = Observation(
            Listing(), contexts_checked=frozenset({"from-twilio"})
        )
        await controller.write_statuses("ns")
        worker.set_delivered(dict(worker.owners))
        worker.state.delivered_hash = worker.state.desired_hash
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"])[:2] == ("True", "Ready")
        assert kube.events == ["ContextMissing", "Ready"]
        await controller.stop()

    asyncio.run(scenario())


def test_health_fails_when_a_loop_died_or_a_plan_is_stuck() -> None:
    import time

    from trunk_operator.runtime import controller as controller_mod

    async def scenario() -> None:
        controller = NoDelivery(FakeKube({"username": "u", "password": "p"}))
        assert controller.health() == {}

        async def crash() -> None:
            raise ValueError("boom")

        dead = asyncio.create_task(crash(), name="plan")
        await asyncio.gather(dead, return_exceptions=True)
        controller.tasks = [dead]
        with pytest.raises(RuntimeError, match="plan loop ended"):
            controller.health()
        controller.tasks = []
        controller.planning_since = time.monotonic() - controller_mod.STUCK_PLAN_SECONDS - 1
        with pytest.raises(RuntimeError, match="plan has been running"):
            controller.health()

    asyncio.run(scenario())


def test_a_cr_whose_rendered_state_is_refused_does_not_hold_back_the_others() -> None:
    async def scenario() -> None:
        kube = FakeKube({"username": "u", "password": "p"})
        kube.refuse_writes = {"bad"}
        controller = NoDelivery(kube)
        controller.upsert_pod(pod_body("asterisk-0"))
        for name, sid in (("good", "a"), ("bad", "b")):
            spec: dict[str, Any] = {
                "inbound": {"accountSid": "AC" + sid * 32},
                "outbound": {"context": f"to-{name}"},
            }
            controller.upsert("TwilioTrunk", trunk_body(name, **spec))
        await controller.reconcile_namespace("ns")  # does not raise
        worker = controller.pods.workers[("ns", "asterisk-0")]
        assert set(worker.owners) == {"TwilioTrunk/good"}
        assert ready(kube.statuses["good"])[:2] == ("False", "Delivering")
        assert ready(kube.statuses["bad"])[:2] == ("False", "RenderedStateNotStored")
        assert "API error 422" in kube.statuses["bad"]["conditions"][0]["message"]

        kube.refuse_writes = set()  # the cause went away: the retry stores it
        await controller.reconcile_namespace("ns")
        assert set(worker.owners) == {"TwilioTrunk/good", "TwilioTrunk/bad"}
        await controller.stop()

    asyncio.run(scenario())


def test_liveness_fails_when_the_watches_missed_a_change() -> None:
    ctl = Controller(FakeKube({"username": "u", "password": "p"}))  # type: ignore[arg-type]
    assert ctl.health() == {}
    ctl.watch_audit.check({("ns", "TwilioTrunk/a"): "2"}, {("ns", "TwilioTrunk/a"): "1"})
    ctl.watch_audit.check({("ns", "TwilioTrunk/a"): "3"}, {("ns", "TwilioTrunk/a"): "1"})
    with pytest.raises(RuntimeError, match="watches missed 1 change"):
        ctl.health()


def test_hanging_deliveries_leave_the_default_executor_to_lease_renewals() -> None:
    """Lease renewals (leader.py) and Kopf's probes run on asyncio's default executor; the
    controller's blocking calls must not take all of its threads, whatever their number."""

    async def scenario() -> None:
        ctl = Controller(FakeKube({"username": "u", "password": "p"}))  # type: ignore[arg-type]
        release = threading.Event()
        default_threads = min(32, (os.cpu_count() or 1) + 4)
        hanging = [
            asyncio.ensure_future(ctl.calls.run(release.wait, 30))
            for _ in range(default_threads + 2)
        ]
        await asyncio.sleep(0.1)
        try:
            renewed = await asyncio.wait_for(asyncio.to_thread(lambda: "renewed"), 2)
            assert renewed == "renewed"
        finally:
            release.set()
            await asyncio.gather(*hanging)

    asyncio.run(scenario())


def test_a_slow_reconcile_is_logged_with_where_its_time_went(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At 10,000 CRs a reconcile waits seconds for status writes and finalizer PATCHes: the
    log says which, so a slow namespace can be read from the operator's log."""
    monkeypatch.setattr(controller, "SLOW_RECONCILE", 0.0)

    async def scenario() -> None:
        _, ctl = one_pod()
        ctl.upsert("TwilioTrunk", trunk_body("acme"))
        with caplog.at_level(logging.INFO, logger="trunk_operator.runtime.controller"):
            await ctl.reconcile_namespace("ns")
        await ctl.stop()

    asyncio.run(scenario())
    [line] = [r.getMessage() for r in caplog.records if "reconciled in" in r.getMessage()]
    assert line.startswith("ns: 1 resources reconciled in ")
    for phase in ("secrets", "plan", "rendered state", "statuses", "finalizers"):
        assert f"{phase} " in line
