"""kstatus's verdict on an object, as sigs.k8s.io/cli-utils/pkg/kstatus/status computes it for
a custom resource (the rules Flux, kpt and cli-utils apply; see
../shared/reference/packaging-and-gitops.md): used to check what those tools will say of
each state the operator produces."""

from __future__ import annotations

from typing import Any


def kstatus(obj: dict[str, Any]) -> str:
    """One of Terminating, InProgress, Failed, Current."""
    meta, status = obj.get("metadata", {}), obj.get("status")
    if meta.get("deletionTimestamp"):
        return "Terminating"
    if not status:
        return "Current"  # kstatus: no status at all reads as Current
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress"
    conditions = {c.get("type"): c for c in status.get("conditions", [])}
    if conditions.get("Reconciling", {}).get("status") == "True":
        return "InProgress"
    if conditions.get("Stalled", {}).get("status") == "True":
        return "Failed"
    ready = conditions.get("Ready")
    if ready is not None and ready.get("status") != "True":
        return "InProgress"
    return "Current"
