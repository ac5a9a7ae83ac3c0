"""What the operator tracks, per namespace, and who may change it.

- `crs`: the CRs the watches reported, with their API metadata (`plan.Tracked`). Written by the
  controller, on Kopf's events and after its finalizer PATCHes.
- `plans`: the plan published for each namespace. Written by the controller, once per
  reconcile, together with the pods' assignments made from it.
- `workers`: one delivery worker per Asterisk pod (`pod_workers.PodWorker`), each with its
  pod's delivery state. Written by the pod set (`pod_workers.AsteriskPods`).
- `twilio`: the Twilio end of each opted-in trunk as last reconciled (`status.TwilioView`).
  Written by the Twilio side (`twilio_side.TwilioSide`).

The status writer, the observer and /metrics read them through a `StoreView`, which has no
way to change them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from trunk_operator.core.plan import Plan, Tracked
from trunk_operator.core.status import TwilioView

if TYPE_CHECKING:
    from trunk_operator.runtime.pod_workers import PodWorker

_NONE: Mapping[str, Tracked] = MappingProxyType({})


class Store:
    def __init__(self) -> None:
        self.crs: dict[str, dict[str, Tracked]] = defaultdict(dict)  # namespace -> ref -> CR
        self.plans: dict[str, Plan] = {}
        self.workers: dict[tuple[str, str], PodWorker] = {}  # (namespace, pod) -> its worker
        self.twilio: dict[tuple[str, str], TwilioView] = {}  # (namespace, trunk) -> its end

    def view(self) -> StoreView:
        return StoreView(self)


class StoreView:
    """Read-only access to a Store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def crs(self, namespace: str) -> Mapping[str, Tracked]:
        crs = self._store.crs.get(namespace)
        return _NONE if crs is None else MappingProxyType(crs)

    def plan(self, namespace: str) -> Plan | None:
        return self._store.plans.get(namespace)

    def workers(self, namespace: str | None = None) -> list[PodWorker]:
        """The pods' workers (of `namespace`), by namespace and pod name."""
        return [
            worker
            for (ns, _), worker in sorted(self._store.workers.items())
            if namespace is None or ns == namespace
        ]

    def twilio(self, namespace: str, trunk: str) -> TwilioView | None:
        return self._store.twilio.get((namespace, trunk))
