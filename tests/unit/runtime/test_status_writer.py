"""The status pass: a CR's status is reduced again exactly when something it is reduced from
changed (a pass over 10,000 CRs reduces only those), and never kept when one did."""

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from tests.unit.helpers import (
    GateKube,
    NoDelivery,
    one_pod,
    pod_body,
    recording,
    trunk_body,
)
from trunk_operator.core import asterisk_output
from trunk_operator.core.desired import (
    expected_for,
)
from trunk_operator.core.plan import Problem
from trunk_operator.core.render import files_hash
from trunk_operator.core.verify import Observation
from trunk_operator.pod import channel
from trunk_operator.runtime import pod_workers, status_writer
from trunk_operator.runtime.controller import Controller


def observation(ctl: NoDelivery, contact: str = "Avail", **fields: object) -> Observation:
    """What the pod shows: every expected endpoint, its contacts `contact`."""
    expected = expected_for(ctl.pods.workers[("ns", "asterisk-0")].owners)
    listing = asterisk_output.Listing(
        endpoints={e.name: "Not in use" for e in expected.endpoints},
        aors={a for e in expected.endpoints for a in e.aors},
        contacts=[
            asterisk_output.Contact(aor, uri, contact, 10.0)
            for e in expected.endpoints
            for aor, uri in e.aors.items()
        ],
    )
    return Observation(listing, **fields).attach(expected)  # type: ignore[arg-type]


def trunk(name: str, generation: int = 1, **spec: object) -> dict:
    """A trunk that shares the pod with others (own accountSid and outbound context)."""
    return trunk_body(
        name,
        generation,
        inbound={"accountSid": "AC" + name[0] * 32},
        outbound={"context": f"to-{name}"},
        qualifyFrequencySeconds=60,
        **spec,
    )


def slow_status_kube(delay: float) -> tuple[GateKube, list[tuple[str, str]]]:
    """A kube whose status PATCHes take `delay` in the API threads, so the writes queue for
    their slots; and the (CR, reason) of each PATCH, in order."""
    kube = GateKube()
    patched: list[tuple[str, str]] = []

    def slow_patch(name: str) -> None:
        patched.append((name, kube.statuses[name]["reason"]))
        time.sleep(delay)

    kube.during_status = slow_patch
    return kube, patched


def add_trunks(ctl: Controller, names: list[str]) -> None:
    """Trunks sharing the pod: each its own accountSid and outbound context."""
    for i, name in enumerate(names):
        inbound, outbound = {"accountSid": f"AC{i:032x}"}, {"context": f"to-{name}"}
        ctl.upsert("TwilioTrunk", trunk_body(name, inbound=inbound, outbound=outbound))


def test_each_input_of_a_status_brings_it_reduced_again_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_writer, "DELIVERING_GRACE", 0.0)  # every state is written

    async def scenario() -> None:
        written: list[str] = []
        kube, ctl = one_pod(written.append)
        for name in ("acme", "beta"):
            ctl.upsert("TwilioTrunk", trunk(name))
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        worker.set_delivered(dict(worker.owners))
        worker.state.delivered_hash = worker.state.desired_hash
        worker.state.observation = observation(ctl)

        async def step() -> list[str]:
            """One pass; then one with nothing remembered must find nothing to write (what
            was kept is what a reduce gives)."""
            written.clear()
            await ctl.write_statuses("ns")
            changed = sorted(written)
            ctl.status.reduced.clear()
            ctl.status.views.clear()
            await ctl.write_statuses("ns")
            assert sorted(written) == changed
            return changed

        await step()
        assert kube.statuses["acme"]["conditions"][0]["status"] == "True"
        assert await step() == []

        # A new observation, the same for both: nothing to write.
        worker.state.observation = observation(ctl)
        assert await step() == []
        # One endpoint's contact no longer answers.
        unreachable = observation(ctl)
        endpoint = unreachable.endpoints["ACME"]
        endpoint.contacts = [
            asterisk_output.Contact(c.aor, c.uri, "Unavailable", None) for c in endpoint.contacts
        ]
        worker.state.observation = unreachable
        assert await step() == ["acme"]
        assert kube.statuses["acme"]["endpointState"] == "Not in use"
        reachable = [c for c in kube.statuses["acme"]["conditions"] if c["type"] == "Reachable"]
        assert reachable[0]["status"] == "False"
        # The user's context checked and missing: both send calls there (acme's contact
        # answers again).
        context = ctl.store.plans["ns"].trunk_specs["acme"].inbound.context
        worker.state.observation = observation(
            ctl, contexts_checked=frozenset({context}), contexts=set()
        )
        assert await step() == ["acme", "beta"]
        assert kube.statuses["beta"]["reason"] == "Ready"
        degraded = [c for c in kube.statuses["beta"]["conditions"] if c["type"] == "Degraded"]
        assert degraded[0]["reason"] == "ContextMissing"
        worker.state.observation = observation(ctl)
        assert await step() == ["acme", "beta"]
        # Asterisk's words about one CR.
        worker.state.problems = {"TwilioTrunk/beta": [Problem("AsteriskRejected", "not loaded")]}
        assert await step() == ["beta"]
        assert kube.statuses["beta"]["reason"] == "AsteriskRejected"
        worker.state.problems = {}
        assert await step() == ["beta"]
        # What the pod did last, for every CR in it.
        worker.state.last_reload_result = "PartiallyApplied"
        assert await step() == ["acme", "beta"]
        # One CR's new version, delivered.
        ctl.upsert("TwilioTrunk", trunk("beta", 2, codecs=["alaw"]))
        await ctl.reconcile_namespace("ns")
        assert kube.statuses["beta"]["reason"] == "Delivering"
        assert kube.statuses["acme"]["reason"] == "Ready"
        worker.set_delivered(dict(worker.owners))
        worker.state.delivered_hash = worker.state.desired_hash
        assert await step() == ["beta"]
        assert kube.statuses["beta"]["conditions"][0]["observedGeneration"] == 2
        # A delivery under way that brings another version of one CR (its exec failed, say:
        # whether it landed is not known), then one that brings the same versions.
        worker.state.delivering = {
            ref: "another" if ref.endswith("/acme") else outcome.digest
            for ref, outcome in worker.owners.items()
        }
        assert await step() == ["acme"]
        assert kube.statuses["acme"]["reason"] == "Delivering"
        worker.state.delivering = {ref: outcome.digest for ref, outcome in worker.owners.items()}
        assert await step() == ["acme"]
        assert kube.statuses["acme"]["reason"] == "Ready"
        await ctl.stop()

    asyncio.run(scenario())


def test_a_status_superseded_before_it_is_written_is_never_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted pod's CRs go NoAsteriskPods, and Ready again once it is adopted: the writes
    still waiting for an API slot then take the newest status (Ready, as written: nothing to
    write), so the CRs are current as soon as the slots allow, not after every stale write."""
    count = 60
    # Taken again in the same second as before: this is about superseding, not load times.
    monkeypatch.setattr(pod_workers, "timestamp", lambda: "2026-11-28T00:00:00Z")

    async def scenario() -> None:
        kube, patched = slow_status_kube(0.01)
        ctl = NoDelivery(kube)
        ctl.upsert_pod(pod_body("asterisk-0"))
        names = [f"t{i:03d}" for i in range(count)]
        add_trunks(ctl, names)
        await ctl.reconcile_namespace("ns")
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        worker.set_delivered(dict(worker.owners))
        worker.state.delivered_hash = worker.state.desired_hash
        await ctl.write_statuses("ns")
        assert {kube.statuses[n]["reason"] for n in names} == {"Ready"}
        patched.clear()

        # The container restarts: no ready pod, every CR NoAsteriskPods...
        down = pod_body("asterisk-0")
        down["status"]["containerStatuses"][0]["ready"] = False
        ctl.upsert_pod(down)
        flip = asyncio.create_task(ctl.write_statuses("ns"))
        while len(patched) < 5:
            await asyncio.sleep(0.005)
        # ...and it is back with its files (adopted) while most are still to be written.
        ctl.upsert_pod(pod_body("asterisk-0"))
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        worker.set_delivered(dict(worker.owners))
        worker.state.delivered_hash = worker.state.desired_hash
        await ctl.write_statuses("ns")
        await flip

        assert {kube.statuses[n]["reason"] for n in names} == {"Ready"}
        down_written = {name for name, reason in patched if reason == "NoAsteriskPods"}
        # Only the CRs written NoAsteriskPods were written again; the rest never were.
        assert 5 <= len(down_written) < count
        assert sorted(patched) == sorted(
            [(n, "NoAsteriskPods") for n in down_written] + [(n, "Ready") for n in down_written]
        )
        assert kube.events.count("NoAsteriskPods") == len(down_written)
        await ctl.stop()

    asyncio.run(scenario())


def test_status_writes_wait_while_a_restarted_pod_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writes of a restart's NoAsteriskPods share the cores and the API server with the
    read that restores the pod: none starts while that read runs, and those it makes moot
    (the pod serves them again) are never written."""
    count = 60
    monkeypatch.setattr(pod_workers, "timestamp", lambda: "2026-11-28T00:00:00Z")
    monkeypatch.setattr(pod_workers, "drifted", lambda files, observation: False)
    monkeypatch.setattr(pod_workers, "verify", lambda expected, observation, *more: [])
    reading, read_may_end = threading.Event(), threading.Event()
    read_may_end.set()

    def delivered(pod_exec, files, *args: object) -> channel.DeliveryResult:
        return channel.DeliveryResult(True, files_hash(files), [], None)

    def serving(pod_exec, expected, timeout, probe, pushed) -> Observation:
        reading.set()
        read_may_end.wait(10)
        worker = ctl.pods.workers[("ns", "asterisk-0")]
        return Observation(asterisk_output.Listing(), files_hash(worker.files))

    monkeypatch.setattr(channel, "deliver", delivered)
    monkeypatch.setattr(channel, "observe", serving)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(1000):
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("timed out")

    kube, patched = slow_status_kube(0.03)
    ctl = Controller(kube)  # type: ignore[arg-type]
    names = [f"t{i:03d}" for i in range(count)]

    async def scenario() -> None:
        ctl.upsert_pod(pod_body("asterisk-0"))
        add_trunks(ctl, names)
        await ctl.reconcile_namespace("ns")
        await until(lambda: {kube.statuses.get(n, {}).get("reason") for n in names} == {"Ready"})
        await until(lambda: not ctl.status.writing)
        patched.clear()

        # The container restarts: no ready pod, every CR NoAsteriskPods...
        down = pod_body("asterisk-0")
        down["status"]["containerStatuses"][0].update(
            containerID="containerd://two", restartCount=1, ready=False
        )
        ctl.upsert_pod(down)
        flip = asyncio.create_task(ctl.write_statuses("ns"))
        await until(lambda: len(patched) >= 5)
        # ...and it is ready again while most are still to be written: its new container is
        # read (adopted, it kept its files).
        read_may_end.clear()
        reading.clear()
        back = pod_body("asterisk-0")
        back["status"]["containerStatuses"][0].update(
            containerID="containerd://two", restartCount=1
        )
        ctl.upsert_pod(back)
        await until(reading.is_set)
        await asyncio.sleep(0.1)  # in flight when the read began: done by now
        during = len(patched)
        await asyncio.sleep(0.3)  # ten writes' time
        assert len(patched) == during  # none began while the pod was read
        read_may_end.set()
        await flip
        await until(lambda: ctl.pods.workers[("ns", "asterisk-0")].state.delivered_hash is not None)
        await until(lambda: not ctl.status.writing)

        assert {kube.statuses[n]["reason"] for n in names} == {"Ready"}
        down_written = {name for name, reason in patched if reason == "NoAsteriskPods"}
        assert len(down_written) == during < count  # the rest were moot when their turn came
        assert sorted(patched) == sorted(
            [(n, "NoAsteriskPods") for n in down_written] + [(n, "Ready") for n in down_written]
        )
        await ctl.stop()

    asyncio.run(scenario())


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
