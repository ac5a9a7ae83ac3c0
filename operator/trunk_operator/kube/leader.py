"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does
it, so that of several replicas exactly one delivers, reloads and writes.

Kopf's peering is not this: it only pauses Kopf's own handlers, and the controller's loops
would keep running in every replica. Here the controller's loops start only once this replica
holds the Lease, and stop (the process exits, the pod restarts as a follower) when it could
not renew it within the renew deadline, which is shorter than the lease duration: a leader
cut off from the API server stops acting before another replica may take over.

Timings are client-go's defaults: lease 15 s, renew deadline 10 s, retry every 2 s. Expiry is
judged by when this replica last saw the Lease change (its own clock), never by the
timestamps written in it, so clock skew between nodes does not matter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from trunk_operator.kube.client import Api, KubeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timings:
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: Api,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.timings = timings or Timings()
        self.clock = clock
        self.observed: dict[str, Any] | None = None  # the Lease's spec as last seen
        self.observed_at = 0.0
        self.renewed_at = 0.0

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        now = self.clock()
        try:
            lease = self.api.request("GET", self.path)
        except KubeError as error:
            if error.status != 404:
                raise
            return self._create(now)
        spec = lease.get("spec") or {}
        if spec != self.observed:
            self.observed, self.observed_at = spec, now
        holder = spec.get("holderIdentity")
        duration = float(spec.get("leaseDurationSeconds") or self.timings.lease_seconds)
        if holder and holder != self.identity and now < self.observed_at + duration:
            return False  # someone else holds it and has renewed recently enough
        transitions = int(spec.get("leaseTransitions") or 0)
        new_spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timings.lease_seconds),
            "acquireTime": spec.get("acquireTime") if holder == self.identity else _now_micro(),
            "renewTime": _now_micro(),
            "leaseTransitions": transitions if holder == self.identity else transitions + 1,
        }
        body = {**lease, "spec": new_spec}  # metadata.resourceVersion: optimistic concurrency
        try:
            self.api.request("PUT", self.path, body)
        except KubeError as error:
            if error.status == 409:  # another replica wrote it first
                return False
            raise
        self.observed, self.observed_at, self.renewed_at = new_spec, now, now
        return True

    def _create(self, now: float) -> bool:
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.timings.lease_seconds),
            "acquireTime": _now_micro(),
            "renewTime": _now_micro(),
            "leaseTransitions": 0,
        }
        body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        try:
            self.api.request(
                "POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases", body
            )
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        self.observed, self.observed_at, self.renewed_at = spec, now, now
        return True

    def release(self) -> None:
        """Give the Lease up on a clean shutdown (client-go's ReleaseOnCancel): the other
        replica takes over at its next retry instead of after the lease duration."""
        try:
            lease = self.api.request("GET", self.path)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            self.api.request("PUT", self.path, {**lease, "spec": spec})
        except KubeError as error:
            log.warning("leader election: releasing the lease failed: %s", error)

    async def acquire(self) -> None:
        """Until this replica holds the Lease."""
        while True:
            try:
                if await asyncio.to_thread(self.try_acquire_or_renew):
                    log.info("leader election: %s holds lease %s", self.identity, self.name)
                    return
            except KubeError as error:
                log.warning("leader election: %s", error)
            await asyncio.sleep(self.timings.retry_seconds)

    async def hold(self) -> None:
        """Renew every retry period; returns when the Lease was not renewed within the renew
        deadline (lost to another replica, or the API server out of reach). Each attempt is
        bounded by what is left of the deadline: a slow or retried request must not carry the
        leader past it (its API client should not retry either: see handlers)."""
        while True:
            await asyncio.sleep(self.timings.retry_seconds)
            left = self.timings.renew_deadline_seconds - (self.clock() - self.renewed_at)
            try:
                held = await asyncio.wait_for(
                    asyncio.to_thread(self.try_acquire_or_renew), max(left, 0.1)
                )
            except (KubeError, TimeoutError) as error:
                log.warning("leader election: renewing failed: %s", error or "timed out")
                held = False
            if not held and self.clock() - self.renewed_at >= self.timings.renew_deadline_seconds:
                log.error("leader election: lease %s lost; stopping", self.name)
                return
            if (
                not held
                and self.observed
                and self.observed.get("holderIdentity")
                not in (
                    None,
                    self.identity,
                )
            ):
                log.error("leader election: lease %s taken by another replica", self.name)
                return
