"""Each CR's status: reduced from the plan and what every selected pod serves, written only
when it changed, with an Event when Ready or Degraded changes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trunk_operator.core.plan import PLURALS, SEGMENT, TRUNK, Outcome, Plan, Tracked
from trunk_operator.core.status import (
    CRView,
    PodDelivery,
    reduce_status,
    timestamp,
    with_transition_times,
)
from trunk_operator.kube.api import Kube, Owner
from trunk_operator.runtime import metrics
from trunk_operator.runtime.blocking import BlockingCalls
from trunk_operator.runtime.restores import Restores
from trunk_operator.runtime.store import StoreView

if TYPE_CHECKING:
    from trunk_operator.runtime.pod_workers import PodWorker

log = logging.getLogger(__name__)

# A delivery under way is written into a CR's status only if it still is this much later: most
# take less, and then only their outcome is written (a new trunk: one status write fewer; each
# spec change: one write, and one watch event for Argo CD and Flux, fewer). Only
# where the status as it stands cannot pass for the change's: see `_reads_as_current`.
DELIVERING_GRACE = 1.0
MANY_WRITES = 100  # a pass with this many statuses to write is logged, with its time


def _reads_as_current(written: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """The written status says Ready for the generation now being delivered: a change that is
    no new generation (a rotated Secret, a pod's restart). Left as it is, `kubectl wait` would
    take it for the change's outcome; a new CR or a new generation has no such status (its
    observedGeneration is behind, which kubectl wait, kstatus and Argo CD read as in progress)."""
    if not written or written.get("observedGeneration") != new.get("observedGeneration"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in written.get("conditions", [])
    )


def _pod_inputs(pod: PodDelivery, cr: CRView) -> tuple[Any, ...]:
    """Everything `reduce_status` reads of one pod for one CR, as values (an observation's
    objects are not kept: only the state and contacts it showed for the CR's endpoint)."""
    ref, observation = cr.ref, pod.observation
    shown: tuple[Any, ...] | None = None
    missing: frozenset[str] = frozenset()
    if observation is not None:
        endpoint = observation.endpoints.get(cr.endpoint) if cr.endpoint else None
        if endpoint is not None:
            shown = (endpoint.state, tuple((c.uri, c.status) for c in endpoint.contacts))
        missing = frozenset(
            c
            for c in cr.contexts
            if c in observation.contexts_checked and c not in observation.contexts
        )
    return (
        pod.name,
        pod.last_reload_result,
        pod.delivered.get(ref),
        pod.desired.get(ref),
        pod.delivering is None or pod.delivering.get(ref),
        pod.delivered_at.get(ref),
        tuple(pod.problems.get(ref) or ()),
        observation is not None,
        shown,
        missing,
    )


class StatusWriter:
    def __init__(
        self,
        kube: Kube,
        calls: BlockingCalls,
        store: StoreView,
        restores: Restores,
    ) -> None:
        """`store`: the CRs, plans and pod workers, read at each write."""
        self.kube = kube
        self.calls = calls
        self.store = store
        self.restores = restores  # status writes give way to a pod's restore
        # The status of each CR as we last wrote it (as first seen, before that), and what it
        # was computed from. Kept here, not on Tracked: watch events replace Tracked objects
        # while a write is in flight, and a transition compared with a stale status is
        # announced twice.
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.patched: dict[tuple[str, str], dict[str, Any]] = {}
        self.served_secret: dict[tuple[str, str], str] = {}  # Secret version last Ready with
        # The newest status to write for each CR, the one being written, and the task writing
        # them (one per CR, so transitions are computed from the status written before). A
        # status is taken when an API slot is free: one that a later pass changed is never
        # written (a restarted pod's 1,000 CRs: those not yet written when it is back stay).
        self.wanted: dict[tuple[str, str], tuple[Tracked, dict[str, Any]]] = {}
        self.in_flight: dict[tuple[str, str], dict[str, Any]] = {}
        self.writing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.delivering_since: dict[tuple[str, str], float] = {}  # monotonic
        self.timers: dict[str, asyncio.TimerHandle] = {}  # namespace -> its deferred write
        self.deferred: set[asyncio.Task[None]] = set()
        # The last status reduced for each CR, and all it was reduced from (`_pod_inputs`):
        # a pass over 10,000 CRs reduces only those whose inputs changed (one, for a change).
        self.reduced: dict[tuple[str, str], tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.views: dict[tuple[str, str], tuple[Outcome, Any, int, CRView]] = {}

    def seen(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        """A CR seen for the first time (or a new one under the same name): its status as it
        is, until we write one; afterwards watch events lag behind our own writes."""
        self.statuses[key] = status
        self.patched.pop(key, None)

    def reported_since(self, namespace: str, pod: str, ref: str, digest: str) -> str | None:
        """When the CR's status (as written, or as first seen) says `pod` took this version."""
        for entry in self.statuses.get((namespace, ref), {}).get("pods") or []:
            if entry.get("pod") == pod and entry.get("deliveredHash") == digest:
                return entry.get("lastReloadTime")
        return None

    def forget(self, key: tuple[str, str]) -> None:
        self.statuses.pop(key, None)
        self.delivering_since.pop(key, None)
        self.served_secret.pop(key, None)
        self.patched.pop(key, None)
        self.reduced.pop(key, None)
        self.views.pop(key, None)
        self.wanted.pop(key, None)

    async def write(self, namespace: str, only: frozenset[str] | None = None) -> None:
        """Write what changed in the statuses of the namespace's CRs (`only`: of these); returns
        once they are written (or superseded)."""
        plan = self.store.plan(namespace)
        if plan is None:
            return
        tracked = self.store.crs(namespace)
        workers = self.store.workers(namespace)
        views = {w.state.name: w.state.view() for w in workers}  # this pass's, one per pod
        dids = _dids_by_trunk(plan)
        writes: list[asyncio.Task[None]] = []
        now, until = time.monotonic(), float("inf")
        for ref, outcome in plan.outcomes.items():
            cr = tracked.get(ref)
            if cr is None or cr.deleting or (only is not None and ref not in only):
                continue
            key = (namespace, ref)
            did_count = dids[cr.resource.name] if cr.resource.kind == TRUNK else outcome.did_count
            selected = _selected(workers, ref, outcome)
            status = self._reduce(
                key, cr, outcome, plan, [views[w.state.name] for w in selected], did_count
            )
            held = self._held_until(key, status, selected, now)
            if held is not None:
                until = min(until, held)
                continue
            shown = self.in_flight[key] if key in self.in_flight else self.patched.get(key)
            if shown == status:
                self.wanted.pop(key, None)  # a newer status queued before is moot now
                continue
            writes.append(self._queue(key, cr, status))
        started = time.monotonic()
        await asyncio.gather(*(asyncio.shield(w) for w in writes))
        if len(writes) >= MANY_WRITES:
            log.info(
                "%s: %d statuses to write, written (or superseded) in %.2f s",
                namespace, len(writes), time.monotonic() - started,
            )  # fmt: skip
        if until != float("inf"):
            self._write_later(namespace, until - time.monotonic())

    def _reduce(
        self,
        key: tuple[str, str],
        cr: Tracked,
        outcome: Outcome,
        plan: Plan,
        pods: list[PodDelivery],
        did_count: int,
    ) -> dict[str, Any]:
        """The CR's status, reduced again only when its inputs changed."""
        view = self._view(key, cr, outcome, plan)
        twilio = self.store.twilio(key[0], cr.resource.name) if view.endpoint else None
        pod_inputs = tuple(_pod_inputs(p, view) for p in pods)
        inputs = (view, outcome, did_count, pod_inputs, twilio)
        reduced = self.reduced.get(key)
        if reduced is not None and reduced[0] == inputs:
            return reduced[1]
        status = reduce_status(view, outcome, pods, did_count, twilio)
        self.reduced[key] = (inputs, status)
        return status

    def _held_until(
        self, key: tuple[str, str], status: Mapping[str, Any], selected: list[PodWorker], now: float
    ) -> float | None:
        """Until when a `Delivering` status is held back (a delivery under way most likely
        ends first); None: it may be written now."""
        # A pod not checked yet by this process (the operator just started) is no change
        # under delivery: it most likely serves what the written Ready says (adopted).
        if status["reason"] != "Delivering" or (
            _reads_as_current(self.statuses.get(key), status)
            and not any(w.adoptable for w in selected)
        ):
            self.delivering_since.pop(key, None)
            return None
        since = self.delivering_since.setdefault(key, now)
        return since + DELIVERING_GRACE if since + DELIVERING_GRACE > now else None

    def _write_later(self, namespace: str, delay: float) -> None:
        """One more pass for the namespace in `delay` seconds (one timer per namespace)."""
        loop = asyncio.get_running_loop()
        timer = self.timers.get(namespace)
        if timer is not None and not timer.cancelled() and timer.when() <= loop.time() + delay:
            return
        if timer is not None:
            timer.cancel()

        async def deferred() -> None:
            self.timers.pop(namespace, None)
            # Only the CRs whose Delivering was held back: any other change since brought
            # its own pass.
            held = frozenset(ref for ns, ref in self.delivering_since if ns == namespace)
            try:
                await self.write(namespace, held)
            except Exception as error:  # the next pass (plan, delivery, observation) retries
                log.warning("status pass of %s failed: %s", namespace, type(error).__name__)

        def start() -> None:
            task = loop.create_task(deferred())
            self.deferred.add(task)
            task.add_done_callback(self.deferred.discard)

        self.timers[namespace] = loop.call_later(max(delay, 0.0), start)

    async def stop(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        tasks = [*self.deferred, *self.writing.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _queue(
        self, key: tuple[str, str], cr: Tracked, status: dict[str, Any]
    ) -> asyncio.Task[None]:
        """`status` is the CR's newest; the task that writes it (one per CR)."""
        self.wanted[key] = (cr, status)
        task = self.writing.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._drain(key))
            self.writing[key] = task
        return task

    async def _drain(self, key: tuple[str, str]) -> None:
        """Write the CR's newest status until none is left to write."""
        try:
            while key in self.wanted:
                await self.restores.status_turn()
                async with self.calls.api:
                    if key not in self.wanted:  # superseded while waiting for the slot
                        break
                    if not self.restores.status_may_go():
                        continue  # a pod's restore began while this waited for the slot
                    cr, status = self.wanted.pop(key)
                    self.in_flight[key] = status
                    try:
                        await self._write_status(key[0], cr, status)
                    finally:
                        del self.in_flight[key]
        finally:
            if self.writing.get(key) is asyncio.current_task():
                del self.writing[key]

    async def _write_status(self, namespace: str, cr: Tracked, status: dict[str, Any]) -> None:
        """One status PATCH (and its Event), the API slot held by the caller."""
        key = (namespace, cr.resource.ref)
        old = self.statuses.get(key, {})
        final = with_transition_times(
            {**status, "conditions": [dict(c) for c in status["conditions"]]}, old, timestamp()
        )

        def write() -> None:
            self.kube.patch_status(PLURALS[cr.resource.kind], namespace, cr.resource.name, final)
            self._event_on_transition(namespace, cr, old, final)

        await self.calls.run(write)
        if self.store.crs(namespace).get(cr.resource.ref, cr).uid == cr.uid:
            self.patched[key] = status
            self.statuses[key] = final
        self._count_rotation(key, final)

    def _view(self, key: tuple[str, str], cr: Tracked, outcome: Outcome, plan: Plan) -> CRView:
        """What the reducer needs of the CR; kept while its outcome and trunk are the same
        objects (the plan keeps both for an unchanged CR)."""
        trunk = plan.trunk_specs.get(cr.resource.name) if cr.resource.kind == TRUNK else None
        problems = len(outcome.problems)  # the controller can add one after the plan
        cached = self.views.get(key)
        if cached and cached[0] is outcome and cached[1] is trunk and cached[2] == problems:
            return cached[3]
        ref = cr.resource.ref
        # The generation this plan rendered, and the files a pod must have for it: never the
        # newest generation seen, which a later plan has yet to render.
        served = (outcome.generation, None if outcome.blocked else outcome.digest)
        if cr.resource.kind == TRUNK:
            contexts = frozenset({trunk.inbound.context}) if trunk else frozenset()
            endpoint = trunk.endpoint(cr.resource.name) if trunk else None
            qualify = bool(trunk and trunk.qualify_frequency_seconds > 0)
            view = CRView(ref, *served, endpoint, contexts, qualify)
        else:
            view = CRView(ref, *served, None, outcome.user_contexts, False)
        self.views[key] = (outcome, trunk, problems, view)
        return view

    def _event_on_transition(
        self, namespace: str, cr: Tracked, old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        """An Event when Ready or Degraded changes (status or reason), not for `Delivering`."""

        def conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
            return {c.get("type", ""): c for c in status.get("conditions", [])}

        before, after = conditions(old), conditions(new)
        owner = Owner(cr.resource.kind, cr.resource.name, namespace, cr.uid)
        for kind, good in (("Ready", "True"), ("Degraded", "False")):
            now = after.get(kind)
            was = before.get(kind, {})
            if now is None or (was.get("status"), was.get("reason")) == (
                now["status"],
                now["reason"],
            ):
                continue
            if now["reason"] == "Delivering" or (kind == "Degraded" and now["status"] == good):
                continue  # transient, or the all-clear Ready already announces
            event_type = "Normal" if now["status"] == good else "Warning"
            self.kube.event(owner, event_type, now["reason"], now["message"] or kind)

    def _count_rotation(self, key: tuple[str, str], status: Mapping[str, Any]) -> None:
        """A trunk Ready again with credentials of another Secret version than when it was
        last Ready: a rotation served in every selected pod."""
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", [])
        )
        version = status.get("secretResourceVersion")
        if not ready or not version:
            return
        if self.served_secret.get(key, version) != version:
            metrics.ROTATIONS.inc()
        self.served_secret[key] = version

    def condition_states(self) -> list[metrics.ConditionState]:
        """Each CR's conditions as last written, one-hot."""
        states = []
        for (namespace, ref), status in list(self.statuses.items()):
            kind, _, name = ref.partition("/")
            for type_, value in metrics.conditions_of(status):
                states.append(metrics.ConditionState(namespace, kind, name, type_, value))
        return states


def _dids_by_trunk(plan: Plan) -> dict[str, int]:
    """The DIDs each trunk's segments bring (a trunk's status counts them)."""
    dids: dict[str, int] = defaultdict(int)
    for ref, outcome in plan.outcomes.items():
        if ref.startswith(SEGMENT + "/") and outcome.trunk:
            dids[outcome.trunk] += outcome.did_count
    return dids


def _selected(workers: list[PodWorker], ref: str, outcome: Outcome) -> list[PodWorker]:
    """The pods a CR is delivered to (a segment's: its trunk's, when it has none itself)."""
    selected = [w for w in workers if ref in w.owners]
    if not selected and outcome.trunk:
        selected = [w for w in workers if f"{TRUNK}/{outcome.trunk}" in w.owners]
    return selected
