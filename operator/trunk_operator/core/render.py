"""Pure rendering: models in, Asterisk configuration files out. No I/O beyond the templates.

Every value written into a file passes through `asterisk_value`, the template environment's
`finalize`: control characters (a newline would start a new line, section or `#` directive)
are rejected, and `;` (a comment in Asterisk files) is escaped as `\\;`, which Asterisk reads
back as `;`. Output is deterministic, so `files_hash` identifies a configuration.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

from trunk_operator.core.models import TWILIO_SIGNALLING_RANGES, DIDSegmentSpec, TwilioTrunkSpec

Files = dict[str, str]
"""Path relative to the Asterisk configuration directory -> file content."""

PJSIP_DIR = "pjsip.d"
EXTENSIONS_DIR = "extensions.d"
DID_BUCKET_DIGITS = 3  # DIDs are spread over contexts by their last digits
POOL_BUCKET_SIZE = 1000
POD_FILE = "trunk-operator.conf"
POD_FILES = (f"{PJSIP_DIR}/{POD_FILE}", f"{EXTENSIONS_DIR}/{POD_FILE}")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RenderError(ValueError):
    """A value cannot be written into Asterisk configuration as it is."""


def asterisk_value(value: Any) -> str:
    text = str(value)
    if _CONTROL.search(text):
        raise RenderError("value contains a control character (newline, tab or similar)")
    if text != text.strip():
        raise RenderError("value starts or ends with whitespace, which Asterisk strips")
    return text.replace(";", "\\;")


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("trunk_operator.core", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    finalize=asterisk_value,
)


@dataclass(frozen=True)
class TrunkNames:
    """Asterisk object and context names of one trunk, derived in one place."""

    endpoint: str

    @property
    def auth(self) -> str:
        return f"{self.endpoint}-auth"

    @property
    def identify(self) -> str:
        return f"{self.endpoint}-identify"

    def aor(self, edge: str | None) -> str:
        return f"{self.endpoint}-{edge}" if edge else f"{self.endpoint}-aor"

    @property
    def dispatch_context(self) -> str:
        return f"trunkop-in-{self.endpoint}"

    @property
    def did_context_prefix(self) -> str:
        return f"trunkop-in-{self.endpoint}-"

    @property
    def dial_context(self) -> str:
        return f"trunkop-out-{self.endpoint}"

    @property
    def caller_id_context(self) -> str:
        return f"trunkop-cid-{self.endpoint}"

    @property
    def pool_counter(self) -> str:
        return "TRUNKOP_CID_" + re.sub(r"[^A-Za-z0-9]", "_", self.endpoint)


def trunk_names(name: str, spec: TwilioTrunkSpec) -> TrunkNames:
    return TrunkNames(endpoint=spec.endpoint(name))


def trunk_paths(name: str) -> tuple[str, str, str]:
    """(pjsip file, auth file, extensions file) of a trunk."""
    return (
        f"{PJSIP_DIR}/twiliotrunk-{name}.conf",
        f"{PJSIP_DIR}/twiliotrunk-{name}-auth.conf",
        f"{EXTENSIONS_DIR}/twiliotrunk-{name}.conf",
    )


def segment_path(name: str) -> str:
    return f"{EXTENSIONS_DIR}/didsegment-{name}.conf"


@dataclass(frozen=True)
class Aor:
    id: str
    contact: str


def _contact_uri(host: str, secure: bool, user: str = "") -> str:
    at = f"{user}@" if user else ""
    return f"sip:{at}{host}:5061;transport=tls" if secure else f"sip:{at}{host}"


def aors(name: str, spec: TwilioTrunkSpec) -> list[Aor]:
    names = trunk_names(name, spec)
    edges: list[str | None] = list(spec.edges) or [None]
    hosts = spec.edge_hosts()
    return [
        Aor(names.aor(edge), _contact_uri(host, spec.secure))
        for edge, host in zip(edges, hosts, strict=True)
    ]


def identify_sources(spec: TwilioTrunkSpec) -> list[str]:
    ranges = list(TWILIO_SIGNALLING_RANGES) if spec.inbound.twilio_signalling_ranges else []
    return ranges + [r for r in spec.inbound.extra_source_ranges if r not in ranges]


@dataclass(frozen=True)
class Normalization:
    pattern: str
    number: str


def normalization_rules(country_code: str) -> list[Normalization]:
    """Dialplan patterns that turn what people dial into E.164 (Twilio rejects others)."""
    rules = [Normalization("_+X.", "${EXTEN}"), Normalization("_00X.", "+${EXTEN:2}")]
    if country_code == "1":
        rules += [
            Normalization("_011X.", "+${EXTEN:3}"),
            Normalization("_1NXXXXXXXXX", "+${EXTEN}"),
            Normalization("_NXXXXXXXXX", "+1${EXTEN}"),
        ]
    else:
        rules += [
            Normalization("_0X.", f"+{country_code}${{EXTEN:1}}"),
            Normalization("_[1-9]X.", f"+{country_code}${{EXTEN}}"),
        ]
    return rules


def render_trunk(name: str, spec: TwilioTrunkSpec) -> Files:
    """The trunk's non-secret files: PJSIP endpoint/AORs/identify and its dialplan."""
    names = trunk_names(name, spec)
    pjsip_path, _, extensions_path = trunk_paths(name)
    failover = " | ".join(f'"${{DIALSTATUS}}" = "{s}"' for s in spec.outbound.failover_on)
    return {
        pjsip_path: _env.get_template("trunk-pjsip.conf.j2").render(
            name=name,
            spec=spec,
            endpoint=names.endpoint,
            auth_id=names.auth,
            identify_id=names.identify,
            dispatch_context=names.dispatch_context,
            aors=aors(name, spec),
            sources=identify_sources(spec),
        ),
        extensions_path: _env.get_template("trunk-extensions.conf.j2").render(
            name=name,
            spec=spec,
            endpoint=names.endpoint,
            dispatch_context=names.dispatch_context,
            did_context_prefix=names.did_context_prefix,
            dial_context=names.dial_context,
            caller_id_context=names.caller_id_context,
            normalization=normalization_rules(spec.outbound.default_country_code),
            dial_targets=[
                (
                    f"PJSIP/{names.endpoint}/{_contact_uri(h, spec.secure, '${TRUNKOP_NUMBER}')}",
                    aor.id,
                )
                for h, aor in zip(spec.edge_hosts(), aors(name, spec), strict=True)
            ],
            failover_test=failover,
            # An edge that drops every packet fails only after SIP's 32 s transaction timeout,
            # after most dial timeouts (NOANSWER, no failover): with qualify on, edges
            # Asterisk already found unreachable are skipped.
            skip_unreachable=spec.qualify_frequency_seconds > 0 and len(spec.edges) > 1,
        ),
    }


def render_trunk_auth(name: str, spec: TwilioTrunkSpec, username: str, password: str) -> Files:
    """The auth section, kept apart so it lives in a Secret, never in a ConfigMap."""
    if not username or not password:
        raise RenderError("username and password must not be empty")
    _, auth_path, _ = trunk_paths(name)
    return {
        auth_path: _env.get_template("trunk-auth.conf.j2").render(
            name=name,
            secret_name=spec.credentials.secret_name,
            auth_id=trunk_names(name, spec).auth,
            username=username,
            password=password,
        )
    }


@dataclass(frozen=True)
class CallerIdPoolPlan:
    strategy: str
    size: int
    counter: str
    buckets: list[tuple[int, list[str]]]


def render_segment(
    name: str,
    spec: DIDSegmentSpec,
    trunk_name: str,
    trunk: TwilioTrunkSpec,
    excluded: Iterable[str] = (),
) -> Files:
    """Inbound routes (and the caller-ID pool) of a segment; `excluded` DIDs belong elsewhere."""
    names = trunk_names(trunk_name, trunk)
    skip = set(excluded)
    dids = [d for d in spec.dids() if d not in skip]
    overrides = {o.number: o for o in spec.overrides}
    default_context = spec.destination.context or trunk.inbound.context
    buckets: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for did in dids:
        target = overrides.get(did, spec.destination)
        buckets[did[-DID_BUCKET_DIGITS:]].append(
            (did, target.context or default_context, target.extension)
        )
    pool = None
    if spec.caller_id_pool.enabled and dids:
        pool = CallerIdPoolPlan(
            strategy=spec.caller_id_pool.strategy,
            size=len(dids),
            counter=names.pool_counter,
            buckets=[
                (i // POOL_BUCKET_SIZE, dids[i : i + POOL_BUCKET_SIZE])
                for i in range(0, len(dids), POOL_BUCKET_SIZE)
            ],
        )
    return {
        segment_path(name): _env.get_template("segment-extensions.conf.j2").render(
            name=name,
            trunk_name=trunk_name,
            did_count=len(dids),
            did_context_prefix=names.did_context_prefix,
            buckets=sorted(buckets.items()),
            caller_id_context=names.caller_id_context,
            pool=pool,
        )
    }


_CONTEXT_LINE = re.compile(r"^\[([^\]]+)\]", re.MULTILINE)


def contexts_in(files: Mapping[str, str]) -> set[str]:
    """The dialplan contexts the extensions files define."""
    found: set[str] = set()
    for path, text in files.items():
        if path.startswith(EXTENSIONS_DIR + "/"):
            found.update(_CONTEXT_LINE.findall(text))
    return found


def files_hash(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + files[path].encode() + b"\0")
    return digest.hexdigest()


def pod_files(parts: Iterable[tuple[str, Files]]) -> Files:
    """What one Asterisk pod receives: the files of its CRs, (ref, files) in the order given,
    joined into one file per directory (`POD_FILES`), each part under a comment naming its
    CR and file. One file because a PJSIP reload grows with the square of the file count
    (reference twilio-and-asterisk, section 5); the comments keep it readable in the pod."""
    chunks: dict[str, list[str]] = {PJSIP_DIR: [], EXTENSIONS_DIR: []}
    for ref, files in parts:
        for path in sorted(files):
            text = files[path] if files[path].endswith("\n") else files[path] + "\n"
            chunks[path.split("/", 1)[0]].append(f"; ==== {ref}: {path}\n{text}\n")
    return {
        f"{directory}/{POD_FILE}": _POD_HEADER + "".join(texts)
        for directory, texts in chunks.items()
        if texts
    }


_POD_HEADER = (
    "; Written by the trunk operator: one part per TwilioTrunk or DIDSegment, in name order.\n"
    "; Edits are replaced on the next delivery; change the CRs instead.\n\n"
)
