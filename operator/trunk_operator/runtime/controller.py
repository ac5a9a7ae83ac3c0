"""The one reconcile loop: namespace plans, rendered state, and what follows from them.

Kopf handlers only feed this controller (resources, pods, Secret changes) and wait on it for
deletions. Work is level-based and coalesced: a namespace marked dirty is re-planned once,
however many events arrived meanwhile; the plan's rendered state is stored in the API, then
every ready pod is given the last good files of the CRs that select it (`pod_workers.AsteriskPods`
delivers and observes them), and statuses (`status_writer.StatusWriter`) and finalizers follow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from trunk_operator.core.plan import (
    PLURALS,
    SEGMENT,
    TRUNK,
    Inputs,
    Outcome,
    Plan,
    Problem,
    RenderCache,
    Resource,
    Tracked,
    credentials_secret,
    plan_namespace,
)
from trunk_operator.core.verify import ExpectedEndpoint
from trunk_operator.kube.api import Kube, Owner, SecretRead, keyed_secret_hash
from trunk_operator.kube.client import KubeError, describe
from trunk_operator.runtime import metrics
from trunk_operator.runtime.blocking import BlockingCalls
from trunk_operator.runtime.observer import Observer
from trunk_operator.runtime.pod_workers import AsteriskPods
from trunk_operator.runtime.restores import Restores
from trunk_operator.runtime.settings import Settings
from trunk_operator.runtime.status_writer import StatusWriter
from trunk_operator.runtime.store import Store
from trunk_operator.runtime.twilio_side import TwilioSide
from trunk_operator.runtime.watch_audit import (
    AUDIT_SECONDS,
    WatchAudit,
    audit_forever,
    listed_versions,
)

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # after a failed write of one CR's rendered state
STUCK_PLAN_SECONDS = 600.0  # API calls time out after 60 s each: a plan this old is stuck
SLOW_RECONCILE = 2.0  # a namespace's reconcile that takes this long is logged, with its phases
FINALIZER = "trunks.asterisk-operator.dev/delivered"


class Controller:
    def __init__(self, kube: Kube, settings: Settings | None = None) -> None:
        self.kube = kube
        self.settings = settings or Settings()
        self.calls = BlockingCalls()
        self.restores = Restores()
        self.store = Store()
        self.last_good: dict[tuple[str, str], Outcome] = {}  # (ns, ref) -> last unblocked
        self.written: dict[tuple[str, str], tuple[str, str]] = {}  # rendered-state hashes
        self.dirty: set[str] = set()
        self.dirty_event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.stats: dict[str, int] = defaultdict(int)
        # Credentials as last read; every watch event on a Secret drops its entry.
        self.secrets: dict[tuple[str, str], SecretRead | None] = {}
        self.secret_events: dict[tuple[str, str], int] = defaultdict(int)
        self.finalizing: set[tuple[str, str]] = set()  # finalizer PATCHes in flight
        self.planning_since: float | None = None  # a plan in progress started then
        self.watch_audit = WatchAudit()
        self.render_caches: dict[str, RenderCache] = defaultdict(RenderCache)
        # What Asterisk must show per CR version (pruned to the CRs of the current plans).
        self.expected_endpoints: dict[tuple[str, str], ExpectedEndpoint] = {}
        self.pods = AsteriskPods(
            kube,
            self.settings,
            self.calls,
            self.stats,
            self.expected_endpoints,
            self.store.workers,
            events=self,
            restores=self.restores,
        )
        self.observer = Observer(self.pods, events=self)
        self.status = StatusWriter(kube, self.calls, self.store.view(), self.restores)
        self.twilio = TwilioSide(kube, self.calls, self.store, self, self.settings.twilio_base_url)

    # ---- inputs from Kopf ------------------------------------------------------------

    def upsert(self, kind: str, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        resource = Resource(
            kind,
            meta["name"],
            meta.get("creationTimestamp", ""),
            dict(body.get("spec") or {}),
            meta.get("generation"),
        )
        known = self.store.crs[meta["namespace"]].get(resource.ref)
        if known is not None and known.resource == resource:
            resource = known.resource  # the same objects: the plan's caches go by identity
        key = (meta["namespace"], resource.ref)
        if known is None or known.uid != meta.get("uid", ""):
            self.status.seen(key, dict(body.get("status") or {}))
        tracked = Tracked(
            resource,
            meta.get("uid", ""),
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            resource_version=meta.get("resourceVersion", ""),
        )
        self.store.crs[meta["namespace"]][resource.ref] = tracked
        if known is None or (known.resource, known.uid, known.deleting) != (
            tracked.resource,
            tracked.uid,
            tracked.deleting,
        ):
            self.mark(meta["namespace"])  # our own status writes come back here: no re-plan
        elif tracked.deleting or FINALIZER not in tracked.finalizers:
            self.mark(meta["namespace"])  # the finalizer still needs adding or releasing

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self.store.crs[namespace].pop(f"{kind}/{name}", None)
        self.status.forget((namespace, f"{kind}/{name}"))
        self.mark(namespace)

    def secret_changed(self, namespace: str, name: str) -> None:
        self.twilio.secret_changed(namespace, name)
        self.secrets.pop((namespace, name), None)
        self.secret_events[(namespace, name)] += 1
        for tracked in self.store.crs.get(namespace, {}).values():
            resource = tracked.resource
            if resource.kind == TRUNK and credentials_secret(resource.name, resource.spec) == name:
                self.mark(namespace)
                return

    def upsert_pod(self, body: Mapping[str, Any]) -> None:
        if self.pods.upsert(body):
            self.mark(body["metadata"]["namespace"])

    def forget_pod(self, namespace: str, name: str) -> None:
        self.pods.forget(namespace, name)
        self.mark(namespace)

    def mark(self, namespace: str) -> None:
        self.dirty.add(namespace)
        self.dirty_event.set()

    # ---- lifecycle -------------------------------------------------------------------

    async def prime(self) -> None:
        """Know every CR, pod and rendered object before the first plan.

        Without this, a restarted operator could plan a namespace whose pods it has seen but
        whose trunks it has not yet, and empty live Asterisk pods until the rest arrive.
        """

        def listing() -> tuple[list[Any], list[Any], list[Any], dict[Any, tuple[str, str]]]:
            return (
                self.kube.list_custom(PLURALS[TRUNK]),
                self.kube.list_custom(PLURALS[SEGMENT]),
                self.kube.list_pods(),
                self.kube.rendered_hashes(),
            )

        trunks, segments, pods, hashes = await self.calls.api_call(listing)
        for body in trunks:
            self.upsert(TRUNK, body)
        for body in segments:
            self.upsert(SEGMENT, body)
        for body in pods:
            self.upsert_pod(body)
        kinds = {TRUNK.lower(): TRUNK, SEGMENT.lower(): SEGMENT}
        for (namespace, kind, name), digests in hashes.items():
            if kind in kinds:
                self.written[(namespace, f"{kinds[kind]}/{name}")] = digests

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._plan_loop(), name="plan"),
            asyncio.create_task(self.observer.loop(), name="observe"),
            asyncio.create_task(
                audit_forever(
                    self.watch_audit,
                    lambda: self.calls.api_call(listed_versions, self.kube),
                    self._known_versions,
                ),
                name="watch-audit",
            ),
        ]
        self.twilio.start()

    def health(self) -> dict[str, int]:
        """For the liveness probe: raises when a loop died, a plan is stuck or a watch missed
        changes, so kubelet restarts the pod instead of leaving a live process that does
        nothing."""
        loops = self.tasks + self.pods.tasks()
        for task in loops:
            if task.done() and not task.cancelled():
                raise RuntimeError(f"the {task.get_name()} loop ended: {task.exception()!r}")
        since = self.planning_since
        if since is not None and time.monotonic() - since > STUCK_PLAN_SECONDS:
            raise RuntimeError(f"a plan has been running for {time.monotonic() - since:.0f} s")
        if missed := self.watch_audit.missed:
            namespace, ref = missed[0]
            raise RuntimeError(
                f"the watches missed {len(missed)} change(s) for {AUDIT_SECONDS:.0f} s,"
                f" e.g. {ref} in {namespace}"
            )
        return dict(self.stats)

    def _known_versions(self) -> dict[tuple[str, str], str]:
        return {
            (namespace, ref): tracked.resource_version
            for namespace, tracked_crs in self.store.crs.items()
            for ref, tracked in tracked_crs.items()
        }

    async def stop(self) -> None:
        tasks = self.tasks + self.pods.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.twilio.stop()
        await self.status.stop()

    async def _plan_loop(self) -> None:
        while True:
            await self.dirty_event.wait()
            self.dirty_event.clear()
            while self.dirty:
                namespace = self.dirty.pop()
                started = self.planning_since = time.monotonic()
                try:
                    await self.reconcile_namespace(namespace)
                    metrics.RECONCILES.labels(result="success").inc()
                except Exception as error:
                    metrics.RECONCILES.labels(result="error").inc()
                    # No traceback: exception texts from API calls can quote response bodies.
                    log.error(
                        "reconcile of namespace %s failed (%s); retrying",
                        namespace,
                        error if isinstance(error, KubeError) else describe(error),
                    )
                    await asyncio.sleep(2)
                    self.mark(namespace)
                finally:
                    self.planning_since = None
                    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    # ---- the reconcile ---------------------------------------------------------------

    async def reconcile_namespace(self, namespace: str) -> None:
        """One pass over a namespace: its inputs, the plan, each CR's rendered state, the plan
        and the pods' assignments published, then statuses and finalizers."""
        self.stats["plans"] += 1
        took: dict[str, float] = {}  # phase -> seconds, for the log of a slow reconcile
        since = time.monotonic()

        def phase(name: str) -> None:
            nonlocal since
            now = time.monotonic()
            took[name], since = now - since, now

        inputs = await self._inputs(namespace)
        phase("secrets")
        plan = plan_namespace(inputs, self.render_caches[namespace])
        phase("plan")
        await self._store_rendered(namespace, plan)
        self._publish(namespace, plan)
        phase("rendered state")
        await self.write_statuses(namespace)
        phase("statuses")
        await self.sync_finalizers(namespace)
        phase("finalizers")
        if (total := sum(took.values())) >= SLOW_RECONCILE:
            log.info(
                "%s: %d resources reconciled in %.2f s (%s)",
                namespace, len(plan.outcomes), total,
                ", ".join(f"{name} {seconds:.2f} s" for name, seconds in took.items()),
            )  # fmt: skip

    async def _inputs(self, namespace: str) -> Inputs:
        """The namespace's live CRs, and the credentials Secrets its trunks name."""
        live = [t for t in self.store.crs.get(namespace, {}).values() if not t.deleting]
        inputs = Inputs(
            trunks=[t.resource for t in live if t.resource.kind == TRUNK],
            segments=[t.resource for t in live if t.resource.kind == SEGMENT],
        )
        names = sorted({credentials_secret(t.name, t.spec) for t in inputs.trunks})
        # Taken from the reads themselves: Secret events may empty the cache meanwhile.
        found = await asyncio.gather(*(self._read_secret(namespace, n) for n in names if n))
        for name, secret in zip([n for n in names if n], found, strict=True):
            if secret is not None:
                inputs.secrets[name] = secret.data
                inputs.secret_versions[name] = secret.resource_version
                if secret.ours:
                    inputs.operators_secrets.add(name)
        return inputs

    async def _store_rendered(self, namespace: str, plan: Plan) -> None:
        """Each changed CR's rendered state in the API. One CR whose rendered state the API
        refuses keeps its last good version; the others go ahead (an exception here would hold
        back the whole namespace)."""
        tracked = self.store.crs.get(namespace, {})
        refs, writes = [], []
        for ref, outcome in plan.outcomes.items():
            key = (namespace, ref)
            digest = (outcome.public_hash, keyed_secret_hash(outcome.secret_hash))
            if not outcome.blocked and self.written.get(key) != digest:
                cr = tracked[ref]
                owner = Owner(cr.resource.kind, cr.resource.name, namespace, cr.uid, outcome.trunk)
                refs.append(ref)
                writes.append(self._write_rendered(key, digest, owner, outcome))
        results = await asyncio.gather(*writes, return_exceptions=True)
        for ref, result in zip(refs, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            if isinstance(result, Exception):
                text = describe(result)
                log.warning("storing the rendered state of %s %s failed: %s", namespace, ref, text)
                # A new outcome: the plan's can be the last plan's object, held elsewhere.
                refused = plan.outcomes[ref]
                plan.outcomes[ref] = replace(
                    refused,
                    problems=[
                        *refused.problems,
                        Problem(
                            "RenderedStateNotStored",
                            f"its rendered ConfigMap or Secret could not be written ({text});"
                            " the last good configuration is kept; retrying",
                        ),
                    ],
                )
                asyncio.get_running_loop().call_later(RETRY_SECONDS, self.mark, namespace)

    def _publish(self, namespace: str, plan: Plan) -> None:
        """The plan and the pods' assignments made from it, at once, with no await in between:
        a status written meanwhile (by a delivery or the observer) must see a plan and pod
        assignments that agree, or it would report a new generation against the old
        assignment (Ready for files no pod has) or a CR that no pod is assigned yet."""
        before = self.store.plans.get(namespace)
        self.store.plans[namespace] = plan
        self._twilio_changes(namespace, before, plan)
        for ref, outcome in plan.outcomes.items():
            if not outcome.blocked:
                self.last_good[(namespace, ref)] = outcome
        for key in [k for k in self.last_good if k[0] == namespace and k[1] not in plan.outcomes]:
            del self.last_good[key]  # deleted CRs: their files leave the pods
            self.written.pop(key, None)
        current = {(ref, o.digest) for (_, ref), o in self.last_good.items()}
        for key in [k for k in self.expected_endpoints if k not in current]:
            del self.expected_endpoints[key]
        self.pods.assign(
            namespace, {ref: o for (ns, ref), o in self.last_good.items() if ns == namespace}
        )

    def _twilio_changes(self, namespace: str, before: Plan | None, plan: Plan) -> None:
        """Opted-in trunks whose spec changed (or that left the plan) sync their Twilio end."""
        old = before.twilio_specs if before else {}
        for name in {*old, *plan.twilio_specs}:
            if plan.twilio_specs.get(name) != old.get(name):
                self.twilio.touch(namespace, name)

    async def _read_secret(self, namespace: str, name: str) -> SecretRead | None:
        key = (namespace, name)
        if key in self.secrets:
            return self.secrets[key]
        seen = self.secret_events[key]
        secret = await self.calls.api_call(self.kube.read_secret, namespace, name)
        if self.secret_events[key] == seen:  # else it changed meanwhile: read again next time
            self.secrets[key] = secret
        return secret

    async def _write_rendered(
        self, key: tuple[str, str], digest: tuple[str, str], owner: Owner, outcome: Outcome
    ) -> None:
        await self.calls.api_call(
            self.kube.write_rendered, owner, outcome.public, outcome.secret, self.written.get(key)
        )
        self.written[key] = digest

    # ---- status -----------------------------------------------------------------------

    async def write_statuses(self, namespace: str) -> None:
        await self.status.write(namespace)

    # ---- what the pod set tells (pod_workers.PodEvents) ---------------------------------

    async def delivered(self, namespace: str) -> None:
        await self.write_statuses(namespace)
        await self.sync_finalizers(namespace)  # a deleted CR may have just left a pod

    async def observed(self, namespace: str) -> None:
        await self.write_statuses(namespace)

    def reported_since(self, namespace: str, pod: str, ref: str, digest: str) -> str | None:
        return self.status.reported_since(namespace, pod, ref, digest)

    # ---- what the Twilio side tells and asks (twilio_side.TwilioEvents) ------------------

    async def twilio_changed(self, namespace: str) -> None:
        await self.write_statuses(namespace)

    def credential_written(self, namespace: str, secret: str) -> None:
        self.secret_changed(namespace, secret)

    def served_secret(self, namespace: str, trunk: str) -> str | None:
        return self.status.served_secret.get((namespace, f"{TRUNK}/{trunk}"))

    def twilio_status(self, namespace: str, trunk: str) -> Mapping[str, Any]:
        written = self.status.statuses.get((namespace, f"{TRUNK}/{trunk}")) or {}
        return written.get("twilio") or {}

    # ---- what /metrics reads at scrape time: only where the loops run (the leader) -------

    def condition_states(self) -> list[metrics.ConditionState]:
        return self.status.condition_states() if self.tasks else []

    def contact_states(self) -> list[metrics.ContactState]:
        if not self.tasks:
            return []
        states = []
        for (namespace, pod), worker in list(self.pods.workers.items()):
            observation = worker.state.observation
            for endpoint in (observation.endpoints if observation else {}).values():
                states += [
                    metrics.ContactState(namespace, pod, endpoint.name, c.uri, c.status, c.rtt_ms)
                    for c in endpoint.contacts
                ]
        return states

    # ---- deletion --------------------------------------------------------------------

    async def sync_finalizers(self, namespace: str) -> None:
        """Our finalizer on every live CR; released once a deleted CR's files left every pod.

        Held by the API server, it makes deletion wait for the pods even when the operator
        was down at the time: on start, `prime()` sees the CR with its deletionTimestamp.
        """
        changes = []
        for tracked in list(self.store.crs.get(namespace, {}).values()):
            ref = tracked.resource.ref
            have = FINALIZER in tracked.finalizers
            if tracked.deleting and have and self.pods.removed_everywhere(namespace, ref):
                wanted = [f for f in tracked.finalizers if f != FINALIZER]
            elif not tracked.deleting and not have:
                wanted = [*tracked.finalizers, FINALIZER]
            else:
                continue
            if (namespace, ref) not in self.finalizing:  # another loop's PATCH is in flight
                changes.append(self._set_finalizers(namespace, tracked, wanted))
        # Concurrently (bounded by calls.api_call): 1,000 new CRs are 1,000 PATCHes.
        await asyncio.gather(*changes)

    async def _set_finalizers(self, namespace: str, tracked: Tracked, wanted: list[str]) -> None:
        key = (namespace, tracked.resource.ref)
        self.finalizing.add(key)
        try:
            await self.calls.api_call(
                self.kube.set_finalizers,
                PLURALS[tracked.resource.kind],
                namespace,
                tracked.resource.name,
                wanted,
                tracked.resource_version,
            )
            tracked.finalizers = tuple(wanted)
        finally:
            self.finalizing.discard(key)
