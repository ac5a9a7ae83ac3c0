"""The pods' readiness gate: the condition the operator writes into each Asterisk pod's status,
so traffic waits until its trunks are delivered and verified.

Opened after a verified delivery (or adoption), closed as soon as the Asterisk container
restarts: the condition outlives the container, and a new one serves nothing verified yet.
Written only when it changes: a PATCH per delivery would be an API write for nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from trunk_operator.core.status import timestamp
from trunk_operator.kube.api import Kube
from trunk_operator.kube.client import KubeError
from trunk_operator.runtime.blocking import BlockingCalls

log = logging.getLogger(__name__)


class GatedPod(Protocol):
    name: str
    gate_open: bool  # our condition is True in the pod's status, as far as we know


class ReadinessGates:
    def __init__(self, kube: Kube, calls: BlockingCalls, condition: str) -> None:
        self.kube = kube
        self.calls = calls
        self.condition = condition
        # Gates we closed (restarted containers) until a delivery reopens them; the closing
        # is awaited before that.
        self.closing: dict[tuple[str, str], asyncio.Task[bool]] = {}

    def is_closing(self, namespace: str, pod: str) -> bool:
        """Closed by us until a delivery reopens it, whatever a late pod event still shows."""
        return (namespace, pod) in self.closing

    async def settled(self, namespace: str, pod: str) -> None:
        """Until a closing of this pod's gate is written (before any reopening)."""
        closing = self.closing.get((namespace, pod))
        if closing is not None:
            await closing

    async def open(self, namespace: str, pod: GatedPod) -> None:
        """After a verified set; only when it is not open."""
        if not pod.gate_open:
            # Not behind the API-call bound: the delivery worker waits for this one PATCH per
            # pod, which must not queue behind the status writes of 1,000 new CRs.
            pod.gate_open = await self.calls.run(self._write, namespace, pod.name, True)
            if pod.gate_open:
                self.closing.pop((namespace, pod.name), None)

    def close(self, namespace: str, pod: GatedPod) -> None:
        """Closed at once (the restarted container is not ready yet), reopened by its first
        delivery."""
        pod.gate_open = False
        self.closing[(namespace, pod.name)] = asyncio.get_running_loop().create_task(
            self.calls.run(self._write, namespace, pod.name, False)
        )

    def forget(self, namespace: str, pod: str) -> None:
        self.closing.pop((namespace, pod), None)

    def _write(self, namespace: str, pod: str, ready: bool) -> bool:
        """True once written."""
        condition = {
            "type": self.condition,
            "status": "True" if ready else "False",
            "lastTransitionTime": timestamp(),
        }
        try:
            self.kube.set_pod_condition(namespace, pod, condition)
            return True
        except KubeError as error:
            log.warning("readiness gate on %s/%s not set: %s", namespace, pod, error)
            return False
