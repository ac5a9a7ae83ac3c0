"""The observer: reads back what each Asterisk pod serves, for live status and drift.

One exec per pod per interval for all its CRs (less often for a pod whose read is long:
OBSERVE_SHARE): endpoint states and contacts, the user contexts, the delivered hash and the
files' digests, and AUDIT_BATCH endpoints in depth, round robin. Drift (files changed by hand,
a container that restarted empty, an endpoint Asterisk changed in memory) wakes the pod's
delivery worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from trunk_operator.core.desired import expected_for, user_contexts_of
from trunk_operator.core.verify import Expected, Probe, drifted, verify
from trunk_operator.kube.client import describe
from trunk_operator.pod import channel
from trunk_operator.runtime.pod_workers import AsteriskPods, PodEvents, PodWorker

log = logging.getLogger(__name__)

# A pod is observed at most once per OBSERVE_SHARE times its last observation's exec: reading
# a large pod takes Asterisk seconds, which every interval would keep its CLI busy.
OBSERVE_SHARE = 10


class Observer:
    def __init__(self, pods: AsteriskPods, events: PodEvents) -> None:
        self.pods = pods
        self.events = events

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.pods.settings.observe_interval)
            for (namespace, _), worker in list(self.pods.workers.items()):
                if time.monotonic() < worker.observe_after:
                    continue
                try:
                    took = await self.observe(namespace, worker)
                    worker.observe_after = time.monotonic() + (OBSERVE_SHARE - 1) * took
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    text = str(error) if isinstance(error, channel.ExecError) else describe(error)
                    log.info("observing %s/%s failed: %s", namespace, worker.pod.name, text)

    async def observe(self, namespace: str, worker: PodWorker) -> float:
        """Read what the pod serves, write statuses, repair drift; the exec's seconds."""
        if worker.busy.locked():
            return 0.0  # a delivery is under way: it reads the pod itself
        pods = self.pods
        pod_exec = pods.kube.pod_exec(namespace, worker.pod.name, pods.settings.container)
        # Not under the lock: a delivery must not wait for a read (a large pod's can take tens
        # of seconds on a busy node). One that comes meanwhile makes this read stale: dropped below.
        delivered, delivered_files = worker.delivered_owners, worker.delivered_files
        expected = expected_for(delivered, pods.expected_endpoints)
        batch = set(worker.audit_batch(delivered))
        audited = Expected(tuple(e for e in expected.endpoints if e.name in batch))
        probe = Probe(frozenset(e.name for e in audited.endpoints), user_contexts_of(delivered))
        started = time.monotonic()
        pushed = worker.pod.ari_secret is not None
        # Over ARI, though, a push waits for the read: a PJSIP CLI read that prints an endpoint
        # the push replaces can find it between its two states and crash Asterisk 22 (the
        # pusher's notes, pod/scripts/ari-push.pl). Reads are 1/OBSERVE_SHARE of the time.
        async with worker.busy if pushed else contextlib.nullcontext():
            observation = await pods.calls.run(
                channel.observe, pod_exec, expected, pods.settings.exec_timeout, probe, pushed
            )
        took = time.monotonic() - started
        if worker.delivered_owners is not delivered or worker.busy.locked():
            return took  # a delivery came meanwhile: its own reads are newer than these
        worker.state.observation = observation
        worker.audit_cursor += len(audited.endpoints)
        drift = (
            "the delivered hash changed"
            if observation.delivered_hash != worker.state.delivered_hash
            else "its files changed"
            if drifted(delivered_files, observation)
            else "; ".join(p.message for p in verify(audited, observation)[:3])
        )
        if (
            drift
            and worker.delivered_owners is delivered
            and worker.state.delivered_hash == worker.state.desired_hash
            and worker.state.last_reload_result == "Verified"
        ):
            log.info("drift in %s/%s (%s): redelivering", namespace, worker.pod.name, drift)
            worker.forget_delivered()  # whatever is there, it is not our set
            worker.wake.set()
        await self.events.observed(namespace)
        return took
