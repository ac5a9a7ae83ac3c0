"""What Asterisk must show after a reload, and how what it shows differs from that.

`Expected` comes from the rendered CRs (core.desired), an `Observation` from one script run in
the pod (pod.channel); `verify` compares them and names the CR each difference belongs to, with
the reason code its Delivered condition takes.

A PJSIP option read back in depth is a row of DETAIL_CHECKS: the key `pjsip show endpoint`
prints, and the value the spec gives it (docs/architecture.md, "Verifying a new option").
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from trunk_operator.core.asterisk_output import Endpoint, Listing, contact_matches
from trunk_operator.core.render import Files

# What the specs set that verification does not read back from Asterisk: the dialplan's
# extensions beyond each context's presence (number normalisation, caller-ID pool, dial
# timeout, failover order, DID destinations). They are in the delivered files, whose content
# hashes are checked, and a dialplan that does not parse loses its contexts, which is checked
# for every context a delivery changes. Objects a delivery does not change, and objects it
# adds, are checked for presence (and their auth's username) only: the first have the text
# they had when they were checked in depth; the second cannot be kept at an older version
# (Asterisk creates an object as rendered or refuses it, and a refused one is missing). A push
# over ARI that only replaces objects reads no listings: what it did not touch is in memory as
# the last read found it (pod.ari.light_after_push).
UNVERIFIED = ("outbound.*", "DIDSegment.numbers/ranges/destination/overrides/callerIdPool")


@dataclass(frozen=True)
class ExpectedEndpoint:
    """One trunk's PJSIP objects as Asterisk must show them after a reload."""

    owner: str  # the resource these objects come from, e.g. "TwilioTrunk/acme"
    name: str
    auth: str
    aors: dict[str, str]  # aor id -> contact URI as Asterisk lists it
    identify: str
    matches: frozenset[str]  # identify criteria: CIDRs, or `Header: value` when by header
    username: str = ""
    transport: str = ""
    # Shown only by `pjsip show endpoint X`: checked for the endpoints a delivery changes.
    codecs: tuple[str, ...] = ()
    media_encryption: str = "no"
    context: str = ""
    # sha256 of the password as `pjsip show auth` prints it (plus a newline): hashed inside
    # the pod, so the password is never carried back out of it.
    password_sha256: str = ""


@dataclass(frozen=True)
class Expected:
    endpoints: tuple[ExpectedEndpoint, ...] = ()
    contexts: dict[str, str] = field(default_factory=dict)  # context -> owner
    transports: dict[str, tuple[str, ...]] = field(default_factory=dict)  # -> owners


@dataclass(frozen=True)
class Probe:
    """What to read back beyond the listings: endpoints in depth, contexts by name."""

    details: frozenset[str] = frozenset()
    contexts: frozenset[str] = frozenset()


# Why a pod did not take a CR's files: the reason codes of its Delivered condition.
ASTERISK_REJECTED = "AsteriskRejected"
TRANSPORT_NOT_FOUND = "TransportNotFound"
ARI_PUSH_FAILED = "AriPushFailed"


@dataclass(frozen=True)
class Mismatch:
    """One way Asterisk's loaded state differs from the rendered one, and whose it is."""

    owners: tuple[str, ...]
    message: str
    reason: str = ASTERISK_REJECTED


@dataclass
class Observation:
    """What one pod's Asterisk has loaded, as far as one script run read it."""

    listing: Listing
    delivered_hash: str | None = None
    file_digests: dict[str, str] = field(default_factory=dict)  # path -> sha256 in the pod
    shown: dict[str, Endpoint] = field(default_factory=dict)  # `pjsip show endpoint X`
    details: dict[str, dict[str, str]] = field(default_factory=dict)  # its parameter table
    contexts: set[str] = field(default_factory=set)  # found, of those checked
    contexts_checked: frozenset[str] = frozenset()
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # state and contacts
    # Reads that Asterisk's CLI cut short (asterisk_output.table_complete): such an
    # observation says nothing of what is missing, and is not verified.
    cut_short: list[str] = field(default_factory=list)

    def carry(self, before: Observation | None) -> Observation:
        """A read without the listings (a push over ARI that only replaced objects, each shown
        in depth): the others are as `before` listed them, nothing having touched them since."""
        if self.listing.read or before is None:
            return self
        self.listing = before.listing
        # `before`'s endpoints as they are: each was attached from this listing, and an
        # endpoint whose AORs changed since is one this push replaced, shown in depth here.
        self.endpoints = dict(before.endpoints)
        for name, endpoint in self.shown.items():
            if name in self.endpoints:
                self.endpoints[name] = endpoint
        return self

    def attach(self, expected: Expected) -> Observation:
        """Fill `endpoints` from the listing: each endpoint with its state and the contacts
        of the AORs it should have (the listing does not link contacts to endpoints)."""
        self.endpoints = {
            name: Endpoint(name, state) for name, state in self.listing.endpoints.items()
        }
        for want in expected.endpoints:
            if endpoint := self.endpoints.get(want.name):
                endpoint.aors = [a for a in want.aors if a in self.listing.aors]
                endpoint.contacts = [c for a in want.aors for c in self.listing.contacts_of(a)]
        return self


def verify(
    expected: Expected, observation: Observation, transports: Mapping[str, str] | None = None
) -> list[Mismatch]:
    """What is missing or different; empty when Asterisk loaded exactly what was rendered.

    Endpoints shown in depth (`observation.shown`) are checked field by field, the others
    for presence in the listings; contexts as far as they were checked."""
    problems: list[Mismatch] = [
        Mismatch(
            owners,
            f"transport {t} does not exist in Asterisk (adding one needs a restart)",
            TRANSPORT_NOT_FOUND,
        )
        for t, owners in sorted(expected.transports.items())
        if transports is not None and t not in transports
    ]
    for want in expected.endpoints:
        kind = (transports or {}).get(want.transport)
        if want.media_encryption == "sdes" and kind not in (None, "tls"):
            # Asterisk loads it and then fails every call (PJSIP_ETPNOTSUITABLE).
            problems.append(
                Mismatch(
                    (want.owner,),
                    f"transport {want.transport} is {kind}: a secure trunk needs a TLS transport",
                    TRANSPORT_NOT_FOUND,
                )
            )
        shown = observation.shown.get(want.name)
        messages = (
            _shown_mismatches(want, shown, observation.details.get(want.name))
            if shown is not None
            else _listed_mismatches(want, observation.listing)
        )
        problems += [Mismatch((want.owner,), message) for message in messages]
    missing: dict[str, list[str]] = {}
    for context, owner in sorted(expected.contexts.items()):
        if context in observation.contexts_checked and context not in observation.contexts:
            missing.setdefault(owner, []).append(context)
    for owner, names in missing.items():
        shown_names = ", ".join(names[:5])
        problems.append(
            Mismatch((owner,), f"{len(names)} dialplan contexts are not loaded ({shown_names})")
        )
    return problems


def _listed_mismatches(want: ExpectedEndpoint, listing: Listing) -> list[str]:
    """Presence in the listings that were read (ADDED_LISTS only when endpoints were added;
    none after a push over ARI that only replaced objects: see `Observation.carry`)."""
    if "endpoints" not in listing.read:
        return []
    if want.name not in listing.endpoints:
        return [f"endpoint {want.name} is not loaded"]
    problems = []
    if "auths" in listing.read and want.auth not in listing.auths:
        problems.append(f"endpoint {want.name} has no outbound auth {want.auth}")
    elif "auths" in listing.read and want.username and listing.auths[want.auth] != want.username:
        problems.append(f"auth {want.auth} has another username than the Secret's")
    if "aors" in listing.read and (missing := sorted(set(want.aors) - listing.aors)):
        problems.append(f"endpoint {want.name} lacks AORs {missing}")
    if "contacts" in listing.read:
        for aor, uri in want.aors.items():
            if "aors" in listing.read and aor not in listing.aors:
                continue  # reported above
            if not any(contact_matches(c, uri) for c in listing.contacts_of(aor)):
                problems.append(f"AOR {aor} has no contact {uri} (does the host resolve?)")
    if "identifies" in listing.read and listing.identifies.get(want.identify) != want.name:
        problems.append(f"identify {want.identify} is not loaded")
    return problems


def _shown_mismatches(
    want: ExpectedEndpoint, got: Endpoint, detail: Mapping[str, str] | None
) -> list[str]:
    problems = []
    if want.auth not in got.out_auths:
        problems.append(f"endpoint {want.name} has no outbound auth {want.auth}")
    elif want.username and got.auth_users.get(want.auth) != want.username:
        problems.append(f"auth {want.auth} has another username than the Secret's")
    # No `Transport:` line at all: the transport does not exist, reported above.
    if want.transport and got.transport not in (None, want.transport):
        problems.append(
            f"endpoint {want.name} uses transport {got.transport}, not {want.transport}"
        )
    if set(got.aors) != set(want.aors):
        problems.append(
            f"endpoint {want.name} has AORs {sorted(got.aors)}, not {sorted(want.aors)}"
        )
    for aor, uri in want.aors.items():
        if not any(c.aor == aor and contact_matches(c, uri) for c in got.contacts):
            problems.append(f"AOR {aor} has no contact {uri} (does the host resolve?)")
    if want.identify not in got.identifies:
        problems.append(f"identify {want.identify} is not loaded")
    elif not want.matches <= set(got.matches):
        problems.append(
            f"identify {want.identify} lacks matches {sorted(want.matches - set(got.matches))}"
        )
    return problems + (_detail_mismatches(want, detail) if detail else [])


def _codecs(allow: str | None) -> tuple[str, ...]:
    """`allow` as `pjsip show endpoint` prints it, `(alaw|ulaw)`, as the spec's codecs."""
    return tuple(c for c in (allow or "").strip("()").split("|") if c)


def _acl(acl: str | None) -> str | None:
    """The source ACL keeps requests from outside the trunk's ranges out (a header anyone can
    send may identify them); its addresses are not shown, its presence is."""
    return "deny/permit" if "deny" in (acl or "") else acl


@dataclass(frozen=True)
class DetailCheck:
    """One PJSIP endpoint option read back after a change: `key` as `pjsip show endpoint`
    prints it, `shown` turns that text into the spec's form, `wanted` is the spec's value.
    An empty wanted value is not checked, unless `always`."""

    name: str
    key: str
    wanted: Callable[[ExpectedEndpoint], object]
    shown: Callable[[str | None], object] = lambda text: text
    always: bool = False


DETAIL_CHECKS = (
    DetailCheck("media_encryption", "media_encryption", lambda w: w.media_encryption, always=True),
    DetailCheck("codecs", "allow", lambda w: w.codecs, _codecs),
    DetailCheck("context", "context", lambda w: w.context),
    DetailCheck("transport", "transport", lambda w: w.transport),
    DetailCheck("acl", "acl", lambda w: "deny/permit", _acl),
)


def _detail_mismatches(want: ExpectedEndpoint, detail: Mapping[str, str]) -> list[str]:
    problems = []
    for check in DETAIL_CHECKS:
        wanted = check.wanted(want)
        got = check.shown(detail.get(check.key))
        if (wanted or check.always) and got != wanted:
            problems.append(
                f"endpoint {want.name} has {check.name} {got!r}, not {wanted!r}"
                " (Asterisk kept another version)"
            )
    if want.password_sha256 and detail.get("password_sha256") != want.password_sha256:
        problems.append(
            f"auth {want.auth} has another password than the Secret's (Asterisk kept the old one)"
        )
    return problems


def drifted(files: Files, observation: Observation) -> bool:
    """Whether the pod's operator-owned files differ from the delivered set (hand edits)."""
    wanted = {path: hashlib.sha256(text.encode()).hexdigest() for path, text in files.items()}
    return wanted != observation.file_digests
