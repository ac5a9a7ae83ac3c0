"""The pod delivery workers (runtime.pod_workers): what each pod is given and when, the
readiness gate, refusals and retries, adoption after a restart (with a fake API; no cluster)."""

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest

from tests.unit.helpers import (
    FakeKube,
    GateKube,
    NoDelivery,
    one_pod,
    plan_with_two_trunks,
    pod_body,
    ready,
    trunk_body,
)
from trunk_operator.core import asterisk_output, verify
from trunk_operator.core.desired import (
    expected_for,
    files_of,
    probe_for,
    reloads_for,
    user_contexts_of,
)
from trunk_operator.core.render import files_hash
from trunk_operator.pod import channel
from trunk_operator.pod.ari import ARI_CREDENTIALS_ANNOTATION
from trunk_operator.runtime import pod_workers
from trunk_operator.runtime.pod_workers import Pod, PodState, PodWorker

pytestmark = pytest.mark.usefixtures("delivering_written_at_once")


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


def test_a_pod_keeps_when_each_cr_arrived_across_deliveries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes = plan_with_two_trunks().outcomes
    worker = PodWorker(Pod("p", "u", {}, True, ""), PodState("p"))
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
