"""The pure decision core: all CRs and Secrets of a namespace in, per-CR files and problems out.

Cross-resource rules live here and nowhere else: a DID claimed by two segments belongs to the
earlier segment; two trunks with the same endpoint name, outbound context, or IP-only inbound
identification conflict, and the later one (by creation time, then name) is held back; a
segment whose trunk is missing or held back waits. A CR with a blocking problem gets no new
files, so what Asterisk serves for it (and for every other CR) stays as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from pydantic import ValidationError

from trunk_operator.core.models import DIDSegmentSpec, TwilioTrunkSpec, twilio_credential_secret
from trunk_operator.core.render import (
    Files,
    RenderError,
    contexts_in,
    files_hash,
    render_segment,
    render_trunk,
    render_trunk_auth,
    trunk_names,
)

TRUNK = "TwilioTrunk"
SEGMENT = "DIDSegment"
PLURALS = {TRUNK: "twiliotrunks", SEGMENT: "didsegments"}
MAX_LISTED_CONFLICTS = 20


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    blocking: bool = True


@dataclass(frozen=True)
class Resource:
    """What the plan needs of a CR: identity, age and its spec (or why it is invalid)."""

    kind: str
    name: str
    created: str
    spec: dict[str, Any]
    generation: int | None = None  # metadata.generation the spec was read at

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def order(self) -> tuple[str, str]:
        return (self.created, self.name)


@dataclass
class Tracked:
    """A CR as the controller knows it: the Resource, and the API's metadata of it."""

    resource: Resource
    uid: str
    deleting: bool = False
    finalizers: tuple[str, ...] = ()
    resource_version: str = ""


@dataclass
class Outcome:
    public: Files = field(default_factory=dict)
    secret: Files = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    trunk: str | None = None  # the trunk whose pods get these files
    trunk_spec: TwilioTrunkSpec | None = None  # that trunk as these files were rendered for
    did_count: int = 0
    conflicts: list[str] = field(default_factory=list)
    conflict_count: int = 0
    generation: int | None = None  # of the spec these files were rendered from
    username: str | None = None  # the auth username, as Asterisk must show it
    password_sha256: str | None = None  # to check what Asterisk loaded, never shown
    secret_version: str | None = None  # resourceVersion of the credentials Secret used
    # Contexts of the user's dialplan this resource sends calls to (they must exist).
    user_contexts: frozenset[str] = frozenset()

    @cached_property
    def digest(self) -> str:
        """Content hash of this resource's files: which version of it a pod has."""
        return files_hash(self.public | self.secret)

    @cached_property
    def public_hash(self) -> str:
        return files_hash(self.public)

    @cached_property
    def secret_hash(self) -> str:
        return files_hash(self.secret)

    @cached_property
    def defined_contexts(self) -> frozenset[str]:
        """The dialplan contexts its files define."""
        return frozenset(contexts_in(self.public))

    DERIVED = ("digest", "public_hash", "secret_hash", "defined_contexts")

    def derived(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.DERIVED)

    def take_derived(self, values: tuple[Any, ...]) -> None:
        """Values `derived()` gave for the very same file dicts (cached_property storage)."""
        self.__dict__.update(zip(self.DERIVED, values, strict=True))

    @property
    def blocked(self) -> bool:
        return any(p.blocking for p in self.problems)


@dataclass
class Inputs:
    trunks: list[Resource] = field(default_factory=list)
    segments: list[Resource] = field(default_factory=list)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    secret_versions: dict[str, str] = field(default_factory=dict)  # name -> resourceVersion
    operators_secrets: set[str] = field(default_factory=set)  # names labelled as the operator's

    @classmethod
    def from_documents(cls, docs: list[dict[str, Any]]) -> Inputs:
        """From manifests as written (Secrets with data or stringData), e.g. for `render`."""
        inputs = cls()
        for doc in docs:
            kind, meta = doc.get("kind"), doc.get("metadata", {})
            name = meta.get("name", "")
            created = meta.get("creationTimestamp", "")
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
                inputs.secrets[name] = data | doc.get("stringData", {})
            elif kind == TRUNK:
                inputs.trunks.append(Resource(TRUNK, name, created, doc.get("spec", {})))
            elif kind == SEGMENT:
                inputs.segments.append(Resource(SEGMENT, name, created, doc.get("spec", {})))
        return inputs


@dataclass
class Plan:
    outcomes: dict[str, Outcome]
    trunk_specs: dict[str, TwilioTrunkSpec]  # trunks whose files are rendered
    # Valid trunks whose Twilio end the operator reconciles, rendered or not (one waiting for
    # its first credential at Twilio is not).
    twilio_specs: dict[str, TwilioTrunkSpec] = field(default_factory=dict)

    def all_files(self) -> Files:
        files: Files = {}
        for outcome in self.outcomes.values():
            if not outcome.blocked:
                files |= outcome.public | outcome.secret
        return files


T = TypeVar("T")


class RenderCache:
    """Validated specs and rendered files of the last plan, by their inputs.

    A namespace is planned as a whole on every change, and rendering costs far more than a
    lookup here. Outputs depend only on the inputs in the key, so a
    plan is the same with or without the cache. Entries the next plan does not use are
    dropped when it ends: the cache holds one plan's worth, which the plan holds anyway.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[Any, ...], Any] = {}
        self._used: dict[tuple[Any, ...], Any] = {}
        self._outcomes: dict[str, Outcome] = {}  # the last plan's

    def _by_identity(self, objects: tuple[Any, ...], make: Callable[[], T]) -> T:
        """A value for these very objects: keyed by their ids, which the entry keeps alive
        (so an id is not reused while the entry exists) and checks on the way out."""
        key = ("identity", *map(id, objects))
        hit = self._used.get(key) or self._last.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], objects, strict=True)):
            hit = (objects, make())
        self._used[key] = hit
        value: T = hit[1]
        return value

    def spec_key(self, spec: dict[str, Any]) -> str:
        """The canonical JSON of a spec; specs are replaced, never changed, by watch events,
        so an unchanged CR's spec is the same object and its JSON is not made again."""
        return self._by_identity((spec,), lambda: _spec_key(spec))

    def derive(self, outcome: Outcome) -> None:
        """Hashes and contexts of an outcome whose file dicts came out of this cache."""
        values = self._by_identity((outcome.public, outcome.secret), outcome.derived)
        outcome.take_derived(values)

    def get(self, key: tuple[Any, ...], make: Callable[..., T], *args: Any) -> T:
        """The value for `key`, made as `make(*args)` when the last plan had none."""
        if key not in self._used:
            self._used[key] = self._last[key] if key in self._last else make(*args)
        value: T = self._used[key]
        return value

    def rotate(self) -> None:
        self._last, self._used = self._used, {}

    def keep_unchanged(self, outcomes: dict[str, Outcome]) -> None:
        """Each outcome equal to the last plan's for its CR becomes that very object (with its
        hashes), so what is kept by identity downstream (statuses, expected objects) stays;
        the others get their hashes and contexts."""
        for ref, outcome in outcomes.items():
            before = self._outcomes.get(ref)
            if before is not None and before == outcome:
                outcomes[ref] = before
            else:
                self.derive(outcome)
        self._outcomes = outcomes


def _spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _validated(model: type[T], spec: dict[str, Any]) -> T | str:
    """The model, or what is wrong with the spec."""
    try:
        return model.model_validate(spec)  # type: ignore[attr-defined]
    except ValidationError as error:
        return _validation_message(error)


def _validation_message(error: ValidationError) -> str:
    parts = []
    for e in error.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "spec"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def _claim_names(
    outcome: Outcome, name: str, spec: TwilioTrunkSpec, claimed: dict[str, dict[str, str]]
) -> None:
    """What a trunk must have to itself in the namespace: its endpoint name, its outbound
    context, and identification by IP (only one trunk per pod set can be told apart that way).
    An older trunk keeps what it claimed first."""
    names = trunk_names(name, spec)
    ip_identified = spec.inbound.account_sid is None
    for what, key in (
        ("endpoint name", names.endpoint),
        ("outbound context", spec.outbound.context),
        ("IP-based inbound identification", "ip" if ip_identified else None),
    ):
        if key is None:
            continue
        owner = claimed[what].setdefault(key, name)
        if owner != name:
            reason = {
                "endpoint name": "EndpointNameConflict",
                "outbound context": "OutboundContextConflict",
                "IP-based inbound identification": "AmbiguousInboundIdentification",
            }[what]
            hint = (
                "; set inbound.accountSid on every Twilio trunk that shares these pods"
                if ip_identified and what.startswith("IP")
                else ""
            )
            outcome.problems.append(
                Problem(reason, f"{what} {key!r} is already used by TwilioTrunk {owner}{hint}")
            )


TWILIO_PENDING = "TwilioPending"
TWILIO_PENDING_MESSAGE = (
    "waiting for the Twilio side: the credential Twilio holds is not set up yet (TwilioSynced)"
)


def credentials_secret(name: str, spec: Mapping[str, Any]) -> str:
    """The Secret a trunk's credentials are read from, from its (unchecked) spec: its own, or
    the operator's of the credential Twilio holds (`TwilioTrunkSpec.served_credentials`)."""
    if spec.get("twilio"):
        return twilio_credential_secret(name)
    return str(spec.get("credentials", {}).get("secretName") or "")


def _plan_credentials(
    outcome: Outcome,
    name: str,
    spec: TwilioTrunkSpec,
    inputs: Inputs,
    cache: RenderCache,
    cache_key: tuple[Any, ...],
) -> None:
    """The trunk's auth section from its Secret, or the problem that keeps it from one."""
    creds = spec.served_credentials(name)
    secret = inputs.secrets.get(creds.secret_name)
    outcome.secret_version = inputs.secret_versions.get(creds.secret_name)
    if secret is None and spec.twilio is not None:
        outcome.problems.append(Problem(TWILIO_PENDING, TWILIO_PENDING_MESSAGE))
        return
    if spec.twilio is not None and creds.secret_name not in inputs.operators_secrets:
        taken = f"Secret {creds.secret_name} is not the operator's: rename it"
        outcome.problems.append(Problem("CredentialSecretTaken", taken))
        return
    if secret is None:
        outcome.problems.append(
            Problem("SecretNotFound", f"Secret {creds.secret_name} does not exist")
        )
        return
    missing = [k for k in (creds.username_key, creds.password_key) if not secret.get(k)]
    if missing:
        outcome.problems.append(
            Problem(
                "SecretKeyMissing",
                f"Secret {creds.secret_name} has no (or an empty) {', '.join(missing)}",
            )
        )
        return
    try:
        username, password = secret[creds.username_key], secret[creds.password_key]
        outcome.secret = cache.get(
            (*cache_key, "auth", username, password),
            render_trunk_auth,
            name,
            spec,
            username,
            password,
        )
        outcome.username = secret[creds.username_key]
        outcome.password_sha256 = hashlib.sha256(
            f"{secret[creds.password_key]}\n".encode()
        ).hexdigest()
    except RenderError as error:
        # The message names the rule broken, never the value.
        outcome.problems.append(
            Problem("InvalidCredentials", f"Secret {creds.secret_name}: {error}")
        )


def _plan_trunk(
    resource: Resource, inputs: Inputs, claimed: dict[str, dict[str, str]], cache: RenderCache
) -> tuple[Outcome, TwilioTrunkSpec | None]:
    outcome = Outcome(trunk=resource.name, generation=resource.generation)
    cache_key = (TRUNK, resource.name, cache.spec_key(resource.spec))
    spec = cache.get(cache_key, _validated, TwilioTrunkSpec, resource.spec)
    if isinstance(spec, str):
        outcome.problems.append(Problem("InvalidSpec", spec))
        return outcome, None
    outcome.trunk_spec = spec
    outcome.user_contexts = frozenset({spec.inbound.context})
    _claim_names(outcome, resource.name, spec, claimed)
    outcome.public = cache.get((*cache_key, "files"), render_trunk, resource.name, spec)
    _plan_credentials(outcome, resource.name, spec, inputs, cache, cache_key)
    return outcome, spec


def plan_namespace(inputs: Inputs, cache: RenderCache | None = None) -> Plan:
    cache = cache or RenderCache()
    try:
        return _plan(inputs, cache)
    finally:
        cache.rotate()


def _claim_dids(
    outcome: Outcome, name: str, dids: list[str], did_owner: dict[str, str]
) -> list[str]:
    """The segment's DIDs an older segment already routes (skipped here, and reported)."""
    taken = [d for d in dids if did_owner.setdefault(d, name) != name]
    if taken:
        outcome.problems.append(
            Problem(
                "DIDConflict",
                f"{len(taken)} DIDs are already routed by another segment"
                f" (e.g. {taken[0]} by DIDSegment {did_owner[taken[0]]}); they are skipped here",
                blocking=False,
            )
        )
        outcome.conflicts = taken[:MAX_LISTED_CONFLICTS]
        outcome.conflict_count = len(taken)
    return taken


def _claim_pool(
    outcome: Outcome, name: str, segment: DIDSegmentSpec, pool_owner: dict[str, str]
) -> DIDSegmentSpec:
    """The segment, with its caller-ID pool off when an older segment's serves the trunk."""
    trunk_name = segment.trunk_ref.name
    if not segment.caller_id_pool.enabled:
        return segment
    owner = pool_owner.setdefault(trunk_name, name)
    if owner == name:
        return segment
    outcome.problems.append(
        Problem(
            "CallerIdPoolConflict",
            f"TwilioTrunk {trunk_name} already takes caller IDs from"
            f" DIDSegment {owner}; this segment's pool is not used",
            blocking=False,
        )
    )
    pool = segment.caller_id_pool.model_copy(update={"enabled": False})
    return segment.model_copy(update={"caller_id_pool": pool})


def _plan_segment(
    resource: Resource,
    inputs: Inputs,
    usable: Mapping[str, TwilioTrunkSpec],
    did_owner: dict[str, str],
    pool_owner: dict[str, str],
    cache: RenderCache,
) -> Outcome:
    """One DIDSegment, after the trunks and the older segments: `did_owner` and `pool_owner`
    (DID -> segment, trunk -> segment whose caller-ID pool it uses) are claimed in order."""
    outcome = Outcome(generation=resource.generation)
    key = (SEGMENT, resource.name, cache.spec_key(resource.spec))
    validated = cache.get(key, _validated, DIDSegmentSpec, resource.spec)
    if isinstance(validated, str):
        outcome.problems.append(Problem("InvalidSpec", validated))
        return outcome
    segment = validated
    trunk_name = segment.trunk_ref.name
    outcome.trunk = trunk_name
    outcome.user_contexts = frozenset(
        c for c in [segment.destination.context, *(o.context for o in segment.overrides)] if c
    )
    outcome.trunk_spec = usable.get(trunk_name)
    trunk = usable.get(trunk_name)
    if trunk is None:
        known = any(t.name == trunk_name for t in inputs.trunks)
        outcome.problems.append(
            Problem("TrunkNotReady", f"TwilioTrunk {trunk_name} is not ready")
            if known
            else Problem("TrunkNotFound", f"TwilioTrunk {trunk_name} does not exist")
        )
        return outcome
    dids: list[str] = cache.get((*key, "dids"), segment.dids)
    taken = _claim_dids(outcome, resource.name, dids, did_owner)
    segment = _claim_pool(outcome, resource.name, segment, pool_owner)
    outcome.did_count = len(dids) - len(taken)
    outcome.public = cache.get(
        (
            *key,
            "files",
            _spec_key(trunk.model_dump(mode="json")),
            tuple(taken),
            segment.caller_id_pool.enabled,
        ),
        render_segment,
        resource.name,
        segment,
        trunk_name,
        trunk,
        taken,
    )
    return outcome


def _plan(inputs: Inputs, cache: RenderCache) -> Plan:
    outcomes: dict[str, Outcome] = {}
    usable: dict[str, TwilioTrunkSpec] = {}
    twilio: dict[str, TwilioTrunkSpec] = {}
    claimed: dict[str, dict[str, str]] = {
        "endpoint name": {},
        "outbound context": {},
        "IP-based inbound identification": {},
    }
    for resource in sorted(inputs.trunks, key=lambda r: r.order):
        outcome, spec = _plan_trunk(resource, inputs, claimed, cache)
        outcomes[resource.ref] = outcome
        if spec is not None and not outcome.blocked:
            usable[resource.name] = spec
        if spec is not None and spec.twilio is not None:
            twilio[resource.name] = spec

    did_owner: dict[str, str] = {}
    pool_owner: dict[str, str] = {}
    for resource in sorted(inputs.segments, key=lambda r: r.order):
        outcomes[resource.ref] = _plan_segment(
            resource, inputs, usable, did_owner, pool_owner, cache
        )
    cache.keep_unchanged(outcomes)
    return Plan(outcomes=outcomes, trunk_specs=usable, twilio_specs=twilio)
