"""Status as a pure reducer: (plan outcome, per-pod delivery state) -> the CR's status."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trunk_operator.core.plan import Outcome, Problem
from trunk_operator.core.verify import Observation


def timestamp() -> str:
    """Now, as status times are written (RFC 3339, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class PodDelivery:
    """What the operator knows about one Asterisk pod."""

    name: str
    desired_hash: str | None = None  # of the pod's whole set
    delivered_hash: str | None = None
    desired: dict[str, str] = field(default_factory=dict)  # CR ref -> its digest, to deliver
    delivered: dict[str, str] = field(default_factory=dict)  # CR ref -> digest the pod has
    # CR ref -> digest of the delivery under way (None: none): until it ends, Asterisk may
    # serve that version as well as the delivered one. Left set when a delivery's end is not
    # known (its exec failed), until the next one ends.
    delivering: dict[str, str] | None = None
    delivered_at: dict[str, str] = field(default_factory=dict)  # CR ref -> when it took it
    last_reload_time: str | None = None
    last_reload_result: str | None = None
    problems: dict[str, list[str]] = field(default_factory=dict)  # CR ref -> Asterisk's words
    observation: Observation | None = None


@dataclass(frozen=True)
class CRView:
    """What the reducer needs of one CR."""

    ref: str
    generation: int | None  # the generation the plan rendered (status.observedGeneration)
    digest: str | None  # files rendered from it, which every pod must serve; None if blocked
    endpoint: str | None  # trunks: the PJSIP endpoint; segments: None
    contexts: frozenset[str]  # user contexts this CR sends calls to (must exist)
    qualify: bool


# Ready reasons that need a change by someone (the spec, another resource, the Secret's
# content, the Asterisk deployment) and will not resolve by waiting.
STALLED_REASONS = frozenset(
    {
        "InvalidSpec",
        "InvalidCredentials",
        "EndpointNameConflict",
        "OutboundContextConflict",
        "AmbiguousInboundIdentification",
        "TransportNotFound",
        "AsteriskRejected",
    }
)


def _serves(pod: PodDelivery, ref: str, digest: str | None) -> bool:
    """The pod serves this version of the CR, whatever a delivery under way does."""
    under_way = pod.delivering is None or pod.delivering.get(ref) == digest
    return pod.delivered.get(ref) == digest and under_way


def _condition(
    type_: str, ok: bool | None, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "Unknown" if ok is None else ("True" if ok else "False"),
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def reduce_status(
    cr: CRView, outcome: Outcome, pods: Sequence[PodDelivery], did_count: int | None = None
) -> dict[str, Any]:
    """The full status (without lastTransitionTime, which `with_transition_times` adds)."""
    blocking = [p for p in outcome.problems if p.blocking]
    warnings: list[Problem] = [p for p in outcome.problems if not p.blocking]
    conditions = []
    if blocking:
        first = blocking[0]
        conditions.append(
            _condition("Rendered", False, first.reason, _join(blocking), cr.generation)
        )
    else:
        conditions.append(
            _condition("Rendered", True, "Rendered", "configuration rendered", cr.generation)
        )

    pod_status = []
    failed = [p for p in pods if p.problems.get(cr.ref)]
    # Per resource: another resource's change to the same pod does not make this one pending.
    # Compared with what this generation rendered (blocked: the last good version the pods
    # keep), never with what a pod was last told to want; and with what a delivery under way
    # brings: a spec changed back (A, B, A) is A again while the pod is being given B.
    pending = [
        p
        for p in pods
        if p not in failed and not _serves(p, cr.ref, cr.digest or p.desired.get(cr.ref))
    ]
    if not pods:
        delivered = _condition(
            "Delivered", False, "NoAsteriskPods", "no ready Asterisk pod matches", cr.generation
        )
    elif failed:
        words = "; ".join(f"{p.name}: {' / '.join(p.problems[cr.ref])}" for p in failed)
        reason = _delivery_reason(failed[0].problems[cr.ref])
        delivered = _condition("Delivered", False, reason, words[:1000], cr.generation)
    elif pending:
        delivered = _condition(
            "Delivered",
            False,
            "Delivering",
            f"delivering to {', '.join(p.name for p in pending)}",
            cr.generation,
        )
    else:
        delivered = _condition(
            "Delivered",
            True,
            "Delivered",
            f"loaded and verified in {len(pods)} pod(s)",
            cr.generation,
        )
    conditions.append(delivered)

    states: list[str] = []
    reachable: bool | None = None
    missing_contexts: set[str] = set()
    for pod in pods:
        entry: dict[str, Any] = {
            "pod": pod.name,
            # This CR's version in the pod, not the pod's whole set: another CR's change must
            # not rewrite this status (with 1,000 trunks, 1,000 writes per change).
            "deliveredHash": pod.delivered.get(cr.ref),
            "lastReloadTime": pod.delivered_at.get(cr.ref),
            "lastReloadResult": pod.last_reload_result,
        }
        obs = pod.observation
        if obs is not None:
            missing_contexts |= (set(cr.contexts) & obs.contexts_checked) - obs.contexts
            if cr.endpoint:
                endpoint = obs.endpoints.get(cr.endpoint)
                if endpoint is not None:
                    states.append(endpoint.state)
                    entry["endpointState"] = endpoint.state
                    # No RTT: it changes at every qualify (it is in /metrics).
                    entry["contacts"] = [
                        {"uri": c.uri, "status": c.status} for c in endpoint.contacts
                    ]
                    avail = any(c.status == "Avail" for c in endpoint.contacts)
                    reachable = avail if reachable is None else (reachable and avail)
        pod_status.append({k: v for k, v in entry.items() if v is not None})

    if cr.endpoint:
        if not cr.qualify:
            conditions.append(
                _condition("Reachable", None, "QualifyDisabled", "qualify is off", cr.generation)
            )
        elif reachable is None:
            conditions.append(
                _condition("Reachable", None, "NotObserved", "no observation yet", cr.generation)
            )
        else:
            conditions.append(
                _condition(
                    "Reachable",
                    reachable,
                    "ContactAvailable" if reachable else "EndpointUnavailable",
                    "Twilio answers OPTIONS"
                    if reachable
                    else "no contact is Avail: Twilio does not answer OPTIONS from every pod",
                    cr.generation,
                )
            )

    degraded: list[tuple[str, str]] = [(p.reason, p.message) for p in warnings]
    if missing_contexts:
        degraded.append(
            (
                "ContextMissing",
                f"dialplan context(s) {', '.join(sorted(missing_contexts))} do not exist in"
                " Asterisk; calls sent there fail",
            )
        )
    if cr.endpoint and cr.qualify and reachable is False:
        degraded.append(("EndpointUnavailable", "Twilio is not reachable from every pod"))
    if blocking and pods:
        degraded.append((blocking[0].reason, "the last good configuration is kept in Asterisk"))
    conditions.append(
        _condition(
            "Degraded",
            bool(degraded),
            degraded[0][0] if degraded else "AsExpected",
            "; ".join(m for _, m in degraded)[:1000] if degraded else "",
            cr.generation,
        )
    )

    ready = not blocking and delivered["status"] == "True"
    ready_reason = blocking[0].reason if blocking else delivered["reason"] if not ready else "Ready"
    ready_message = conditions[0]["message"] if blocking else delivered["message"]
    conditions.insert(0, _condition("Ready", ready, ready_reason, ready_message, cr.generation))

    # kstatus (Flux, kpt, cli-utils): Reconciling=True while work is in flight, Stalled=True
    # for what only a change by someone can fix; everything else that is not Ready may still
    # resolve itself (a Secret or a pod appearing) and is only "in progress".
    reconciling = delivered["reason"] == "Delivering" and not blocking
    conditions.append(
        _condition(
            "Reconciling",
            reconciling,
            "Delivering" if reconciling else "Settled",
            delivered["message"] if reconciling else "",
            cr.generation,
        )
    )
    stalled_reason = ready_reason if not ready and ready_reason in STALLED_REASONS else None
    conditions.append(
        _condition(
            "Stalled",
            stalled_reason is not None,
            stalled_reason or "NotStalled",
            ready_message if stalled_reason else "",
            cr.generation,
        )
    )

    status: dict[str, Any] = {
        "observedGeneration": cr.generation,
        "conditions": conditions,
        "reason": ready_reason,
        "pods": pod_status,
    }
    if cr.endpoint:
        status["endpoint"] = cr.endpoint
        status["endpointState"] = _summary_state(states)
        if outcome.secret_version:
            status["secretResourceVersion"] = outcome.secret_version
    if did_count is not None:
        status["didCount"] = did_count
    return status


def _join(problems: Sequence[Problem]) -> str:
    return "; ".join(p.message for p in problems)[:1000]


def _delivery_reason(words: Sequence[str]) -> str:
    text = " ".join(words)
    if "ARI credentials" in text or "ari-failed" in text or "ari-unavailable" in text:
        return "AriPushFailed"
    if "transport" in text and ("does not exist" in text or "needs a TLS transport" in text):
        return "TransportNotFound"
    return "AsteriskRejected"


def _summary_state(states: Sequence[str]) -> str | None:
    if not states:
        return None
    for bad in ("Unavailable", "Invalid", "Unknown"):
        if bad in states:
            return bad
    return states[0]


def with_transition_times(
    new: dict[str, Any], old: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """Keep lastTransitionTime where a condition's status did not change."""
    previous = {c.get("type"): c for c in (old or {}).get("conditions", [])}
    for condition in new.get("conditions", []):
        before = previous.get(condition["type"])
        if before and before.get("status") == condition["status"]:
            condition["lastTransitionTime"] = before.get("lastTransitionTime", now)
        else:
            condition["lastTransitionTime"] = now
    return new
