"""The Asterisk pods: what each should serve, and one delivery worker per pod.

Each pod's worker always delivers the newest desired set, so a burst of changes becomes one
exec round (changes arriving during a reload fold into the next). A pod that may already serve
its set (the operator or its container restarted) is first read, and adopted when it does.
What each pod serves afterwards is read back by the observer (observer.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from trunk_operator.core.desired import (
    changed_endpoints,
    expected_for,
    files_of,
    probe_for,
    reloads_for,
    user_contexts_of,
)
from trunk_operator.core.models import TwilioTrunkSpec
from trunk_operator.core.plan import TRUNK, Outcome, Problem
from trunk_operator.core.render import Files, files_hash
from trunk_operator.core.status import PodDelivery, timestamp
from trunk_operator.core.verify import (
    ARI_PUSH_FAILED,
    Expected,
    ExpectedEndpoint,
    Observation,
    Probe,
    drifted,
    verify,
)
from trunk_operator.kube.api import Kube
from trunk_operator.kube.client import describe
from trunk_operator.pod import channel
from trunk_operator.pod.ari import (
    ARI_CREDENTIALS_ANNOTATION,
    ARI_URL_ANNOTATION,
    DEFAULT_ARI_URL,
    AriAccess,
    AriUnavailable,
)
from trunk_operator.pod.ari_plan import PushRecord
from trunk_operator.pod.delivery import FILES, AriDelivery, Delivery
from trunk_operator.runtime import metrics
from trunk_operator.runtime.blocking import BlockingCalls
from trunk_operator.runtime.gates import ReadinessGates
from trunk_operator.runtime.restores import Restores
from trunk_operator.runtime.settings import Settings

log = logging.getLogger(__name__)

AUDIT_BATCH = 10  # endpoints the observer (and an adoption) re-checks in depth per round
# A set some CRs of which Asterisk refused is tried whole again after this long, doubling up to
# REFUSED_RETRY_MAX: a refusal can come from Asterisk's passing state, or from something that
# changes without the CR changing (a transport that a restart of Asterisk brought).
REFUSED_RETRY_FIRST = 30.0
REFUSED_RETRY_MAX = 600.0


class PodEvents(Protocol):
    """What the pod set and the observer tell their owner (the controller)."""

    async def delivered(self, namespace: str) -> None:
        """A pod's delivery round ended: statuses, and finalizers of CRs that left it."""
        ...

    async def observed(self, namespace: str) -> None:
        """A pod was read back: statuses."""
        ...

    def reported_since(self, namespace: str, pod: str, ref: str, digest: str) -> str | None:
        """When the CR's written status says `pod` took this version, if it says so."""
        ...


@dataclass
class PodState:
    """What the operator knows about one Asterisk pod. Written by the pod's worker (and the
    observer's read-back); the status reducer gets a frozen `view()`. A field is replaced,
    never changed in place, so a view keeps the values it was taken with."""

    name: str
    desired_hash: str | None = None  # of the pod's whole set
    delivered_hash: str | None = None
    desired: dict[str, str] = field(default_factory=dict)  # CR ref -> its digest, to deliver
    delivered: dict[str, str] = field(default_factory=dict)  # CR ref -> digest the pod has
    delivering: dict[str, str] | None = None  # see PodDelivery.delivering
    delivered_at: dict[str, str] = field(default_factory=dict)  # CR ref -> when it took it
    last_reload_time: str | None = None
    last_reload_result: str | None = None
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # CR ref -> refusals
    observation: Observation | None = None

    def view(self) -> PodDelivery:
        return PodDelivery(
            self.name,
            self.desired,
            self.delivered,
            self.delivering,
            self.delivered_at,
            self.last_reload_result,
            self.problems,
            self.observation,
        )


@dataclass
class Pod:
    name: str
    uid: str
    labels: dict[str, str]
    ready: bool
    incarnation: str  # changes when the container restarts
    gate_open: bool = False  # our readiness gate is True in the pod's status
    # PJSIP objects pushed over ARI (pod.ari): the Secret of its ARI user, and the URL.
    ari_secret: str | None = None
    ari_url: str = DEFAULT_ARI_URL


def pod_of(body: Mapping[str, Any], settings: Settings, gate_closing: bool) -> Pod | None:
    """The pod as a delivery target, from its API object; None when it has no container of
    ours. `gate_closing`: we closed its readiness gate, whatever a late event still shows."""
    meta, status = body["metadata"], body.get("status") or {}
    if not any(c.get("name") == settings.container for c in body["spec"]["containers"]):
        return None
    containers = status.get("containerStatuses") or []
    ours = [c for c in containers if c.get("name") == settings.container]
    # A pod being deleted is done: no new deliveries, and it holds no trunk's Ready (its
    # containers stay ready while a preStop lets calls finish).
    ready = (
        status.get("phase") == "Running"
        and bool(ours and ours[0].get("ready"))
        and not meta.get("deletionTimestamp")
    )
    container_id = ours[0].get("containerID", "") if ours else ""
    # "": not started yet (its first start is no restart)
    incarnation = f"{container_id}/{ours[0].get('restartCount', 0)}" if container_id else ""
    gate_open = not gate_closing and any(
        c.get("type") == settings.readiness_condition and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    annotations = meta.get("annotations") or {}
    return Pod(
        meta["name"],
        meta["uid"],
        dict(meta.get("labels") or {}),
        ready,
        incarnation,
        gate_open,
        annotations.get(ARI_CREDENTIALS_ANNOTATION) or None,
        annotations.get(ARI_URL_ANNOTATION) or DEFAULT_ARI_URL,
    )


@dataclass
class PodWorker:
    pod: Pod
    state: PodState
    owners: dict[str, Outcome] = field(default_factory=dict)  # CR ref -> what the pod should get
    files: Files = field(default_factory=dict)  # files_of(owners)
    delivered_owners: dict[str, Outcome] = field(default_factory=dict)  # what it has
    delivered_files: Files = field(default_factory=dict)  # files_of(delivered_owners)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Held by a delivery; an observation does not start while it is, and drops its read if a
    # delivery came meanwhile (it would report drift that is not there).
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    # Until the first round has checked it: the pod may already hold this set (the operator or
    # the container restarted), so a status that says Ready for it may still be true.
    adoptable: bool = True
    # Until its first round ended: that round restores the pod's set (a new pod, a restarted
    # container, or this process started), and status writes wait for it (`restores`).
    first_round: bool = True
    # The desired set of the last round that ended with some CRs refused: nothing more to do
    # for it (the others were delivered) until the desired set changes, or `retry_refused`
    # fires (`refused_retry` seconds later: doubled each time the same set is refused again).
    settled_hash: str | None = None
    refused_hash: str | None = None  # the set `refused_retry` counts for
    refused_retry: float = REFUSED_RETRY_FIRST
    retry_refused: asyncio.TimerHandle | None = None
    # The copy of the pod's record of what was pushed over ARI (pod/ari_plan): None when there
    # is none yet or a delivery was cut off; the pod then prints its own.
    ari_record: PushRecord | None = None
    audit_cursor: int = 0  # where the observer's in-depth audit of the endpoints goes on
    observe_after: float = 0.0  # monotonic time before which the observer leaves the pod be

    def settle(self, desired_hash: str | None) -> None:
        """Leave this refused set be, and try it whole again later (with backoff)."""
        delay = self.refused_retry if self.refused_hash == desired_hash else REFUSED_RETRY_FIRST
        self.refused_retry = min(delay * 2, REFUSED_RETRY_MAX)
        self.settled_hash = self.refused_hash = desired_hash
        if self.retry_refused is not None:
            self.retry_refused.cancel()

        def retry() -> None:
            self.settled_hash = None
            self.wake.set()

        self.retry_refused = asyncio.get_running_loop().call_later(delay, retry)

    def audit_batch(self, owners: Mapping[str, Outcome]) -> list[str]:
        """The next AUDIT_BATCH endpoints of the pod, round robin: over the rounds, every
        endpoint is read back in depth again (Asterisk's memory can change without files)."""
        names = sorted(changed_endpoints(owners, {}))
        if not names:
            return []
        start = self.audit_cursor % len(names)
        return (names[start:] + names[:start])[:AUDIT_BATCH]

    def forget_delivered(self) -> None:
        """What the pod holds is not known: everything is delivered, now (a refused set too:
        a restarted Asterisk may serve what it refused)."""
        self.state.delivered_hash = None
        self.settled_hash = None
        self.set_delivered({})

    def set_delivered(
        self,
        owners: dict[str, Outcome],
        files: Files | None = None,
        since: Mapping[str, str] | None = None,
    ) -> None:
        """What the pod has now: these CRs, as `files` (from `files_of(owners)`); `since`: when
        it took some of them, where that is known from before (an adoption)."""
        before, now, since = self.state.delivered, timestamp(), since or {}
        self.delivered_owners = owners
        self.delivered_files = files if files is not None else files_of(owners)
        self.state.delivered = {ref: outcome.digest for ref, outcome in owners.items()}
        self.state.delivered_at = {
            ref: self.state.delivered_at.get(ref, now) if before.get(ref) == digest
            else since.get(ref, now)
            for ref, digest in self.state.delivered.items()
        }  # fmt: skip


def _adoption_probe(worker: PodWorker, owners: Mapping[str, Outcome], expected: Expected) -> Probe:
    """What an adoption reads beyond every object's presence: a first batch of endpoints in
    depth (the observer audits the rest, AUDIT_BATCH per round) and their CRs' contexts. The
    files are byte for byte a set verified in depth when it was delivered, and Asterisk loads a
    dialplan whole or not at all. (Every context would take a `dialplan show` of the whole set
    after each container restart: the largest read there is, and the likeliest to be cut short
    on a busy node.) The user contexts too: their presence is in the statuses."""
    batch = frozenset(worker.audit_batch(owners))
    batch_owners = {e.owner for e in expected.endpoints if e.name in batch}
    contexts = frozenset(c for c, owner in expected.contexts.items() if owner in batch_owners)
    return Probe(batch, contexts | user_contexts_of(owners))


def _delivery_of(pod: Pod) -> tuple[str | None, str]:
    return pod.ari_secret, pod.ari_url


def _selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class AsteriskPods:
    """The pods of every watched namespace, and a worker for each ready one."""

    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        calls: BlockingCalls,
        stats: dict[str, int],
        expected_endpoints: dict[tuple[str, str], ExpectedEndpoint],
        workers: dict[tuple[str, str], PodWorker],
        events: PodEvents,
        restores: Restores,
    ) -> None:
        """`expected_endpoints`: the controller's cache, pruned to its plans' CRs; `workers`:
        the store's (this pod set is the one that changes them); `events`: its owner."""
        self.kube = kube
        self.settings = settings
        self.calls = calls
        self.stats = stats
        self.expected_endpoints = expected_endpoints
        self.events = events
        self.restores = restores
        self.known: dict[str, dict[str, Pod]] = defaultdict(dict)  # namespace -> name -> pod
        self.workers = workers
        # The CRs of each namespace's last assignment: a pod that comes or goes is assigned at
        # once, not after the namespace's next plan (which waits for the status writes of the
        # one before, many when a pod with many CRs restarted).
        self.assigned: dict[str, dict[str, Outcome]] = {}
        self.gates = ReadinessGates(kube, calls, settings.readiness_condition)
        # (namespace, pod) -> the incarnation of its container that started while this process
        # watched: over ARI it holds nothing pushed yet, so there is nothing to adopt (reading
        # it to find that out would only lengthen the restart).
        self.started_while_watched: dict[tuple[str, str], str] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        return [w.task for w in self.workers.values() if w.task]

    def upsert(self, body: Mapping[str, Any]) -> bool:
        """A pod event; True when the namespace needs a new plan (a pod came, went ready or
        not, changed labels or restarted its container)."""
        meta = body["metadata"]
        namespace = meta["namespace"]
        pod = pod_of(body, self.settings, self.gates.is_closing(namespace, meta["name"]))
        if pod is None:
            return False
        before = self.known[namespace].get(pod.name)
        self.known[namespace][pod.name] = pod
        # Its container started while we watched ("" before: its first start, no restart).
        started = before is not None and before.incarnation != pod.incarnation
        if started:
            self.started_while_watched[(namespace, pod.name)] = pod.incarnation
        if started and before and before.incarnation:
            log.info(
                "%s/%s: the %s container restarted: its set is verified again%s",
                namespace, pod.name, self.settings.container,
                " (readiness gate closed)" if pod.gate_open else "",
            )  # fmt: skip
            if pod.gate_open:
                self.gates.close(namespace, pod)
        worker = self.workers.get((namespace, pod.name))
        if worker and before and (started or before.uid != pod.uid):
            worker.forget_delivered()  # a new container starts empty
        elif worker and before and _delivery_of(before) != _delivery_of(pod):
            worker.forget_delivered()  # files to ARI or back: everything moves
        if worker:
            worker.pod = pod
        changed = (
            before is None
            or before.ready != pod.ready
            or before.labels != pod.labels
            or started
            or _delivery_of(before) != _delivery_of(pod)
        )
        if changed and namespace in self.assigned:
            self.assign(namespace, self.assigned[namespace])
        return changed

    def forget(self, namespace: str, name: str) -> None:
        self.known[namespace].pop(name, None)
        self.started_while_watched.pop((namespace, name), None)
        self.gates.forget(namespace, name)

    def _trunk_selector(self, spec: TwilioTrunkSpec) -> Mapping[str, str]:
        selector = spec.asterisk_selector
        return (selector.match_labels if selector else None) or self.settings.default_selector

    def assign(self, namespace: str, outcomes: Mapping[str, Outcome]) -> None:
        """Give every ready pod the union of the last good files of the CRs that select it."""
        self.assigned[namespace] = dict(outcomes)
        pods = [p for p in self.known.get(namespace, {}).values() if p.ready]
        for pod in pods:
            owners: dict[str, Outcome] = {}
            for ref, outcome in sorted(outcomes.items()):
                trunk = outcomes.get(f"{TRUNK}/{outcome.trunk}")
                spec = trunk.trunk_spec if trunk else None
                if spec is not None and _selector_matches(self._trunk_selector(spec), pod.labels):
                    owners[ref] = outcome
            worker = self.worker(namespace, pod)
            worker.owners = owners
            worker.files = files_of(owners)
            worker.state.desired = {ref: outcome.digest for ref, outcome in owners.items()}
            worker.state.desired_hash = files_hash(worker.files)
            if worker.state.desired_hash != worker.state.delivered_hash:
                worker.wake.set()
        for (ns, name), worker in list(self.workers.items()):
            if ns == namespace and name not in {p.name for p in pods}:
                if worker.task:
                    worker.task.cancel()
                if worker.retry_refused:
                    worker.retry_refused.cancel()
                del self.workers[(ns, name)]

    def worker(self, namespace: str, pod: Pod) -> PodWorker:
        worker = self.workers.get((namespace, pod.name))
        if worker is None:
            worker = PodWorker(pod, PodState(pod.name))
            worker.adoptable = not (
                pod.ari_secret is not None
                and self.started_while_watched.get((namespace, pod.name)) == pod.incarnation
            )
            self.workers[(namespace, pod.name)] = worker
            worker.task = asyncio.create_task(
                self._deliver_loop(namespace, worker), name=f"deliver-{namespace}/{pod.name}"
            )
        return worker

    # ---- delivery --------------------------------------------------------------------

    async def _deliver_loop(self, namespace: str, worker: PodWorker) -> None:
        backoff = 1.0
        while True:
            await worker.wake.wait()
            worker.wake.clear()
            if worker.state.desired_hash in (worker.state.delivered_hash, worker.settled_hash):
                continue
            restore = self.restores.restoring() if worker.first_round else contextlib.nullcontext()
            try:
                async with worker.busy, restore:
                    await self.deliver_once(namespace, worker)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                known = isinstance(error, (channel.ExecError, AriUnavailable))
                text = str(error) if known else describe(error)
                log.warning("delivery to %s/%s failed: %s", namespace, worker.pod.name, text)
                metrics.DELIVERIES.labels(result="Error").inc()
                worker.state.last_reload_result = f"error: {text[:200]}"
                # Its script may still have swapped the set in: delivered again, whatever the
                # desired set is by then (`delivering` stays until that delivery ends).
                worker.state.delivered_hash = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)
                worker.wake.set()
            finally:
                worker.first_round = False
            await self.events.delivered(namespace)  # statuses; a deleted CR may have left

    async def deliver_once(self, namespace: str, worker: PodWorker) -> None:
        owners, files = dict(worker.owners), worker.files  # set together by assign()
        desired_hash = worker.state.desired_hash  # of `owners`: both set by assign()
        worker.settled_hash = None
        await self.gates.settled(namespace, worker.pod.name)  # before any reopening
        if worker.adoptable:
            try:
                adopted = await self._adopt(namespace, worker, owners, files, desired_hash)
            finally:
                worker.adoptable = False  # tried: whatever the pod holds, it gets this set now
            if adopted:
                return
        result = await self._deliver(namespace, worker, owners, files, desired_hash)
        if result.ok:
            return
        if result.ari_unavailable:
            # Nothing was wrong with the trunks: the pod's ARI refused or was not there.
            refusal = Problem(ARI_PUSH_FAILED, result.ari_unavailable)
            worker.state.problems = {ref: [refusal] for ref in owners}
            worker.state.delivered_hash = None
            raise AriUnavailable(result.ari_unavailable)
        # Keep the CRs Asterisk refused at their last delivered version; the others go ahead.
        culprits = {owner for problem in result.problems for owner in problem.owners}
        worker.state.problems = {
            ref: [
                Problem(p.reason, p.message)
                for p in result.problems
                if ref in p.owners or not p.owners
            ]
            for ref in (culprits or owners)
        }
        if not culprits or culprits >= set(owners):
            worker.state.delivered_hash = None
            worker.settle(desired_hash)
            return
        retry = {
            ref: worker.delivered_owners[ref] if ref in culprits else outcome
            for ref, outcome in owners.items()
            if ref not in culprits or ref in worker.delivered_owners
        }
        problems = worker.state.problems
        if (await self._deliver(namespace, worker, retry)).ok:
            worker.state.problems = problems  # the refused CRs still need fixing
            worker.state.last_reload_result = "PartiallyApplied"
            # Nothing more to do until something changes (a fixed CR changes the desired hash)
            # or the retry. Not `delivered_hash`: that is what the pod has, and the desired set
            # may have moved on while this round ran.
            worker.settle(desired_hash)

    async def _adopt(
        self,
        namespace: str,
        worker: PodWorker,
        owners: dict[str, Outcome],
        files: Files,
        digest: str | None,
    ) -> bool:
        """Take over a pod that already serves exactly this set (the operator restarted, or the
        container did and kept its files): verified by content and by what Asterisk shows, so
        no reload is needed."""
        started = time.monotonic()
        pod_exec = self.kube.pod_exec(namespace, worker.pod.name, self.settings.container)
        expected = expected_for(owners, self.expected_endpoints)
        probe = _adoption_probe(worker, owners, expected)
        observation = await self.calls.run(
            channel.observe,
            pod_exec,
            expected,
            self.settings.exec_timeout,
            probe,
            worker.pod.ari_secret is not None,
        )
        read = time.monotonic()
        if (
            observation.delivered_hash != (digest or files_hash(files))
            or drifted(files, observation)
            or verify(expected, observation)
        ):
            return False
        worker.state.delivered_hash = observation.delivered_hash
        worker.state.observation = observation
        worker.state.problems = {}
        worker.state.last_reload_result = "Verified"
        # The time the statuses already report for what the pod holds (a restarted container
        # or operator): those still written as before stay as they are, not 1,000 writes.
        since = {
            ref: at
            for ref, outcome in owners.items()
            if (at := self.events.reported_since(namespace, worker.pod.name, ref, outcome.digest))
        }
        worker.set_delivered(owners, files, since)
        checked = time.monotonic()
        await self.gates.open(namespace, worker.pod)  # closed if its container restarted
        done = time.monotonic()
        log.info(
            "%s/%s already serves %d resources: adopted in %.2f s (read %.2f s, check %.2f s,"
            " readiness gate %.2f s)",
            namespace, worker.pod.name, len(owners), done - started, read - started,
            checked - read, done - checked,
        )  # fmt: skip
        return True

    async def _deliver(
        self,
        namespace: str,
        worker: PodWorker,
        owners: dict[str, Outcome],
        files: Files | None = None,
        digest: str | None = None,
    ) -> channel.DeliveryResult:
        """`files`: `files_of(owners)`, `digest` their `files_hash`, when known."""
        pod_exec = self.kube.pod_exec(namespace, worker.pod.name, self.settings.container)
        try:
            delivery = await self._delivery(namespace, worker.pod, worker.ari_record)
        except AriUnavailable as error:
            worker.state.problems = {ref: [Problem(ARI_PUSH_FAILED, str(error))] for ref in owners}
            raise
        self.stats["reloads"] += 1
        started = time.monotonic()
        files = files if files is not None else files_of(owners)
        before = worker.delivered_files if worker.state.delivered_hash is not None else None
        expected = expected_for(owners, self.expected_endpoints)
        worker.state.delivering = {ref: outcome.digest for ref, outcome in owners.items()}
        worker.ari_record = None  # until the delivery says what the pod's record is
        result = await self.calls.run(
            channel.deliver,
            pod_exec,
            files,
            expected,
            self.settings.exec_timeout,
            probe_for(owners, worker.delivered_owners),
            reloads_for(files, before),
            delivery,
            digest,
        )
        worker.ari_record = result.delivery.record
        listed = result.observation is None or bool(result.observation.listing.read)
        await self._took(namespace, worker, owners, files, result)
        metrics.DELIVERIES.labels(result=worker.state.last_reload_result).inc()
        metrics.DELIVERY_SECONDS.observe(time.monotonic() - started)
        self._log_delivery(namespace, worker, len(owners), result, started, listed)
        return result

    async def _took(
        self,
        namespace: str,
        worker: PodWorker,
        owners: dict[str, Outcome],
        files: Files,
        result: channel.DeliveryResult,
    ) -> None:
        """What the pod has after a delivery: the new set (verified), or the one before it."""
        if result.ok or result.rolled_back:  # verified, or back to what it had
            worker.state.delivering = None
        worker.state.last_reload_time = timestamp()
        if result.observation is not None:
            result.observation.carry(worker.state.observation)
        worker.state.observation = result.observation
        if result.ok:
            worker.state.delivered_hash = result.hash
            worker.state.problems = {}
            worker.state.last_reload_result = "Verified"
            worker.set_delivered(owners, files)
            await self.gates.open(namespace, worker.pod)
            return
        worker.state.last_reload_result = "RolledBack" if result.rolled_back else "Failed"
        log.warning(
            "%s/%s refused: %s",
            namespace,
            worker.pod.name,
            "; ".join(p.message for p in result.problems[:3]),
        )

    @staticmethod
    def _log_delivery(
        namespace: str,
        worker: PodWorker,
        resources: int,
        result: channel.DeliveryResult,
        started: float,
        listed: bool,
    ) -> None:
        """One line per delivery, with where its time went."""
        log.info(
            "%s/%s: %d resources, hash %s: %s in %.2f s (%s)",
            namespace,
            worker.pod.name,
            resources,
            result.hash[:12],
            worker.state.last_reload_result,
            time.monotonic() - started,
            ", ".join(f"{name} {took:.2f} s" for name, took in result.phases.items())
            + ("" if listed else ", no listings: only replaced objects, read in depth")
            + (
                f", read again: {' '.join(result.read_again)} cut short"
                if result.read_again
                else ""
            ),
        )

    async def _delivery(self, namespace: str, pod: Pod, record: PushRecord | None) -> Delivery:
        """How the pod takes its set: files, or over ARI with the user of its Secret (read for
        every delivery, so a rotated password is used by the next one)."""
        if pod.ari_secret is None:
            return FILES
        # Not behind the API-call bound: the delivery waits for this one read, which must not
        # queue behind the status writes of 1,000 CRs (a restarted pod's, for one).
        secret = await self.calls.run(self.kube.read_secret, namespace, pod.ari_secret)
        data = secret.data if secret is not None else {}
        if not data.get("username") or not data.get("password"):
            what = "has no username and password" if secret is not None else "does not exist"
            raise AriUnavailable(
                f"ARI credentials: Secret {namespace}/{pod.ari_secret} {what}"
                f" (pod annotation {ARI_CREDENTIALS_ANNOTATION})"
            )
        return AriDelivery(AriAccess(pod.ari_url, data["username"], data["password"]), record)

    def removed_everywhere(self, namespace: str, ref: str) -> bool:
        """No pod serves, or is to get, this CR's files (pods that went away count)."""
        return all(
            ref not in w.delivered_owners and ref not in w.owners
            for (ns, _), w in self.workers.items()
            if ns == namespace
        )
