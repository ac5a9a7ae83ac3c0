"""A pod's set of CRs: the files it holds, what Asterisk must show once it loaded them, and
what a delivery changes (pure: the delivery and the observer act on these)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from trunk_operator.core.models import TwilioTrunkSpec
from trunk_operator.core.plan import TRUNK, Outcome
from trunk_operator.core.render import (
    EXTENSIONS_DIR,
    PJSIP_DIR,
    Files,
    aors,
    identify_sources,
    pod_files,
    trunk_names,
)
from trunk_operator.core.verify import Expected, ExpectedEndpoint, Probe


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

    `cache`: ExpectedEndpoints by (ref, digest), which they depend on only (making them for
    every CR on every round would cost each round as much as the pod is large)."""
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
