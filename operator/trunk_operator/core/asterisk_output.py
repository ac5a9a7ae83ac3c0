"""Asterisk's CLI output, parsed: `pjsip show endpoint(s)`, `pjsip list ...`, `dialplan show`,
`pjsip show transports`. The formats were checked in Asterisk's source and on Asterisk 22
(reference twilio-and-asterisk, section 2); long columns are cut at a fixed width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

LISTS = ("endpoints", "contacts")  # always read: endpoint states and contacts are the status
# Read when a delivery adds endpoints (the only ones neither unchanged nor read in depth).
ADDED_LISTS = ("aors", "auths", "identifies")


@dataclass
class Contact:
    aor: str
    uri: str
    status: str
    rtt_ms: float | None


@dataclass
class Endpoint:
    name: str
    state: str
    out_auths: list[str] = field(default_factory=list)
    auth_users: dict[str, str] = field(default_factory=dict)  # outbound auth id -> username
    aors: list[str] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)
    transport: str | None = None
    identifies: list[str] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)


def contact_matches(contact: Contact, uri: str) -> bool:
    """The CLI cuts long contact URIs; a loaded contact matches when it is a prefix."""
    return bool(contact.uri) and uri.startswith(contact.uri)


_ENDPOINT = re.compile(r"^Endpoint:\s+(?P<name>[^\s/]+)(?:/\S*)?\s+(?P<state>.+?)\s+\d+ of \S+$")
# The Aor/ContactUri column is cut at a fixed width: `uri` may be a prefix of the real URI.
_CONTACT = re.compile(
    r"^Contact:\s+(?P<aor>[^/\s]+)/(?P<uri>\S+)\s+[0-9a-f]+\s+(?P<status>\S+)\s+(?P<rtt>\S+)$"
)


def parse_endpoints(text: str) -> dict[str, Endpoint]:
    """`pjsip show endpoints` / `pjsip show endpoint X` -> endpoints by name."""
    endpoints: dict[str, Endpoint] = {}
    current: Endpoint | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if "<" in line and ">" in line:  # the legend at the top
            continue
        if m := _ENDPOINT.match(line):
            current = endpoints[m["name"]] = Endpoint(m["name"], m["state"].strip())
            continue
        if current is None or ":" not in line:
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "OutAuth":
            auth, _, user = value.partition("/")
            current.out_auths.append(auth)
            current.auth_users[auth] = user.strip()
        elif key == "Aor":
            current.aors.append(value.split()[0])
        elif key == "Contact" and (m := _CONTACT.match(line)):
            rtt = m["rtt"]
            current.contacts.append(
                Contact(
                    m["aor"],
                    m["uri"],
                    m["status"],
                    float(rtt) if re.fullmatch(r"[0-9.]+", rtt) else None,
                )
            )
        elif key == "Transport":
            current.transport = value.split()[0]
        elif key == "Identify":
            current.identifies.append(value.split("/", 1)[0])
        elif key in ("Match", "Header"):  # Header: match_header criteria
            current.matches.append(value)
    return endpoints


_CONTEXT = re.compile(r"^\[ Context '(?P<name>[^']+)' created by '(?P<registrar>[^']+)' \]")


def parse_contexts(text: str) -> set[str]:
    """Context names from `dialplan show` (or its `[ Context` lines)."""
    return {m["name"] for line in text.splitlines() if (m := _CONTEXT.match(line.strip()))}


# Completeness. Asterisk writes each piece of CLI output with a 100 ms budget (ast_cli ->
# ast_carefulwrite): when `asterisk -rx` is not scheduled in time to drain its socket (a
# loaded node, a large listing), the rest of that piece is dropped and the command still exits
# 0. What was cut short is found by the counts Asterisk prints after the objects.
_SUMMARY = re.compile(r"^-= \d+ extensions? \(\d+ priorit(?:y|ies)\) in (\d+) contexts?\. =-$")
_NO_CONTEXT = "There is no existence of "
_OBJECTS_FOUND = re.compile(r"^Objects found: (\d+)$", re.MULTILINE)
# The line each object of a `pjsip list ...` / `pjsip show transports` table starts with.
LINE_OF = {
    "endpoints": "Endpoint:",
    "aors": "Aor:",
    "auths": "Auth:",
    "contacts": "Contact:",
    "identifies": "Identify:",
    "transports": "Transport:",
}


def table_complete(text: str, kind: str) -> bool:
    """A `pjsip list <kind>` (or `pjsip show transports`) output that ends with its object
    count, and has that many objects."""
    objects = 0
    for line in text.splitlines():
        words = line.split(maxsplit=2)
        if len(words) > 1 and words[0] == LINE_OF[kind] and not words[1].startswith("<"):
            objects += 1
    if text.strip() == "No objects found.":
        return True
    found = _OBJECTS_FOUND.search(text)
    return found is not None and int(found[1]) == objects


def contexts_complete(text: str, reads: int) -> bool:
    """The kept lines (`[ ` headers, `-= ... =-` summaries, `There is no existence`) of
    `reads` runs of `dialplan show [CTX]`: each ended with its summary or its no-such-context
    line, and the summaries count every header."""
    headers, counted, ended = 0, 0, 0
    for line in text.splitlines():
        if line.startswith("[ "):
            headers += 1
        elif m := _SUMMARY.match(line.strip()):
            counted += int(m[1])
            ended += 1
        elif line.startswith(_NO_CONTEXT):
            ended += 1
    return ended == reads and counted == headers


_DETAIL = re.compile(r"^\s*(?P<key>[a-z_0-9]+)\s+:\s?(?P<value>.*)$")


def parse_endpoint_detail(text: str) -> dict[str, str]:
    """The `ParameterName : ParameterValue` table of `pjsip show endpoint X`."""
    lines = (_DETAIL.match(line) for line in text.splitlines())
    return {m["key"]: m["value"].strip() for m in lines if m}


def parse_transports(text: str) -> dict[str, str]:
    """Transport id -> its type (udp, tcp, tls, ws, wss) from `pjsip show transports`."""
    types = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "Transport:" and "<" not in line:
            types[words[1]] = words[2]
    return types


@dataclass
class Listing:
    """The `pjsip list` tables: every object by id, cheap at any size."""

    # Which of LISTS + ADDED_LISTS were read (parse_listing says; built by hand: LISTS).
    read: set[str] = field(default_factory=lambda: set(LISTS))
    endpoints: dict[str, str] = field(default_factory=dict)  # name -> state
    aors: set[str] = field(default_factory=set)
    auths: dict[str, str] = field(default_factory=dict)  # auth id -> username
    identifies: dict[str, str] = field(default_factory=dict)  # identify id -> endpoint
    contacts: list[Contact] = field(default_factory=list)
    _by_aor: dict[str, list[Contact]] | None = field(default=None, repr=False)

    def contacts_of(self, aor: str) -> list[Contact]:
        """The contacts of one AOR (indexed once: a scan per endpoint is quadratic)."""
        if self._by_aor is None:
            self._by_aor = {}
            for contact in self.contacts:
                self._by_aor.setdefault(contact.aor, []).append(contact)
        return self._by_aor.get(aor, [])


_LISTED = {
    "Aor": re.compile(r"^Aor:\s+(?P<id>\S+)\s+\d+$"),
    "Auth": re.compile(r"^Auth:\s+(?P<id>[^/\s]+)/(?P<value>.*)$"),
    "Identify": re.compile(r"^Identify:\s+(?P<id>[^/\s]+)/(?P<value>\S+)$"),
}


def parse_listing(parts: Mapping[str, str]) -> Listing:
    """The `list-*` sections (`pjsip list endpoints`, `... aors` and so on) of a script run."""
    names = (*LISTS, *ADDED_LISTS)
    listing = Listing(read={key for key in names if f"list-{key}" in parts})
    for line in (raw.strip() for key in names for raw in parts.get(f"list-{key}", "").splitlines()):
        if "<" in line and ">" in line:  # the legends
            continue
        if m := _ENDPOINT.match(line):
            listing.endpoints[m["name"]] = m["state"].strip()
        elif m := _CONTACT.match(line):
            rtt = m["rtt"]
            rtt_ms = float(rtt) if re.fullmatch(r"[0-9.]+", rtt) else None
            listing.contacts.append(Contact(m["aor"], m["uri"], m["status"], rtt_ms))
        elif m := _LISTED["Aor"].match(line):
            listing.aors.add(m["id"])
        elif m := _LISTED["Auth"].match(line):
            listing.auths[m["id"]] = m["value"].strip()
        elif m := _LISTED["Identify"].match(line):
            listing.identifies[m["id"]] = m["value"]
    return listing
