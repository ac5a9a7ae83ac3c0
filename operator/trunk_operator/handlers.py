"""Kopf wiring only: every handler feeds the controller or waits on it."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import uuid
from typing import Any

import kopf

from trunk_operator.core.models import GROUP
from trunk_operator.core.plan import SEGMENT, TRUNK
from trunk_operator.kube.api import LABEL_MANAGED_BY, MANAGER, Kube
from trunk_operator.kube.client import Api, Connection, load_config
from trunk_operator.kube.leader import LeaderElector
from trunk_operator.runtime import metrics
from trunk_operator.runtime.controller import Controller
from trunk_operator.runtime.settings import Settings

SETTINGS = Settings.from_env()  # parsed once, when Kopf loads this module
controller: Controller | None = None


def _controller() -> Controller:
    if controller is None:
        raise kopf.TemporaryError("operator is starting", delay=1)
    return controller


@functools.cache
def connection() -> Connection:
    """One set of credentials for our API client and Kopf's watches."""
    return load_config()


LEASE_NAME = "asterisk-trunk-operator"
_background: set[asyncio.Task[None]] = set()
_leading: list[LeaderElector] = []  # the elector while this replica holds the Lease


def leader_elector(settings: Settings) -> LeaderElector | None:
    """TRUNKOP_LEADER_ELECTION=true (the chart's default): a Lease in POD_NAMESPACE."""
    if not settings.leader_election:
        return None
    identity = f"{settings.hostname or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    # Its own client: no retries, short timeouts, so renewals fail inside the renew deadline.
    api = Api(connection(), pool_size=2, retries=0, timeout=2.0)
    return LeaderElector(api, settings.pod_namespace, LEASE_NAME, identity)


async def _lead(ctrl: Controller, elector: LeaderElector) -> None:
    await elector.acquire()
    metrics.LEADER.set(1)
    ctrl.start()
    _leading.append(elector)
    await elector.hold()  # cancelled at shutdown: _leading keeps it for the release
    _leading.remove(elector)
    # Lost (or cut off from the API server): stop acting now, before another replica may
    # take over, then exit; the pod restarts as a follower.
    metrics.LEADER.set(0)
    await ctrl.stop()
    os.kill(os.getpid(), signal.SIGTERM)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global controller
    # Deletion is the controller's, with its own finalizer (FINALIZER): Kopf only watches.
    # Kopf removes *its* finalizer from objects whose handlers do not need one, so its name
    # must differ from ours, or the two would take turns adding and removing it.
    settings.persistence.finalizer = f"{GROUP}/kopf"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = 100  # our own Events only: Kopf's would echo handler errors
    # Per-object workers: few and short-lived. A burst of a thousand objects otherwise keeps a
    # thousand idle workers (and their memory) around for seconds.
    settings.queueing.worker_limit = 100
    settings.queueing.idle_timeout = 1.0
    # Long watches die silently behind some proxies; reconnect well before they do.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # No scanning: the CRDs come with the chart (prime() below lists the CRs before Kopf
    # resolves its resources, through API discovery, once) and the namespaces are given as
    # exact names. So Kopf never lists or watches CRDs or namespaces: the operator needs no
    # cluster-scoped permission at all.
    settings.scanning.disabled = True
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # One line per watch event ("Handler ... succeeded") drowns what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The operator's own rendered Secrets never need to wake it: filter them out server-side.
    settings.watching.label_selectors["", "v1", "secrets"] = f"{LABEL_MANAGED_BY}!={MANAGER}"
    controller = Controller(Kube(connection(), SETTINGS.watch_namespaces), SETTINGS)
    await controller.prime()
    elector = leader_elector(SETTINGS)
    if elector is None:
        controller.start()
        metrics.LEADER.set(1)
    else:
        # Kopf's watches keep feeding the controller in every replica; its loops (plans,
        # deliveries, observation, status, finalizers) run only in the one holding the Lease.
        _background.add(asyncio.create_task(_lead(controller, elector), name="leader"))
    if SETTINGS.metrics_port:
        metrics.serve(SETTINGS.metrics_port, controller)


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf's watches use our credentials. Kopf calls this again after a 401: the token is
    read again from its file then, so a rotated ServiceAccount token is picked up."""
    conn = connection()
    conn.token.refresh()
    return kopf.ConnectionInfo(
        server=conn.server,
        ca_path=conn.ca_file,
        insecure=conn.insecure,
        certificate_path=conn.cert_file,
        private_key_path=conn.key_file,
        token=conn.token.get(),
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    # Renewals stop first (a renewal after the release would take the Lease back), then the
    # loops, then the Lease is given up: the other replica takes over at its next retry.
    for task in _background:
        task.cancel()
    await asyncio.gather(*_background, return_exceptions=True)
    if controller is not None:
        await controller.stop()
    for elector in _leading:
        await asyncio.to_thread(elector.release)


@kopf.on.event(GROUP, "twiliotrunks")
async def trunk_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    _feed(TRUNK, body, type)


@kopf.on.event(GROUP, "didsegments")
async def segment_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    _feed(SEGMENT, body, type)


def _feed(kind: str, body: kopf.Body, event_type: str | None) -> None:
    if event_type == "DELETED":
        _controller().forget(kind, body.metadata.namespace or "", body.metadata.name or "")
    else:
        _controller().upsert(kind, body)


@kopf.on.event(GROUP, "twilioaccounts")
async def account_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    twilio = _controller().twilio
    if type == "DELETED":
        await twilio.forget_account(body.metadata.namespace or "", body.metadata.name or "")
    else:
        twilio.upsert_account(body)


@kopf.on.event("", "v1", "secrets")
async def secret_event(body: kopf.Body, **_: Any) -> None:
    # Only a trigger: the data is read fresh by the reconcile, never kept from the event.
    _controller().secret_changed(body.metadata.namespace or "", body.metadata.name or "")


@kopf.on.event("", "v1", "pods")
async def pod_event(body: kopf.Body, type: str | None, **_: Any) -> None:
    if type == "DELETED":
        _controller().forget_pod(body.metadata.namespace or "", body.metadata.name or "")
    else:
        _controller().upsert_pod(body)


@kopf.on.probe(id="watching")
def watching(**_: Any) -> dict[str, int]:
    """The liveness endpoint answers 500 when the controller is not healthy (a loop died, a
    plan is stuck): PermanentError, or Kopf would retry the probe instead of failing it."""
    try:
        return _controller().health()
    except RuntimeError as error:
        raise kopf.PermanentError(str(error)) from None
