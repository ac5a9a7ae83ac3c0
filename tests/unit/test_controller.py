"""The controller's decisions: what each pod must get, what Asterisk must show, and what the
status may claim while plans and deliveries interleave (with a fake API; no cluster)."""

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from trunk_operator.core import asterisk_output, verify
from trunk_operator.core.desired import (
    expected_for,
    files_of,
    probe_for,
    reloads_for,
    user_contexts_of,
)
from trunk_operator.core.plan import Inputs, Resource, plan_namespace
from trunk_operator.core.render import files_hash
from trunk_operator.core.status import PodDelivery
from trunk_operator.kube.api import SecretRead
from trunk_operator.kube.client import KubeError
from trunk_operator.pod import channel
from trunk_operator.pod.ari import ARI_CREDENTIALS_ANNOTATION
from trunk_operator.runtime import controller, pod_workers, status_writer
from trunk_operator.runtime.controller import Controller
from trunk_operator.runtime.pod_workers import Pod, PodWorker


@pytest.fixture(autouse=True)
def delivering_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests look at every state a status goes through (the grace has its own test)."""
    monkeypatch.setattr(status_writer, "DELIVERING_GRACE", 0.0)


def plan_with_two_trunks():
    def trunk(name: str, sid: str) -> Resource:
        spec = {
            "terminationHost": f"{name}.pstn.twilio.com",
            "credentials": {"secretName": "sip"},
            "inbound": {"accountSid": "AC" + sid * 32},
            "outbound": {"context": f"to-{name}"},
        }
        return Resource("TwilioTrunk", name, "2026-01-01T00:00:00Z", spec)

    segment = Resource(
        "DIDSegment",
        "s",
        "2026-01-02T00:00:00Z",
        {"trunkRef": {"name": "b"}, "numbers": ["+15550000123"]},
    )
    inputs = Inputs(
        trunks=[trunk("a", "a"), trunk("b", "b")],
        segments=[segment],
        secrets={"sip": {"username": "u", "password": "p"}},
    )
    return plan_namespace(inputs)


def test_expected_objects_carry_their_owner() -> None:
    expected = expected_for(plan_with_two_trunks().outcomes)
    assert [(e.owner, e.name, e.auth) for e in expected.endpoints] == [
        ("TwilioTrunk/a", "A", "A-auth"),
        ("TwilioTrunk/b", "B", "B-auth"),
    ]
    assert expected.transports == {"transport-udp": ("TwilioTrunk/a", "TwilioTrunk/b")}
    assert expected.contexts["trunkop-in-B-123"] == "DIDSegment/s"
    assert expected.contexts["to-a"] == "TwilioTrunk/a"


def test_files_of_joins_every_cr_into_one_file_per_directory() -> None:
    outcomes = plan_with_two_trunks().outcomes
    files = files_of(outcomes)
    # One file per directory, every CR's files in it under a comment naming them.
    assert set(files) == {"pjsip.d/trunk-operator.conf", "extensions.d/trunk-operator.conf"}
    for ref, outcome in outcomes.items():
        for path, text in (outcome.public | outcome.secret).items():
            part = f"; ==== {ref}: {path}\n{text}"
            assert part in files[path.split("/")[0] + "/trunk-operator.conf"]
    assert "[A-auth]" in files["pjsip.d/trunk-operator.conf"]


class FakeKube:
    """Records the controller's API calls; no cluster. (The real calls are exercised by the
    integration tier.)"""

    def __init__(self, secret: dict[str, str]) -> None:
        self.secret = secret
        self.reads = 0
        self.during_read = lambda: None
        self.during_write = lambda: None
        self.statuses: dict[str, dict] = {}
        self.finalizers: dict[str, list[str]] = {}
        self.events: list[str] = []
        self.refuse_writes: set[str] = set()
        self.during_status = lambda name: None

    def read_secret(self, namespace: str, name: str) -> SecretRead | None:
        self.reads += 1
        self.during_read()
        return SecretRead(dict(self.secret), str(self.reads))

    def write_rendered(self, owner, public, secret, written=None) -> None:
        self.during_write()
        if owner.name in self.refuse_writes:
            raise KubeError("POST /api/v1/namespaces/ns/configmaps: API error 422", 422)

    def patch_status(self, plural: str, namespace: str, name: str, status: dict) -> None:
        self.statuses[name] = status
        self.during_status(name)

    def event(self, owner: object, event_type: str, reason: str, message: str) -> None:
        self.events.append(reason)

    def set_finalizers(self, plural: str, namespace: str, name: str, finalizers, rv) -> None:
        self.finalizers[name] = finalizers


def trunk_body(name: str, generation: int = 1, **spec: Any) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name, "generation": generation},
        "spec": {
            "terminationHost": f"{name}.pstn.twilio.com",
            "credentials": {"secretName": "sip"},
            **spec,
        },
    }


class NoDelivery(Controller):
    """Pod workers that never run: the test plays the deliveries itself."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)

        async def idle(namespace: str, worker: PodWorker) -> None:
            await asyncio.Event().wait()

        self.pods._deliver_loop = idle  # type: ignore[method-assign]


def pod_body(name: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": {"app": "asterisk"}},
        "spec": {"containers": [{"name": "asterisk"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "asterisk", "ready": True, "containerID": f"containerd://{name}"}
            ],
        },
    }


def ready(status: dict) -> tuple[str, str, int]:
    condition = status["conditions"][0]
    return condition["status"], condition["reason"], status["observedGeneration"]


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
        assert not controller.plans["ns"].outcomes["TwilioTrunk/acme"].problems
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


def test_a_pod_being_deleted_gets_nothing_new_and_holds_no_ready() -> None:
    async def scenario() -> None:
        kube = FakeKube({"username": "u", "password": "p"})
        controller = NoDelivery(kube)
        for name in ("asterisk-0", "asterisk-1"):
            controller.upsert_pod(pod_body(name))
        controller.upsert("TwilioTrunk", trunk_body("acme"))
        await controller.reconcile_namespace("ns")
        staying = controller.pods.workers[("ns", "asterisk-1")]
        staying.set_delivered(dict(staying.owners))
        staying.state.delivered_hash = staying.state.desired_hash
        await controller.write_statuses("ns")
        assert ready(kube.statuses["acme"])[:2] == ("False", "Delivering")  # asterisk-0 pending

        leaving = pod_body("asterisk-0")
        leaving["metadata"]["deletionTimestamp"] = "2026-11-27T00:00:00Z"
        controller.upsert_pod(leaving)
        await controller.reconcile_namespace("ns")
        assert ("ns", "asterisk-0") not in controller.pods.workers
        status = kube.statuses["acme"]
        assert ready(status)[:2] == ("True", "Ready")
        assert [p["pod"] for p in status["pods"]] == ["asterisk-1"]
        assert kube.events.count("NoAsteriskPods") == 0
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


def test_only_the_module_whose_file_changed_is_reloaded() -> None:
    outcomes = plan_with_two_trunks().outcomes
    files = files_of(outcomes)
    assert reloads_for(files, files) == set()
    assert reloads_for(files, None) == {"pjsip.d", "extensions.d"}  # the pod's state is unknown
    rotated = dict(outcomes)
    a = rotated["TwilioTrunk/a"]
    rotated["TwilioTrunk/a"] = replace(
        a, secret={p: t + "; rotated\n" for p, t in a.secret.items()}
    )
    assert reloads_for(files_of(rotated), files) == {"pjsip.d"}
    without_segment = {r: o for r, o in outcomes.items() if r != "DIDSegment/s"}
    assert reloads_for(files_of(without_segment), files) == {"extensions.d"}


def test_a_delivery_probes_in_depth_only_what_it_changes() -> None:
    outcomes = plan_with_two_trunks().outcomes
    everything = probe_for(outcomes, {})
    assert everything.details == {"A", "B"}
    assert {"trunkop-in-A", "trunkop-in-B", "from-twilio"} <= everything.contexts
    one_changed = {r: o for r, o in outcomes.items() if r != "TwilioTrunk/a"}
    probe = probe_for(outcomes, one_changed)
    assert probe.details == {"A"}
    assert "trunkop-in-A" in probe.contexts and "trunkop-in-B" not in probe.contexts
    assert "from-twilio" in probe.contexts  # user contexts: always (status reports them)
    assert probe_for(outcomes, outcomes).details == frozenset()


def test_the_observer_audits_every_endpoint_in_depth_over_the_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes = plan_with_two_trunks().outcomes
    worker = PodWorker(Pod("p", "u", {}, True, ""), PodDelivery("p"))
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
            worker = PodWorker(Pod(name, name, {}, True, ""), PodDelivery(name))
            ctl.pods.workers[("ns", name)] = worker
        loop = asyncio.create_task(ctl.observer.loop())
        await asyncio.sleep(1.0)
        loop.cancel()

    asyncio.run(scenario())
    assert calls["big"] >= 1
    # Without the limit both are read every round (about 20 times here).
    assert calls["small"] >= 3 * calls["big"], calls


def test_a_pod_keeps_when_each_cr_arrived_across_deliveries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes = plan_with_two_trunks().outcomes
    worker = PodWorker(Pod("p", "u", {}, True, ""), PodDelivery("p"))
    monkeypatch.setattr(pod_workers, "timestamp", lambda: "t1")
    worker.set_delivered(dict(outcomes))
    changed = dict(outcomes)
    a = changed["TwilioTrunk/a"]
    changed["TwilioTrunk/a"] = replace(a, public={p: t + ";\n" for p, t in a.public.items()})
    monkeypatch.setattr(pod_workers, "timestamp", lambda: "t2")
    worker.set_delivered(changed)
    assert worker.state.delivered_at == {
        "TwilioTrunk/a": "t2",
        "TwilioTrunk/b": "t1",
        "DIDSegment/s": "t1",
    }


def test_liveness_fails_when_the_watches_missed_a_change() -> None:
    ctl = Controller(FakeKube({"username": "u", "password": "p"}))  # type: ignore[arg-type]
    assert ctl.health() == {}
    ctl.watch_audit.check({("ns", "TwilioTrunk/a"): "2"}, {("ns", "TwilioTrunk/a"): "1"})
    ctl.watch_audit.check({("ns", "TwilioTrunk/a"): "3"}, {("ns", "TwilioTrunk/a"): "1"})
    with pytest.raises(RuntimeError, match="watches missed 1 change"):
        ctl.health()


class GateKube(FakeKube):
    """Also records the pods' readiness-gate PATCHes."""

    def __init__(self) -> None:
        super().__init__({"username": "u", "password": "p"})
        self.gates: list[tuple[str, str]] = []

    def set_pod_condition(self, namespace: str, pod: str, condition: dict[str, Any]) -> None:
        self.gates.append((pod, condition["status"]))

    def pod_exec(self, namespace: str, pod: str, container: str) -> object:
        return object()


def test_the_readiness_gate_is_written_when_it_changes_and_closed_on_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delivered_files = []

    def delivered(pod_exec, files, *args: Any) -> channel.DeliveryResult:
        delivered_files.append(files)
        return channel.DeliveryResult(True, files_hash(files), [], None)

    def serving(pod_exec, expected, timeout, probe, pushed) -> verify.Observation:
        return verify.Observation(asterisk_output.Listing(), files_hash(worker_files[0]))

    monkeypatch.setattr(channel, "deliver", delivered)
    monkeypatch.setattr(channel, "observe", serving)
    monkeypatch.setattr(pod_workers, "drifted", lambda files, observation: False)
    monkeypatch.setattr(pod_workers, "verify", lambda expected, observation, *more: [])
    worker_files: list[dict[str, str]] = []

    async def scenario() -> None:
        kube = GateKube()
        ctl = NoDelivery(kube)
        body = pod_body("asterisk-0")
        body["status"]["containerStatuses"][0]["containerID"] = "containerd://one"
        ctl.upsert_pod(body)
        ctl.upsert("TwilioTrunk", trunk_body("acme"))
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        worker.adoptable = False
        worker_files.append(worker.files)
        for _ in range(3):
            worker.state.delivered_hash = None
            await ctl.pods.deliver_once("ns", worker)
        assert kube.gates == [("asterisk-0", "True")]  # one PATCH, not one per delivery

        # The pod event that shows the condition; then the container restarts.
        body["status"]["conditions"] = [
            {"type": ctl.settings.readiness_condition, "status": "True"}
        ]
        ctl.upsert_pod(body)
        restarted = pod_body("asterisk-0")
        restarted["status"]["conditions"] = body["status"]["conditions"]
        restarted["status"]["containerStatuses"][0].update(
            containerID="containerd://two", restartCount=1, ready=False
        )
        # Not ready: its worker goes at once, without a plan of the namespace (which waits
        # for the status writes of the one before: seconds with 1,000 CRs).
        ctl.upsert_pod(restarted)
        await asyncio.sleep(0.1)
        assert ("ns", "asterisk-0") not in ctl.pods.workers
        assert kube.gates[1:] == [("asterisk-0", "False")]  # at once, while it is not ready
        restarted["status"]["containerStatuses"][0]["ready"] = True
        ctl.upsert_pod(restarted)  # ready: a worker at once, with the last assignment's CRs
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        assert set(worker.owners) == {"TwilioTrunk/acme"}
        deliveries = len(delivered_files)
        await ctl.pods.deliver_once("ns", worker)  # the new container kept the files: adopted
        assert len(delivered_files) == deliveries and worker.state.delivered_hash
        assert kube.gates[1:] == [("asterisk-0", "False"), ("asterisk-0", "True")]
        await ctl.stop()

    asyncio.run(scenario())


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


@pytest.mark.parametrize("over_ari", [False, True])
def test_a_delivery_waits_for_an_observation_only_over_ari(
    monkeypatch: pytest.MonkeyPatch, over_ari: bool
) -> None:
    """Reading 10,000 trunks on a busy node takes 30 s and more: a change must not wait for
    it, and what it read before the change must not become the pod's observation. Over ARI
    it waits: a PJSIP CLI read that prints an endpoint a push replaces can find it between its
    two states and crash Asterisk 22 (pod_scripts/ari-push.pl)."""
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


def test_a_set_asterisk_refused_part_of_is_tried_again_with_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The others go ahead at once; the refused CR is tried again later (a refusal can be
    Asterisk's passing state), less and less often, and at once after a container restart."""
    refusing = {"TwilioTrunk/bad"}
    delivered: list[list[str]] = []

    def deliver(pod_exec: Any, files: Any, expected: verify.Expected, *args: Any) -> Any:
        owners = sorted({e.owner for e in expected.endpoints})
        delivered.append(owners)
        if refused := [o for o in owners if o in refusing]:
            problems = [verify.Mismatch((o,), "endpoint is not loaded") for o in refused]
            return channel.DeliveryResult(False, files_hash(files), problems, None, True)
        observation = verify.Observation(asterisk_output.Listing())
        return channel.DeliveryResult(True, files_hash(files), [], observation)

    monkeypatch.setattr(channel, "deliver", deliver)
    monkeypatch.setattr(pod_workers, "REFUSED_RETRY_FIRST", 0.3)
    both = ["TwilioTrunk/bad", "TwilioTrunk/good"]

    async def scenario() -> None:
        ctl = NoDelivery(GateKube())
        ctl.upsert_pod(pod_body("asterisk-0"))
        for name, sid in (("good", "a"), ("bad", "b")):
            spec: dict[str, Any] = {
                "inbound": {"accountSid": "AC" + sid * 32},
                "outbound": {"context": name},
            }
            ctl.upsert("TwilioTrunk", trunk_body(name, **spec))
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        worker.adoptable = False
        await ctl.pods.deliver_once("ns", worker)
        assert delivered == [both, ["TwilioTrunk/good"]]
        assert worker.settled_hash == worker.state.desired_hash
        worker.wake.clear()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(worker.wake.wait(), 2)  # tried again, by itself
        first = asyncio.get_running_loop().time() - started
        assert 0.25 < first < 1 and worker.settled_hash is None
        await ctl.pods.deliver_once("ns", worker)  # refused again: the next try waits longer
        worker.wake.clear()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(worker.wake.wait(), 2)
        assert asyncio.get_running_loop().time() - started > 0.5
        await ctl.pods.deliver_once("ns", worker)
        # A restarted container: everything, now.
        restarted = pod_body("asterisk-0")
        restarted["status"]["containerStatuses"][0]["restartCount"] = 1
        ctl.upsert_pod(restarted)
        assert worker.settled_hash is None and worker.wake.is_set()
        refusing.clear()  # what Asterisk refused, it now serves
        await ctl.pods.deliver_once("ns", worker)
        assert delivered[-1] == both and worker.state.problems == {}
        assert worker.retry_refused is not None
        await ctl.stop()

    asyncio.run(scenario())


def one_pod(during_status: Callable[[str], None] = lambda name: None) -> tuple[GateKube, Any]:
    """A GateKube calling `during_status` with the name of each status written, and a
    controller with one pod on it."""
    kube = GateKube()
    kube.during_status = during_status
    ctl = NoDelivery(kube)
    ctl.upsert_pod(pod_body("asterisk-0"))
    return kube, ctl


def recording(writes: list[str]) -> Any:
    """A controller with one pod whose status writes append their Ready reason to `writes`."""
    kube, ctl = one_pod(lambda name: writes.append(ready(kube.statuses[name])[1]))
    return ctl


def test_a_delivery_under_way_is_written_only_when_it_takes_longer_than_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A quick delivery writes its outcome only; a slow one shows Delivering meanwhile."""
    monkeypatch.setattr(status_writer, "DELIVERING_GRACE", 0.3)
    writes: list[str] = []

    async def scenario() -> None:
        ctl = recording(writes)
        kube = ctl.kube
        ctl.upsert("TwilioTrunk", trunk_body("acme"))
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        assert writes == []  # delivering, within the grace: nothing written yet
        worker.state.delivered = dict(worker.state.desired)  # delivered quickly
        worker.state.delivered_hash = worker.state.desired_hash
        worker.adoptable = False  # its first round done
        await ctl.write_statuses("ns")
        assert writes == ["Ready"]
        await asyncio.sleep(0.5)
        assert writes == ["Ready"]  # the deferred pass finds nothing to write

        ctl.upsert("TwilioTrunk", trunk_body("acme", generation=2, codecs=["alaw"]))
        await ctl.reconcile_namespace("ns")
        assert writes == ["Ready"]
        await asyncio.sleep(0.5)  # still delivering after the grace: now it is written
        assert writes == ["Ready", "Delivering"]
        assert kube.statuses["acme"]["observedGeneration"] == 2

        # A rotation is no new generation: its Ready as written would pass for the new
        # password's (`kubectl wait`), so Delivering is written at once.
        worker.state.delivered = dict(worker.state.desired)
        worker.state.delivered_hash = worker.state.desired_hash
        await ctl.write_statuses("ns")
        assert writes[-1] == "Ready"
        kube.secret = {"username": "u", "password": "rotated"}
        ctl.secret_changed("ns", "sip")
        await ctl.reconcile_namespace("ns")
        assert writes[-1] == "Delivering"
        await ctl.stop()

    asyncio.run(scenario())


def test_a_new_operator_writes_no_delivering_while_it_checks_what_the_pod_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator restarted (an upgrade, a new leader): the statuses say Ready, and the pod
    most likely still serves exactly that. Flipping every CR to Delivering until it is adopted
    would be 1,000 writes and 1,000 back, and a moment of false news."""
    monkeypatch.setattr(status_writer, "DELIVERING_GRACE", 0.3)
    writes: list[str] = []

    async def scenario() -> None:
        ctl = recording(writes)
        body = trunk_body("acme")
        body["status"] = {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
        }
        ctl.upsert("TwilioTrunk", body)
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        assert writes == []  # not checked yet, within the grace: the written Ready stands
        worker.set_delivered(dict(worker.owners))  # adopted
        worker.state.delivered_hash = worker.state.desired_hash
        worker.adoptable = False
        await ctl.write_statuses("ns")
        await asyncio.sleep(0.5)
        assert writes == ["Ready"]
        # Not adopted in time (the pod held something else): Delivering once the grace is up.
        ctl.pods.workers.clear()
        ctl.upsert_pod(pod_body("asterisk-1"))
        await ctl.reconcile_namespace("ns")
        assert writes == ["Ready"]
        await asyncio.sleep(0.5)
        assert writes == ["Ready", "Delivering"]
        await ctl.stop()

    asyncio.run(scenario())


def test_adoption_checks_the_contexts_of_its_audit_batch_and_refuses_a_dialplan_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted container that kept its files: not every context is read (a `dialplan
    show` of the whole set), those of the endpoints read in depth are; missing, no adoption."""
    probes: list[verify.Probe] = []
    delivered: list[str] = []
    dialplan_loaded = False

    def serving(pod_exec, expected, timeout, probe, pushed) -> verify.Observation:
        probes.append(probe)
        contexts = set(probe.contexts) if dialplan_loaded else set()
        return verify.Observation(
            asterisk_output.Listing(),
            files_hash(worker_files[0]),
            contexts=contexts,
            contexts_checked=probe.contexts,
        )

    def deliver(pod_exec, files, *args: Any) -> channel.DeliveryResult:
        delivered.append(files_hash(files))
        return channel.DeliveryResult(True, files_hash(files), [], None)

    monkeypatch.setattr(channel, "observe", serving)

    def contexts_only(expected: verify.Expected, observation: Any, *more: Any) -> Any:
        return verify.verify(verify.Expected(contexts=expected.contexts), observation)

    monkeypatch.setattr(channel, "deliver", deliver)
    monkeypatch.setattr(pod_workers, "drifted", lambda files, observation: False)
    # The endpoints listed: not this test's.
    monkeypatch.setattr(pod_workers, "verify", contexts_only)
    worker_files: list[dict[str, str]] = []

    async def scenario() -> None:
        nonlocal dialplan_loaded
        ctl = NoDelivery(GateKube())
        ctl.upsert_pod(pod_body("asterisk-0"))
        for i in range(20):
            spec: dict[str, Any] = {
                "inbound": {"accountSid": f"AC{i:032d}"},
                "outbound": {"context": f"to-{i}"},
            }
            ctl.upsert("TwilioTrunk", trunk_body(f"t{i:02d}", **spec))
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        worker_files.append(worker.files)
        await ctl.pods.deliver_once("ns", worker)  # adoptable: the dialplan is gone
        assert len(delivered) == 1
        batch = probes[-1].details
        assert len(batch) == pod_workers.AUDIT_BATCH
        expected = expected_for(worker.owners)
        owners = {e.owner for e in expected.endpoints if e.name in batch}
        every = expected.contexts
        assert probes[-1].contexts == {
            c for c, owner in every.items() if owner in owners
        } | user_contexts_of(worker.owners)
        assert len(probes[-1].contexts) < len(every)
        dialplan_loaded = True
        worker.adoptable, worker.state.delivered_hash = True, None
        await ctl.pods.deliver_once("ns", worker)
        assert len(delivered) == 1  # adopted
        await ctl.stop()

    asyncio.run(scenario())


def test_an_adopted_pod_keeps_the_load_times_its_statuses_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted container that kept its files is adopted: the CRs whose status still says
    the pod took their version (not flipped while it was down) are not written again (with
    1,000 trunks, 1,000 writes while kubelet takes the pod Ready)."""
    files_in_pod: list[str] = []

    def delivered(pod_exec, files, *args: Any) -> channel.DeliveryResult:
        files_in_pod[:] = [files_hash(files)]
        return channel.DeliveryResult(True, files_hash(files), [], None)

    def serving(pod_exec, expected, timeout, probe, pushed) -> verify.Observation:
        return verify.Observation(asterisk_output.Listing(), files_in_pod[0])

    monkeypatch.setattr(channel, "deliver", delivered)
    monkeypatch.setattr(channel, "observe", serving)
    monkeypatch.setattr(pod_workers, "drifted", lambda files, observation: False)
    monkeypatch.setattr(pod_workers, "verify", lambda expected, observation, *more: [])

    async def scenario() -> None:
        written: list[str] = []
        kube, ctl = one_pod(written.append)
        for i, name in enumerate(("acme", "beta")):
            sid = f"AC{i:032x}"  # each its own: trunks sharing a pod
            ctl.upsert(
                "TwilioTrunk",
                trunk_body(name, inbound={"accountSid": sid}, outbound={"context": name}),
            )
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        worker.adoptable = False
        await ctl.pods.deliver_once("ns", worker)
        await ctl.write_statuses("ns")
        assert {ready(kube.statuses[n])[1] for n in ("acme", "beta")} == {"Ready"}
        took = kube.statuses["acme"]["pods"][0]["lastReloadTime"]

        monkeypatch.setattr(pod_workers, "timestamp", lambda: "2099-01-01T00:00:00Z")  # later
        restarted = pod_body("asterisk-0")
        restarted["status"]["containerStatuses"][0].update(
            containerID="containerd://two", restartCount=1, ready=False
        )
        ctl.upsert_pod(restarted)
        kube.statuses["beta"] = dict(kube.statuses["beta"], pods=[])  # flipped while down
        ctl.status.statuses[("ns", "TwilioTrunk/beta")] = kube.statuses["beta"]
        restarted["status"]["containerStatuses"][0]["ready"] = True
        ctl.upsert_pod(restarted)
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        written.clear()
        await ctl.pods.deliver_once("ns", worker)  # adopted: the same files
        await ctl.write_statuses("ns")
        assert written == ["beta"]
        assert kube.statuses["acme"]["pods"][0]["lastReloadTime"] == took
        assert kube.statuses["beta"]["pods"][0]["lastReloadTime"] == "2099-01-01T00:00:00Z"
        await ctl.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("pushed", [False, True])
def test_a_container_started_while_watched_is_adopted_only_if_it_kept_its_files(
    pushed: bool,
) -> None:
    """A restarted container keeps the pod's files, so it may serve its set already (adopted
    after a read); objects pushed over ARI do not outlive the process, so a new ARI container
    is pushed its set at once (the read took ~0.7 s of a restart at 1,000 trunks). An ARI pod
    that ran before this operator started may hold them: it is read."""

    async def scenario() -> None:
        kube = GateKube()
        ctl = NoDelivery(kube)
        body = pod_body("asterisk-0")
        if pushed:
            body["metadata"]["annotations"] = {ARI_CREDENTIALS_ANNOTATION: "ari-user"}
        body["status"]["containerStatuses"][0]["containerID"] = "containerd://one"
        ctl.upsert_pod(body)
        ctl.upsert("TwilioTrunk", trunk_body("acme"))
        await ctl.reconcile_namespace("ns")
        assert ctl.pods.workers[("ns", "asterisk-0")].adoptable  # it ran before: read it

        body["status"]["containerStatuses"][0].update(
            containerID="containerd://two", restartCount=1, ready=False
        )
        ctl.upsert_pod(body)
        await asyncio.sleep(0)
        assert ("ns", "asterisk-0") not in ctl.pods.workers
        body["status"]["containerStatuses"][0]["ready"] = True
        ctl.upsert_pod(body)
        assert ctl.pods.workers[("ns", "asterisk-0")].adoptable is not pushed
        await ctl.stop()

    asyncio.run(scenario())


def test_a_containers_first_start_is_no_restart(caplog: pytest.LogCaptureFixture) -> None:
    """A pod seen while its container is created (no container id yet) then running: not
    logged as a restart; over ARI its new Asterisk holds nothing, so it is not read first."""

    async def scenario() -> None:
        ctl = NoDelivery(GateKube())
        body = pod_body("asterisk-0")
        body["metadata"]["annotations"] = {ARI_CREDENTIALS_ANNOTATION: "ari-user"}
        body["status"]["containerStatuses"][0].update(ready=False, restartCount=0)
        del body["status"]["containerStatuses"][0]["containerID"]
        ctl.upsert_pod(body)  # ContainerCreating: no containerID
        ctl.upsert("TwilioTrunk", trunk_body("acme"))
        await ctl.reconcile_namespace("ns")
        body["status"]["containerStatuses"][0].update(containerID="containerd://one", ready=True)
        with caplog.at_level(logging.INFO, logger="trunk_operator.runtime.pod_workers"):
            ctl.upsert_pod(body)
        assert "restarted" not in caplog.text
        assert not ctl.pods.workers[("ns", "asterisk-0")].adoptable
        await ctl.stop()

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
