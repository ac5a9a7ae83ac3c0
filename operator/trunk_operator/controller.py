"""The one reconcile loop: namespace plans, rendered state, per-pod delivery and status.

Kopf handlers only feed this controller (resources, pods, Secret changes) and wait on it for
deletions. Work is level-based and coalesced:

- a namespace marked dirty is re-planned once, however many events arrived meanwhile;
- each Asterisk pod has one worker that always delivers the newest desired set, so a burst of
  changes becomes one exec round (changes arriving during a reload fold into the next);
- an observer execs once per pod per interval for all trunks, to refresh live status and
  detect drift (files changed by hand, a restarted container) by content hashes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trunk_operator import asterisk, metrics
from trunk_operator.apiclient import KubeError, describe
from trunk_operator.asterisk import Expected, ExpectedEndpoint, Probe
from trunk_operator.kube import Kube, Owner, SecretRead, keyed_secret_hash
from trunk_operator.models import TwilioTrunkSpec
from trunk_operator.plan import (
    SEGMENT,
    TRUNK,
    Inputs,
    Outcome,
    Plan,
    Problem,
    RenderCache,
    Resource,
    plan_namespace,
)
from trunk_operator.render import (
    EXTENSIONS_DIR,
    PJSIP_DIR,
    Files,
    aors,
    files_hash,
    identify_sources,
    pod_files,
    trunk_names,
)
from trunk_operator.status import CRView, PodDelivery, reduce_status, with_transition_times
from trunk_operator.watchaudit import AUDIT_SECONDS, WatchAudit

log = logging.getLogger(__name__)

PLURALS = {TRUNK: "twiliotrunks", SEGMENT: "didsegments"}
RETRY_SECONDS = 5.0  # after a failed write of one CR's rendered state
STUCK_PLAN_SECONDS = 600.0  # API calls time out after 60 s each: a plan this old is stuck
FINALIZER = "trunks.asterisk-operator.dev/delivered"
AUDIT_BATCH = 10  # endpoints the observer re-checks in depth per pod and round
# Threads for the controller's blocking calls: API calls (API_CALLS at once) plus one exec per
# pod. Its own pool: asyncio's default one has min(32, cores + 4) threads (6 on 2 cores), so
# 1,000 new CRs ran 6 API calls at a time, and deliveries that hang on slow pods would hold
# back the Lease renewals and Kopf's probes, which use it.
API_CALLS = 16  # client-go bursts 10-30
IO_THREADS = 48

_T = TypeVar("_T")


@dataclass(frozen=True)
class Settings:
    default_selector: Mapping[str, str] = field(default_factory=lambda: {"app": "asterisk"})
    container: str = "asterisk"
    observe_interval: float = 5.0
    exec_timeout: float = 180.0
    readiness_condition: str = "trunks.asterisk-operator.dev/delivered"


@dataclass
class Tracked:
    """A CR as the controller knows it."""

    resource: Resource
    uid: str
    deleting: bool = False
    finalizers: tuple[str, ...] = ()
    resource_version: str = ""


@dataclass
class Pod:
    name: str
    uid: str
    labels: dict[str, str]
    ready: bool
    incarnation: str  # changes when the container restarts
    gate_open: bool = False  # our readiness gate is True in the pod's status


@dataclass
class PodWorker:
    pod: Pod
    state: PodDelivery
    owners: dict[str, Outcome] = field(default_factory=dict)  # CR ref -> what the pod should get
    files: Files = field(default_factory=dict)  # files_of(owners)
    delivered_owners: dict[str, Outcome] = field(default_factory=dict)  # what it has
    delivered_files: Files = field(default_factory=dict)  # files_of(delivered_owners)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # One exec conversation with a pod at a time: an observation that overlaps a delivery
    # would read the old hash and report drift that is not there.
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    adoptable: bool = True  # first delivery: the pod may already hold this set (restart)
    # The desired set of the last round that ended with some CRs refused: nothing more to do
    # for it (the others were delivered) until the desired set changes again.
    settled_hash: str | None = None
    audit_cursor: int = 0  # where the observer's in-depth audit of the endpoints goes on

    def set_delivered(self, owners: dict[str, Outcome], files: Files | None = None) -> None:
        """What the pod has now: these CRs, as `files` (from `files_of(owners)`)."""
        before, now = self.state.delivered, _now()
        self.delivered_owners = owners
        self.delivered_files = files if files is not None else files_of(owners)
        self.state.delivered = {ref: outcome.digest for ref, outcome in owners.items()}
        self.state.delivered_at = {
            ref: self.state.delivered_at.get(ref, now) if before.get(ref) == digest else now
            for ref, digest in self.state.delivered.items()
        }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _with_mask(source: str) -> str:
    return source if "/" in source else f"{source}/32"


def expected_endpoint(
    owner: str, name: str, spec: TwilioTrunkSpec, username: str = "", password_sha256: str = ""
) -> ExpectedEndpoint:
    names = trunk_names(name, spec)
    matches = (
        frozenset({f"X-Twilio-AccountSid: {spec.inbound.account_sid}"})
        if spec.inbound.account_sid
        else frozenset(_with_mask(s) for s in identify_sources(spec))
    )
    return ExpectedEndpoint(
        owner=owner,
        name=names.endpoint,
        auth=names.auth,
        aors={a.id: a.contact for a in aors(name, spec)},
        identify=names.identify,
        matches=matches,
        username=username,
        password_sha256=password_sha256,
        transport=spec.transport,
        codecs=tuple(str(c) for c in spec.codecs),
        media_encryption="sdes" if spec.secure else "no",
        context=names.dispatch_context,
    )


def changed_endpoints(owners: Mapping[str, Outcome], delivered: Mapping[str, Outcome]) -> set[str]:
    """Endpoints whose trunk files differ from what the pod has: checked in depth."""
    return {
        trunk_names(outcome.trunk or "", outcome.trunk_spec).endpoint
        for ref, outcome in owners.items()
        if outcome.trunk_spec is not None
        and ref == f"{TRUNK}/{outcome.trunk}"
        and (ref not in delivered or delivered[ref].digest != outcome.digest)
    }


def changed_refs(owners: Mapping[str, Outcome], delivered: Mapping[str, Outcome]) -> set[str]:
    return {
        ref
        for ref, outcome in owners.items()
        if ref not in delivered or delivered[ref].digest != outcome.digest
    }


def user_contexts_of(owners: Mapping[str, Outcome]) -> frozenset[str]:
    """The user's contexts these CRs send calls to: read on every delivery and observation."""
    return frozenset(c for outcome in owners.values() for c in outcome.user_contexts)


def probe_for(owners: Mapping[str, Outcome], delivered: Mapping[str, Outcome]) -> Probe:
    """What a delivery reads back beyond the listings: the endpoints it changes in depth, the
    contexts it changes, and every user context the pod's CRs send calls to."""
    contexts = set(user_contexts_of(owners))
    for ref in changed_refs(owners, delivered):
        contexts |= owners[ref].defined_contexts
    return Probe(frozenset(changed_endpoints(owners, delivered)), frozenset(contexts))


def files_of(outcomes: Mapping[str, Outcome]) -> Files:
    """What a pod with these CRs holds: one file per directory, parts in ref order."""
    return pod_files(
        (ref, outcome.public | outcome.secret) for ref, outcome in sorted(outcomes.items())
    )


def reloads_for(files: Files, before: Files | None) -> set[str]:
    """The directories whose file changed: only their module reloads (a rotation reloads no
    dialplan, a DIDSegment no PJSIP). All of them when what the pod holds is not known."""
    if before is None:
        return {PJSIP_DIR, EXTENSIONS_DIR}
    return {p.split("/", 1)[0] for p in set(files) | set(before) if files.get(p) != before.get(p)}


def expected_for(
    outcomes: Mapping[str, Outcome], cache: dict[tuple[str, str], ExpectedEndpoint] | None = None
) -> Expected:
    """What Asterisk must show after loading these CRs' files, each part tagged with its CR.

    `cache`: ExpectedEndpoints by (ref, digest), which they depend on only (10,000 trunks:
    0.4 s to make each time)."""
    endpoints = []
    contexts: dict[str, str] = {}
    transports: dict[str, list[str]] = defaultdict(list)
    for ref, outcome in sorted(outcomes.items()):
        spec = outcome.trunk_spec
        if ref == f"{TRUNK}/{outcome.trunk}" and spec is not None:
            key = (ref, outcome.digest)
            endpoint = cache.get(key) if cache is not None else None
            if endpoint is None:
                endpoint = expected_endpoint(
                    ref,
                    outcome.trunk or "",
                    spec,
                    outcome.username or "",
                    outcome.password_sha256 or "",
                )
                if cache is not None:
                    cache[key] = endpoint
            endpoints.append(endpoint)
            transports[spec.transport].append(ref)
        for context in sorted(outcome.defined_contexts):
            contexts.setdefault(context, ref)
    return Expected(tuple(endpoints), contexts, {t: tuple(r) for t, r in transports.items()})


class Controller:
    def __init__(self, kube: Kube, settings: Settings | None = None) -> None:
        self.kube = kube
        self.settings = settings or Settings()
        self.resources: dict[str, dict[str, Tracked]] = defaultdict(dict)  # ns -> ref -> CR
        self.pods: dict[str, dict[str, Pod]] = defaultdict(dict)
        self.workers: dict[tuple[str, str], PodWorker] = {}
        self.plans: dict[str, Plan] = {}
        self.last_good: dict[tuple[str, str], Outcome] = {}  # (ns, ref) -> last unblocked
        self.written: dict[tuple[str, str], tuple[str, str]] = {}  # rendered-state hashes
        # The status of each CR as we last wrote it (as first seen, before that), and what it
        # was computed from. Kept here, not on Tracked: watch events replace Tracked objects
        # while a write is in flight, and a transition compared with a stale status is
        # announced twice.
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.served_secret: dict[tuple[str, str], str] = {}  # Secret version last Ready with
        self.patched: dict[tuple[str, str], dict[str, Any]] = {}
        self.dirty: set[str] = set()
        self.dirty_event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.stats: dict[str, int] = defaultdict(int)
        self.status_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Credentials as last read; every watch event on a Secret drops its entry.
        self.secrets: dict[tuple[str, str], SecretRead | None] = {}
        self.secret_events: dict[tuple[str, str], int] = defaultdict(int)
        self.api_calls = asyncio.Semaphore(API_CALLS)  # API calls in flight
        self.io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="trunkop-io")
        self.finalizing: set[tuple[str, str]] = set()  # finalizer PATCHes in flight
        self.planning_since: float | None = None  # a plan in progress started then
        self.watch_audit = WatchAudit()
        self.render_caches: dict[str, RenderCache] = defaultdict(RenderCache)
        # What Asterisk must show per CR version (pruned to the CRs of the current plans).
        self.expected_endpoints: dict[tuple[str, str], ExpectedEndpoint] = {}
        # Readiness gates we closed (restarted containers) until a delivery reopens them; the
        # closing is awaited before that.
        self.gate_closing: dict[tuple[str, str], asyncio.Task[bool]] = {}

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
        known = self.resources[meta["namespace"]].get(resource.ref)
        key = (meta["namespace"], resource.ref)
        if known is None or known.uid != meta.get("uid", ""):
            # Afterwards, watch events lag behind our own status writes: ours is the truth.
            self.statuses[key] = dict(body.get("status") or {})
            self.patched.pop(key, None)
        tracked = Tracked(
            resource,
            meta.get("uid", ""),
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            resource_version=meta.get("resourceVersion", ""),
        )
        self.resources[meta["namespace"]][resource.ref] = tracked
        if known is None or (known.resource, known.uid, known.deleting) != (
            tracked.resource,
            tracked.uid,
            tracked.deleting,
        ):
            self.mark(meta["namespace"])  # our own status writes come back here: no re-plan
        elif tracked.deleting or FINALIZER not in tracked.finalizers:
            self.mark(meta["namespace"])  # the finalizer still needs adding or releasing

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self.resources[namespace].pop(f"{kind}/{name}", None)
        self.statuses.pop((namespace, f"{kind}/{name}"), None)
        self.served_secret.pop((namespace, f"{kind}/{name}"), None)
        self.patched.pop((namespace, f"{kind}/{name}"), None)
        self.mark(namespace)

    def secret_changed(self, namespace: str, name: str) -> None:
        self.secrets.pop((namespace, name), None)
        self.secret_events[(namespace, name)] += 1
        for tracked in self.resources.get(namespace, {}).values():
            if tracked.resource.kind == TRUNK and (
                tracked.resource.spec.get("credentials", {}).get("secretName") == name
            ):
                self.mark(namespace)
                return

    def upsert_pod(self, body: Mapping[str, Any]) -> None:
        meta, status = body["metadata"], body.get("status") or {}
        containers = status.get("containerStatuses") or []
        ours = [c for c in containers if c.get("name") == self.settings.container]
        if not any(c.get("name") == self.settings.container for c in body["spec"]["containers"]):
            return
        # A pod being deleted is done: no new deliveries, and it holds no trunk's Ready (its
        # containers stay ready while a preStop lets calls finish).
        ready = (
            status.get("phase") == "Running"
            and bool(ours and ours[0].get("ready"))
            and not meta.get("deletionTimestamp")
        )
        incarnation = (
            f"{ours[0].get('containerID', '')}/{ours[0].get('restartCount', 0)}" if ours else ""
        )
        namespace = meta["namespace"]
        # Closed by us until a delivery reopens it, whatever a late event still shows.
        gate_open = (namespace, meta["name"]) not in self.gate_closing and any(
            c.get("type") == self.settings.readiness_condition and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        pod = Pod(
            meta["name"], meta["uid"], dict(meta.get("labels") or {}), ready, incarnation, gate_open
        )
        before = self.pods[namespace].get(pod.name)
        self.pods[namespace][pod.name] = pod
        if before and before.incarnation not in ("", incarnation) and gate_open:
            self._close_gate(namespace, pod)
        worker = self.workers.get((namespace, pod.name))
        if worker and before and (before.incarnation != incarnation or before.uid != pod.uid):
            worker.state.delivered_hash = None  # a new container starts empty
            worker.set_delivered({})
        if worker:
            worker.pod = pod
        if (
            before is None
            or before.ready != ready
            or before.labels != pod.labels
            or (before.incarnation != incarnation)
        ):
            self.mark(namespace)

    def forget_pod(self, namespace: str, name: str) -> None:
        self.pods[namespace].pop(name, None)
        self.gate_closing.pop((namespace, name), None)
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

        trunks, segments, pods, hashes = await self._io(listing)
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
            asyncio.create_task(self._observe_loop(), name="observe"),
            asyncio.create_task(self._watch_audit_loop(), name="watch-audit"),
        ]

    def health(self) -> dict[str, int]:
        """For the liveness probe: raises when a loop died, a plan is stuck or a watch missed
        changes, so kubelet restarts the pod instead of leaving a live process that does
        nothing."""
        loops = self.tasks + [w.task for w in self.workers.values() if w.task]
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

    async def _watch_audit_loop(self) -> None:
        while True:
            await asyncio.sleep(AUDIT_SECONDS)
            try:
                listed = await self._io(self._listed_versions)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the API is down: that is not the watch's fault
                log.info("watch audit: listing failed: %s", describe(error))
                continue
            known = {
                (namespace, ref): tracked.resource_version
                for namespace, tracked_crs in self.resources.items()
                for ref, tracked in tracked_crs.items()
            }
            if missed := self.watch_audit.check(listed, known):
                log.error("the watches missed changes of %d CRs: %s", len(missed), missed[:5])

    def _listed_versions(self) -> dict[tuple[str, str], str]:
        return {
            (body["metadata"]["namespace"], f"{kind}/{body['metadata']['name']}"): body[
                "metadata"
            ].get("resourceVersion", "")
            for kind in (TRUNK, SEGMENT)
            for body in self.kube.list_custom(PLURALS[kind])
        }

    async def _io(self, call: Callable[..., _T], *args: Any) -> _T:
        """A blocking call (API, exec) on the controller's own threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io, functools.partial(call, *args))

    async def stop(self) -> None:
        tasks = self.tasks + [w.task for w in self.workers.values() if w.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
        self.stats["plans"] += 1
        tracked = self.resources.get(namespace, {})
        live = [t for t in tracked.values() if not t.deleting]
        inputs = Inputs(
            trunks=[t.resource for t in live if t.resource.kind == TRUNK],
            segments=[t.resource for t in live if t.resource.kind == SEGMENT],
        )
        names = sorted(
            {t.spec.get("credentials", {}).get("secretName") or "" for t in inputs.trunks}
        )
        # Taken from the reads themselves: Secret events may empty the cache meanwhile.
        found = await asyncio.gather(*(self._read_secret(namespace, n) for n in names if n))
        for name, secret in zip([n for n in names if n], found, strict=True):
            if secret is not None:
                inputs.secrets[name] = secret.data
                inputs.secret_versions[name] = secret.resource_version
        plan = plan_namespace(inputs, self.render_caches[namespace])

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
        # One CR whose rendered state the API refuses keeps its last good version; the others
        # go ahead (an exception here would hold back the whole namespace).
        for ref, result in zip(refs, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
            if isinstance(result, Exception):
                text = describe(result)
                log.warning("storing the rendered state of %s %s failed: %s", namespace, ref, text)
                plan.outcomes[ref].problems.append(
                    Problem(
                        "RenderedStateNotStored",
                        f"its rendered ConfigMap or Secret could not be written ({text});"
                        " the last good configuration is kept; retrying",
                    )
                )
                asyncio.get_running_loop().call_later(RETRY_SECONDS, self.mark, namespace)

        # Published at once, with no await in between: a status written meanwhile (by a
        # delivery or the observer) must see a plan and pod assignments that agree, or it
        # would report a new generation against the old assignment (Ready for files no pod
        # has) or a CR that no pod is assigned yet (NoAsteriskPods).
        self.plans[namespace] = plan
        for ref, outcome in plan.outcomes.items():
            if not outcome.blocked:
                self.last_good[(namespace, ref)] = outcome
        for key in [k for k in self.last_good if k[0] == namespace and k[1] not in plan.outcomes]:
            del self.last_good[key]  # deleted CRs: their files leave the pods
            self.written.pop(key, None)
        current = {(ref, o.digest) for (_, ref), o in self.last_good.items()}
        for key in [k for k in self.expected_endpoints if k not in current]:
            del self.expected_endpoints[key]
        self._assign_pods(namespace)
        await self.write_statuses(namespace)
        await self.sync_finalizers(namespace)

    async def _read_secret(self, namespace: str, name: str) -> SecretRead | None:
        key = (namespace, name)
        if key in self.secrets:
            return self.secrets[key]
        seen = self.secret_events[key]
        async with self.api_calls:
            secret = await self._io(self.kube.read_secret, namespace, name)
        if self.secret_events[key] == seen:  # else it changed meanwhile: read again next time
            self.secrets[key] = secret
        return secret

    async def _write_rendered(
        self, key: tuple[str, str], digest: tuple[str, str], owner: Owner, outcome: Outcome
    ) -> None:
        async with self.api_calls:
            await self._io(
                self.kube.write_rendered,
                owner,
                outcome.public,
                outcome.secret,
                self.written.get(key),
            )
        self.written[key] = digest

    def _trunk_selector(self, spec: TwilioTrunkSpec) -> Mapping[str, str]:
        selector = spec.asterisk_selector
        return (selector.match_labels if selector else None) or self.settings.default_selector

    def _assign_pods(self, namespace: str) -> None:
        """Give every ready pod the union of the last good files of the CRs that select it."""
        outcomes = {ref: o for (ns, ref), o in self.last_good.items() if ns == namespace}
        pods = [p for p in self.pods.get(namespace, {}).values() if p.ready]
        for pod in pods:
            owners: dict[str, Outcome] = {}
            for ref, outcome in sorted(outcomes.items()):
                trunk = outcomes.get(f"{TRUNK}/{outcome.trunk}")
                spec = trunk.trunk_spec if trunk else None
                if spec is not None and _selector_matches(self._trunk_selector(spec), pod.labels):
                    owners[ref] = outcome
            worker = self._worker(namespace, pod)
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
                del self.workers[(ns, name)]

    def _worker(self, namespace: str, pod: Pod) -> PodWorker:
        worker = self.workers.get((namespace, pod.name))
        if worker is None:
            worker = PodWorker(pod, PodDelivery(pod.name))
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
            try:
                async with worker.busy:
                    await self._deliver_once(namespace, worker)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                text = str(error) if isinstance(error, asterisk.ExecError) else describe(error)
                log.warning("delivery to %s/%s failed: %s", namespace, worker.pod.name, text)
                metrics.DELIVERIES.labels(result="Error").inc()
                worker.state.last_reload_result = f"error: {text[:200]}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30)
                worker.wake.set()
            await self.write_statuses(namespace)
            await self.sync_finalizers(namespace)  # a deleted CR may have just left this pod

    async def _deliver_once(self, namespace: str, worker: PodWorker) -> None:
        owners, files = dict(worker.owners), worker.files  # set together by _assign_pods
        desired_hash = worker.state.desired_hash  # of `owners`: both set by _assign_pods
        worker.settled_hash = None
        closing = self.gate_closing.get((namespace, worker.pod.name))
        if closing is not None:
            await closing  # before any reopening
        if worker.adoptable:
            worker.adoptable = False
            if await self._adopt(namespace, worker, owners, files):
                return
        result = await self._deliver(namespace, worker, owners, files)
        if result.ok:
            return
        # Keep the CRs Asterisk refused at their last delivered version; the others go ahead.
        culprits = {owner for problem in result.problems for owner in problem.owners}
        worker.state.problems = {
            ref: [p.message for p in result.problems if ref in p.owners or not p.owners]
            for ref in (culprits or owners)
        }
        if not culprits or culprits >= set(owners):
            worker.state.delivered_hash = None
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
            # Nothing more to do until something changes: a fixed CR changes the desired hash.
            # Not `delivered_hash`: that is what the pod has, and the desired set may have
            # moved on while this round ran.
            worker.settled_hash = desired_hash

    async def _adopt(
        self, namespace: str, worker: PodWorker, owners: dict[str, Outcome], files: Files
    ) -> bool:
        """Take over a pod that already serves exactly this set (the operator restarted):
        verified by content and by what Asterisk shows, so no reload is needed."""
        pod_exec = self.kube.pod_exec(namespace, worker.pod.name, self.settings.container)
        expected = expected_for(owners, self.expected_endpoints)
        # Every object's presence and every context; in depth a first batch of endpoints
        # (the observer audits the rest, AUDIT_BATCH per round): the files are byte for byte
        # a set that was verified in depth when it was delivered.
        probe = Probe(
            frozenset(self._audit_batch(worker, owners)),
            frozenset(expected.contexts) | user_contexts_of(owners),
        )
        observation = await self._io(
            asterisk.observe, pod_exec, expected, self.settings.exec_timeout, probe
        )
        if (
            observation.delivered_hash != files_hash(files)
            or asterisk.drifted(files, observation)
            or asterisk.verify(expected, observation)
        ):
            return False
        worker.state.delivered_hash = observation.delivered_hash
        worker.state.observation = observation
        worker.state.problems = {}
        worker.state.last_reload_result = "Verified"
        worker.set_delivered(owners, files)
        log.info(
            "%s/%s already serves %d resources: adopted", namespace, worker.pod.name, len(owners)
        )
        return True

    async def _deliver(
        self,
        namespace: str,
        worker: PodWorker,
        owners: dict[str, Outcome],
        files: Files | None = None,
    ) -> asterisk.DeliveryResult:
        pod_exec = self.kube.pod_exec(namespace, worker.pod.name, self.settings.container)
        self.stats["reloads"] += 1
        started = time.monotonic()
        files = files if files is not None else files_of(owners)
        before = worker.delivered_files if worker.state.delivered_hash is not None else None
        result = await self._io(
            asterisk.deliver,
            pod_exec,
            files,
            expected_for(owners, self.expected_endpoints),
            self.settings.exec_timeout,
            probe_for(owners, worker.delivered_owners),
            reloads_for(files, before),
        )
        worker.state.last_reload_time = _now()
        worker.state.observation = result.observation
        if result.ok:
            worker.state.delivered_hash = result.hash
            worker.state.problems = {}
            worker.state.last_reload_result = "Verified"
            worker.set_delivered(owners, files)
            if not worker.pod.gate_open:  # a PATCH on every delivery would cost each one ~30 ms
                pod = worker.pod
                pod.gate_open = await self._io(self._set_readiness, namespace, pod.name, True)
                if pod.gate_open:
                    self.gate_closing.pop((namespace, pod.name), None)
        else:
            worker.state.last_reload_result = "RolledBack" if result.rolled_back else "Failed"
        if not result.ok:
            log.warning(
                "%s/%s refused: %s",
                namespace,
                worker.pod.name,
                "; ".join(p.message for p in result.problems[:3]),
            )
        metrics.DELIVERIES.labels(result=worker.state.last_reload_result).inc()
        metrics.DELIVERY_SECONDS.observe(time.monotonic() - started)
        log.info(
            "%s/%s: %d resources, hash %s: %s in %.2f s (%s)",
            namespace,
            worker.pod.name,
            len(owners),
            result.hash[:12],
            worker.state.last_reload_result,
            time.monotonic() - started,
            ", ".join(f"{name} {took:.2f} s" for name, took in result.phases.items()),
        )
        return result

    @staticmethod
    def _audit_batch(worker: PodWorker, owners: Mapping[str, Outcome]) -> list[str]:
        """The next AUDIT_BATCH endpoints of the pod, round robin: over the rounds, every
        endpoint is read back in depth again (Asterisk's memory can change without files)."""
        names = sorted(changed_endpoints(owners, {}))
        if not names:
            return []
        start = worker.audit_cursor % len(names)
        return (names[start:] + names[:start])[:AUDIT_BATCH]

    def _close_gate(self, namespace: str, pod: Pod) -> None:
        """A restarted container serves nothing verified yet, and the condition outlives it:
        closed at once (the container is not ready yet), reopened by its first delivery."""
        pod.gate_open = False
        self.gate_closing[(namespace, pod.name)] = asyncio.get_running_loop().create_task(
            self._io(self._set_readiness, namespace, pod.name, False)
        )

    def _set_readiness(self, namespace: str, pod: str, ready: bool) -> bool:
        """The pod readiness gate: traffic waits until the trunks are delivered and verified.
        Opened after a delivery, closed when the container restarts (the condition outlives
        the container, and a new one serves nothing verified yet). True once written."""
        condition = {
            "type": self.settings.readiness_condition,
            "status": "True" if ready else "False",
            "lastTransitionTime": _now(),
        }
        try:
            self.kube.set_pod_condition(namespace, pod, condition)
            return True
        except KubeError as error:
            log.debug("readiness gate on %s/%s not set: %s", namespace, pod, error)
            return False

    # ---- observation -----------------------------------------------------------------

    async def _observe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.observe_interval)
            for (namespace, _), worker in list(self.workers.items()):
                try:
                    await self.observe(namespace, worker)
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    text = str(error) if isinstance(error, asterisk.ExecError) else describe(error)
                    log.info("observing %s/%s failed: %s", namespace, worker.pod.name, text)

    async def observe(self, namespace: str, worker: PodWorker) -> None:
        pod_exec = self.kube.pod_exec(namespace, worker.pod.name, self.settings.container)
        async with worker.busy:
            # Read under the lock: a delivery that held it has just changed what the pod has.
            delivered, delivered_files = worker.delivered_owners, worker.delivered_files
            expected = expected_for(delivered, self.expected_endpoints)
            batch = set(self._audit_batch(worker, delivered))
            audited = Expected(tuple(e for e in expected.endpoints if e.name in batch))
            probe = Probe(
                frozenset(e.name for e in audited.endpoints),
                user_contexts_of(delivered),
            )
            observation = await self._io(asterisk.observe, pod_exec, expected, 30, probe)
        worker.state.observation = observation
        worker.audit_cursor += len(audited.endpoints)
        drift = (
            "the delivered hash changed"
            if observation.delivered_hash != worker.state.delivered_hash
            else "its files changed"
            if asterisk.drifted(delivered_files, observation)
            else "; ".join(p.message for p in asterisk.verify(audited, observation)[:3])
        )
        if (
            drift
            and worker.delivered_owners is delivered
            and worker.state.delivered_hash == worker.state.desired_hash
            and worker.state.last_reload_result == "Verified"
        ):
            log.info("drift in %s/%s (%s): redelivering", namespace, worker.pod.name, drift)
            worker.state.delivered_hash = None  # whatever is there, it is not our set
            worker.set_delivered({})
            worker.wake.set()
        await self.write_statuses(namespace)

    # ---- status ----------------------------------------------------------------------

    async def write_statuses(self, namespace: str) -> None:
        # Serialized per namespace: two writers computing transitions from the same old
        # status would both record the transition (and both emit its Event).
        async with self.status_locks[namespace]:
            await self._write_statuses(namespace)

    async def _write_statuses(self, namespace: str) -> None:
        plan = self.plans.get(namespace)
        if plan is None:
            return
        tracked = self.resources.get(namespace, {})
        workers = [w for (ns, _), w in sorted(self.workers.items()) if ns == namespace]
        dids_by_trunk: dict[str, int] = defaultdict(int)
        for r, o in plan.outcomes.items():
            if r.startswith(SEGMENT + "/") and o.trunk:
                dids_by_trunk[o.trunk] += o.did_count
        writes = []
        for ref, outcome in plan.outcomes.items():
            cr = tracked.get(ref)
            if cr is None or cr.deleting:
                continue
            view = self._view(ref, cr, outcome, plan)
            did_count = (
                dids_by_trunk[cr.resource.name] if cr.resource.kind == TRUNK else outcome.did_count
            )
            pods = [w.state for w in workers if ref in w.owners]
            if not pods and outcome.trunk:
                pods = [w.state for w in workers if f"{TRUNK}/{outcome.trunk}" in w.owners]
            status = reduce_status(view, outcome, pods, did_count)
            if outcome.conflicts:
                status["conflicts"] = outcome.conflicts
                status["conflictCount"] = outcome.conflict_count
            key = (namespace, ref)
            if self.patched.get(key) == status:
                continue
            old = self.statuses.get(key, {})
            final = with_transition_times(
                {**status, "conditions": [dict(c) for c in status["conditions"]]}, old, _now()
            )
            writes.append(self._write_status(namespace, cr, status, old, final))
        await asyncio.gather(*writes)

    async def _write_status(
        self,
        namespace: str,
        cr: Tracked,
        status: dict[str, Any],
        old: dict[str, Any],
        final: dict[str, Any],
    ) -> None:
        def write() -> None:
            self.kube.patch_status(PLURALS[cr.resource.kind], namespace, cr.resource.name, final)
            self._event_on_transition(namespace, cr, old, final)

        async with self.api_calls:
            await self._io(write)
        key = (namespace, cr.resource.ref)
        if self.resources.get(namespace, {}).get(cr.resource.ref, cr).uid == cr.uid:
            self.patched[key] = status
            self.statuses[key] = final
        self._count_rotation(key, final)

    def _view(self, ref: str, cr: Tracked, outcome: Outcome, plan: Plan) -> CRView:
        # The generation this plan rendered, and the files a pod must have for it: never the
        # newest generation seen, which a later plan has yet to render.
        served = (outcome.generation, None if outcome.blocked else outcome.digest)
        if cr.resource.kind == TRUNK:
            trunk = plan.trunk_specs.get(cr.resource.name)
            contexts = frozenset({trunk.inbound.context}) if trunk else frozenset()
            endpoint = trunk.endpoint(cr.resource.name) if trunk else None
            qualify = bool(trunk and trunk.qualify_frequency_seconds > 0)
            return CRView(ref, *served, endpoint, contexts, qualify)
        return CRView(ref, *served, None, outcome.user_contexts, False)

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

    # ---- what /metrics reads at scrape time --------------------------------------------

    def condition_states(self) -> list[metrics.ConditionState]:
        """Only where the loops run (the leader): a follower's view would be stale."""
        if not self.tasks:
            return []
        states = []
        for (namespace, ref), status in list(self.statuses.items()):
            kind, _, name = ref.partition("/")
            for type_, value in metrics.conditions_of(status):
                states.append(metrics.ConditionState(namespace, kind, name, type_, value))
        return states

    def contact_states(self) -> list[metrics.ContactState]:
        if not self.tasks:
            return []
        states = []
        for (namespace, pod), worker in list(self.workers.items()):
            observation = worker.state.observation
            for endpoint in (observation.endpoints if observation else {}).values():
                states += [
                    metrics.ContactState(namespace, pod, endpoint.name, c.uri, c.status, c.rtt_ms)
                    for c in endpoint.contacts
                ]
        return states

    # ---- deletion --------------------------------------------------------------------

    def removed_everywhere(self, namespace: str, ref: str) -> bool:
        """No pod serves, or is to get, this CR's files (pods that went away count)."""
        return all(
            ref not in w.delivered_owners and ref not in w.owners
            for (ns, _), w in self.workers.items()
            if ns == namespace
        )

    async def sync_finalizers(self, namespace: str) -> None:
        """Our finalizer on every live CR; released once a deleted CR's files left every pod.

        Held by the API server, it makes deletion wait for the pods even when the operator
        was down at the time: on start, `prime()` sees the CR with its deletionTimestamp.
        """
        changes = []
        for tracked in list(self.resources.get(namespace, {}).values()):
            ref = tracked.resource.ref
            have = FINALIZER in tracked.finalizers
            if tracked.deleting and have and self.removed_everywhere(namespace, ref):
                wanted = [f for f in tracked.finalizers if f != FINALIZER]
            elif not tracked.deleting and not have:
                wanted = [*tracked.finalizers, FINALIZER]
            else:
                continue
            if (namespace, ref) not in self.finalizing:  # another loop's PATCH is in flight
                changes.append(self._set_finalizers(namespace, tracked, wanted))
        # Concurrently (bounded by api_calls): 1,000 new CRs are 1,000 PATCHes.
        await asyncio.gather(*changes)

    async def _set_finalizers(self, namespace: str, tracked: Tracked, wanted: list[str]) -> None:
        key = (namespace, tracked.resource.ref)
        self.finalizing.add(key)
        try:
            async with self.api_calls:
                await self._io(
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
