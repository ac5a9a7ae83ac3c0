"""The status reducer: (a CR's plan outcome, its pods' delivery state) -> the CR's status.

Pure: one small function per condition, each building a typed `Condition` from values, and
reasons carried as codes from where they arose (the plan's `Problem`, a pod's refusal). The
writer gets the status as the dict it PATCHes, in the shape of the CRD's status models
(`models.TwilioTrunkStatus`, `DIDSegmentStatus`): tests validate what the reducer builds
against them. Not built as those pydantic models here: validating every status on every pass
made a reduce several times dearer, which a bulk of thousands of CRs pays many times over.

Ready means every pod that serves the CR serves the generation the status names
(`observedGeneration`): Rendered (the plan accepted it) and Delivered (each selected pod
loaded and verified that generation's files, and no delivery under way brings another). For a
trunk whose Twilio end the operator reconciles (spec.twilio), Ready also means Twilio holds the
credential Asterisk uses and that credential is the Secret's password (no rotation under way):
`TwilioView.serves`. `TwilioSynced` says whether the last look at Twilio's end succeeded; when
Twilio cannot be reached, Ready keeps what the last look found and Degraded says it is stale.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trunk_operator.core.plan import Outcome, Problem
from trunk_operator.core.verify import (
    ARI_PUSH_FAILED,
    ASTERISK_REJECTED,
    TRANSPORT_NOT_FOUND,
    Observation,
)

# Reasons of a pod's refusal, most telling first: the Delivered reason is the first of these
# any of the CR's problems in that pod has.
_REFUSALS = (ARI_PUSH_FAILED, TRANSPORT_NOT_FOUND, ASTERISK_REJECTED)

# Ready reasons that need a change by someone (the spec, another resource, the Secret's
# content, the Asterisk deployment) and will not resolve by waiting.
STALLED_REASONS = frozenset(
    {
        "InvalidSpec",
        "InvalidCredentials",
        "EndpointNameConflict",
        "OutboundContextConflict",
        "AmbiguousInboundIdentification",
        TRANSPORT_NOT_FOUND,
        ASTERISK_REJECTED,
        "WeakPassword",
        "TwilioTrunkOwnedElsewhere",
        "TwilioCredentialsRefused",
        "CredentialSecretTaken",
    }
)
# Twilio side reasons of work under way (kstatus Reconciling).
TWILIO_IN_PROGRESS = frozenset({"Rotating", "TwilioPending"})
MESSAGE_AT_MOST = 1000


def timestamp() -> str:
    """Now, as status times are written (RFC 3339, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class PodDelivery:
    """One Asterisk pod as the reducer sees it: a snapshot of its delivery worker's state
    (`pod_workers.PodState.view`)."""

    name: str
    desired: Mapping[str, str] = field(default_factory=dict)  # CR ref -> its digest, to deliver
    delivered: Mapping[str, str] = field(default_factory=dict)  # CR ref -> digest the pod has
    # CR ref -> digest of the delivery under way (None: none): until it ends, Asterisk may
    # serve that version as well as the delivered one. Left set when a delivery's end is not
    # known (its exec failed), until the next one ends.
    delivering: Mapping[str, str] | None = None
    delivered_at: Mapping[str, str] = field(default_factory=dict)  # CR ref -> when it took it
    last_reload_result: str | None = None
    problems: Mapping[str, Sequence[Problem]] = field(default_factory=dict)  # CR ref -> refusals
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


@dataclass(frozen=True)
class TwilioView:
    """The Twilio end of an opted-in trunk as the reducer sees it (runtime/twilio_side.py)."""

    synced: bool | None  # the last look at Twilio's end succeeded (None: none yet)
    reason: str
    message: str
    serves: bool  # Twilio holds the credential Asterisk uses, and it is the Secret's password
    fields: Mapping[str, Any]  # status.twilio


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of a CR's status (`models.Condition`), without its transition time."""

    type: str
    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str
    observed_generation: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": self.observed_generation,
        }


def reduce_status(
    cr: CRView,
    outcome: Outcome,
    pods: Sequence[PodDelivery],
    did_count: int | None = None,
    twilio: TwilioView | None = None,
) -> dict[str, Any]:
    """The full status as PATCHed (without lastTransitionTime: `with_transition_times`).
    Only the fields set here are in it; a top-level None clears the field."""
    blocking = [p for p in outcome.problems if p.blocking]
    rendered = _rendered(cr, blocking)
    delivered = _delivered(cr, pods)
    reachable = _reachability(cr, pods)
    ready = _ready(cr, rendered, delivered, twilio)
    conditions = [ready, rendered, delivered]
    if twilio is not None:
        conditions.append(_twilio_synced(cr, twilio))
    if cr.endpoint:
        conditions.append(_reachable(cr, reachable))
    conditions += [
        _degraded(cr, outcome, pods, reachable, twilio),
        _reconciling(cr, delivered, blocking, twilio),
        _stalled(cr, ready),
    ]
    status: dict[str, Any] = {
        "observedGeneration": cr.generation,
        "conditions": [c.as_dict() for c in conditions],
        "reason": ready.reason,
    }
    if did_count is not None:
        status["didCount"] = did_count
    if not cr.endpoint:
        if outcome.conflicts:
            status["conflicts"] = outcome.conflicts
            status["conflictCount"] = outcome.conflict_count
        return status
    status["pods"] = [_pod_entry(cr, pod) for pod in pods]
    status["endpoint"] = cr.endpoint
    status["endpointState"] = _summary_state(pods, cr.endpoint)
    if outcome.secret_version:
        status["secretResourceVersion"] = outcome.secret_version
    if twilio is not None:
        status["twilio"] = dict(twilio.fields)
    return status


def _condition(type_: str, ok: bool | None, reason: str, message: str, cr: CRView) -> Condition:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return Condition(type_, status, reason, message[:MESSAGE_AT_MOST], cr.generation)


def _rendered(cr: CRView, blocking: Sequence[Problem]) -> Condition:
    if blocking:
        message = "; ".join(p.message for p in blocking)
        return _condition("Rendered", False, blocking[0].reason, message, cr)
    return _condition("Rendered", True, "Rendered", "configuration rendered", cr)


def _serves(pod: PodDelivery, ref: str, digest: str | None) -> bool:
    """The pod serves this version of the CR, whatever a delivery under way does."""
    under_way = pod.delivering is None or pod.delivering.get(ref) == digest
    return pod.delivered.get(ref) == digest and under_way


def _delivered(cr: CRView, pods: Sequence[PodDelivery]) -> Condition:
    """Per resource: another resource's change to the same pod does not make this one
    pending. Compared with what this generation rendered (blocked: the last good version the
    pods keep), never with what a pod was last told to want; and with what a delivery under
    way brings: a spec changed back (A, B, A) is A again while the pod is being given B."""
    if not pods:
        return _condition("Delivered", False, "NoAsteriskPods", "no ready Asterisk pod matches", cr)
    failed = [p for p in pods if p.problems.get(cr.ref)]
    if failed:
        words = "; ".join(
            f"{p.name}: {' / '.join(problem.message for problem in p.problems[cr.ref])}"
            for p in failed
        )
        return _condition(
            "Delivered", False, _refusal_reason(failed[0].problems[cr.ref]), words, cr
        )
    pending = [p.name for p in pods if not _serves(p, cr.ref, cr.digest or p.desired.get(cr.ref))]
    if pending:
        return _condition(
            "Delivered", False, "Delivering", f"delivering to {', '.join(pending)}", cr
        )
    return _condition(
        "Delivered", True, "Delivered", f"loaded and verified in {len(pods)} pod(s)", cr
    )


def _refusal_reason(problems: Sequence[Problem]) -> str:
    reasons = {p.reason for p in problems}
    return next((r for r in _REFUSALS if r in reasons), problems[0].reason)


def _reachability(cr: CRView, pods: Sequence[PodDelivery]) -> bool | None:
    """Whether every observed pod has an Avail contact for the endpoint; None: none seen."""
    if not cr.endpoint:
        return None
    reachable: bool | None = None
    for pod in pods:
        endpoint = pod.observation.endpoints.get(cr.endpoint) if pod.observation else None
        if endpoint is not None:
            avail = any(c.status == "Avail" for c in endpoint.contacts)
            reachable = avail if reachable is None else (reachable and avail)
    return reachable


def _reachable(cr: CRView, reachable: bool | None) -> Condition:
    if not cr.qualify:
        return _condition("Reachable", None, "QualifyDisabled", "qualify is off", cr)
    if reachable is None:
        return _condition("Reachable", None, "NotObserved", "no observation yet", cr)
    if reachable:
        return _condition("Reachable", True, "ContactAvailable", "Twilio answers OPTIONS", cr)
    message = "no contact is Avail: Twilio does not answer OPTIONS from every pod"
    return _condition("Reachable", False, "EndpointUnavailable", message, cr)


def _missing_contexts(cr: CRView, pods: Sequence[PodDelivery]) -> list[str]:
    missing: set[str] = set()
    for pod in pods:
        if (obs := pod.observation) is not None:
            missing |= (set(cr.contexts) & obs.contexts_checked) - obs.contexts
    return sorted(missing)


def _twilio_synced(cr: CRView, twilio: TwilioView) -> Condition:
    return _condition("TwilioSynced", twilio.synced, twilio.reason, twilio.message, cr)


def _degraded(
    cr: CRView,
    outcome: Outcome,
    pods: Sequence[PodDelivery],
    reachable: bool | None,
    twilio: TwilioView | None = None,
) -> Condition:
    """What works less than it should, while the CR may still be Ready."""
    found = [(p.reason, p.message) for p in outcome.problems if not p.blocking]
    if twilio is not None and twilio.synced is False and twilio.serves:
        found.append((twilio.reason, f"Twilio's end is as last seen: {twilio.message}"))
    if missing := _missing_contexts(cr, pods):
        found.append(
            (
                "ContextMissing",
                f"dialplan context(s) {', '.join(missing)} do not exist in Asterisk;"
                " calls sent there fail",
            )
        )
    if cr.endpoint and cr.qualify and reachable is False:
        found.append(("EndpointUnavailable", "Twilio is not reachable from every pod"))
    blocking = [p for p in outcome.problems if p.blocking]
    if blocking and pods:
        found.append((blocking[0].reason, "the last good configuration is kept in Asterisk"))
    if not found:
        return _condition("Degraded", False, "AsExpected", "", cr)
    return _condition("Degraded", True, found[0][0], "; ".join(m for _, m in found), cr)


def _ready(
    cr: CRView, rendered: Condition, delivered: Condition, twilio: TwilioView | None = None
) -> Condition:
    if rendered.status != "True":
        return _condition("Ready", False, rendered.reason, rendered.message, cr)
    if delivered.status != "True":
        return _condition("Ready", False, delivered.reason, delivered.message, cr)
    if twilio is not None and not twilio.serves:
        return _condition("Ready", False, twilio.reason, twilio.message, cr)
    return _condition("Ready", True, "Ready", delivered.message, cr)


def _reconciling(
    cr: CRView,
    delivered: Condition,
    blocking: Sequence[Problem],
    twilio: TwilioView | None = None,
) -> Condition:
    """kstatus (Flux, kpt, cli-utils): Reconciling=True while work is in flight."""
    if delivered.reason == "Delivering" and not blocking:
        return _condition("Reconciling", True, "Delivering", delivered.message, cr)
    if twilio is not None and not twilio.serves and twilio.reason in TWILIO_IN_PROGRESS:
        return _condition("Reconciling", True, twilio.reason, twilio.message, cr)
    return _condition("Reconciling", False, "Settled", "", cr)


def _stalled(cr: CRView, ready: Condition) -> Condition:
    """kstatus: Stalled=True for what only a change by someone can fix; everything else that
    is not Ready may still resolve itself (a Secret or a pod appearing): in progress."""
    if ready.status != "True" and ready.reason in STALLED_REASONS:
        return _condition("Stalled", True, ready.reason, ready.message, cr)
    return _condition("Stalled", False, "NotStalled", "", cr)


def _pod_entry(cr: CRView, pod: PodDelivery) -> dict[str, Any]:
    """This CR's version in the pod (`models.PodTrunkStatus`), not the pod's whole set:
    another CR's change must not rewrite this status. No RTT: it changes at every qualify (it
    is in /metrics)."""
    entry: dict[str, Any] = {"pod": pod.name}
    shown = {
        "deliveredHash": pod.delivered.get(cr.ref),
        "lastReloadTime": pod.delivered_at.get(cr.ref),
        "lastReloadResult": pod.last_reload_result,
    }
    entry |= {k: v for k, v in shown.items() if v is not None}
    endpoint = pod.observation.endpoints.get(cr.endpoint or "") if pod.observation else None
    if endpoint is not None:
        entry["endpointState"] = endpoint.state
        entry["contacts"] = [{"uri": c.uri, "status": c.status} for c in endpoint.contacts]
    return entry


def _summary_state(pods: Sequence[PodDelivery], endpoint: str) -> str | None:
    states = [
        seen.state
        for pod in pods
        if pod.observation and (seen := pod.observation.endpoints.get(endpoint)) is not None
    ]
    if not states:
        return None
    return next((bad for bad in ("Unavailable", "Invalid", "Unknown") if bad in states), states[0])


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
