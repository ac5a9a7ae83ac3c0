"""The exec channel into an Asterisk pod: deliver a file set, reload, verify, roll back, observe.

One exec round per pod and pass: the new files travel as a gzip'd tar on stdin (never in the
command, which is part of the URL), framed by length so the shell needs no stdin EOF. The
script stages them, keeps the previous set, swaps, reloads PJSIP and the dialplan, and prints
what Asterisk loaded between markers. Success is decided by comparing that output with what
was rendered, never by the reload commands' own words (they report success even when they
kept the old configuration). On a mismatch the previous set is restored and reloaded.

Only files whose names start with `twiliotrunk-` or `didsegment-` in `pjsip.d/` and
`extensions.d/` belong to the operator; nothing else in the pod is touched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shlex
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from trunk_operator.render import EXTENSIONS_DIR, PJSIP_DIR, Files, files_hash

CONFIG_DIR = "/etc/asterisk"
STATE_DIR = f"{CONFIG_DIR}/.trunk-operator"
OWNED_GLOBS = tuple(
    f"{d}/{prefix}*.conf"
    for d in (PJSIP_DIR, EXTENSIONS_DIR)
    for prefix in ("twiliotrunk-", "didsegment-")
)
MARK = "=====trunk-operator:"


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


Exec = Callable[[list[str], bytes | None, float], ExecResult]
"""Run a command in the pod's Asterisk container: (argv, stdin, timeout) -> result."""


class ExecError(RuntimeError):
    """The pod could not be reached or the command did not run (retryable)."""


# ---- parsing of CLI output --------------------------------------------------------------


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


_DETAIL = re.compile(r"^\s*(?P<key>[a-z_0-9]+)\s+:\s?(?P<value>.*)$")


def parse_endpoint_detail(text: str) -> dict[str, str]:
    """The `ParameterName : ParameterValue` table of `pjsip show endpoint X`."""
    lines = (_DETAIL.match(line) for line in text.splitlines())
    return {m["key"]: m["value"].strip() for m in lines if m}


def parse_transports(text: str) -> set[str]:
    """Transport ids from `pjsip show transports`."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Transport:") and "<" not in line:
            names.add(line.split()[1])
    return names


# ---- what must be there after a reload ----------------------------------------------------


# What the specs set that verification does not read back from Asterisk: the dialplan's
# extensions beyond each context's presence (number normalisation, caller-ID pool, dial
# timeout, failover order, DID destinations). They are in the delivered files, whose content
# hashes are checked, and a dialplan that does not parse loses its contexts, which is checked.
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
class Mismatch:
    """One way Asterisk's loaded state differs from the rendered one, and whose it is."""

    owners: tuple[str, ...]
    message: str


def verify(
    expected: Expected,
    endpoints: Mapping[str, Endpoint],
    contexts: set[str],
    transports: set[str] | None = None,
    details: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Mismatch]:
    """What is missing or different; empty when Asterisk loaded exactly what was rendered.

    `details` holds `pjsip show endpoint X` tables for the endpoints checked in depth
    (codecs, media encryption, context, transport option); the listing covers the rest.
    """
    problems: list[Mismatch] = [
        Mismatch(owners, f"transport {t} does not exist in Asterisk (adding one needs a restart)")
        for t, owners in sorted(expected.transports.items())
        if transports is not None and t not in transports
    ]
    for want in expected.endpoints:

        def problem(message: str, want: ExpectedEndpoint = want) -> None:
            problems.append(Mismatch((want.owner,), message))

        got = endpoints.get(want.name)
        if got is None:
            problem(f"endpoint {want.name} is not loaded")
            continue
        if want.auth not in got.out_auths:
            problem(f"endpoint {want.name} has no outbound auth {want.auth}")
        elif want.username and got.auth_users.get(want.auth) != want.username:
            problem(f"auth {want.auth} has another username than the Secret's")
        # No `Transport:` line at all: the transport does not exist, reported above.
        if want.transport and got.transport not in (None, want.transport):
            problem(f"endpoint {want.name} uses transport {got.transport}, not {want.transport}")
        if set(got.aors) != set(want.aors):
            problem(f"endpoint {want.name} has AORs {sorted(got.aors)}, not {sorted(want.aors)}")
        for aor, uri in want.aors.items():
            if not any(c.aor == aor and contact_matches(c, uri) for c in got.contacts):
                problem(f"AOR {aor} has no contact {uri} (does the host resolve?)")
        if want.identify not in got.identifies:
            problem(f"identify {want.identify} is not loaded")
        elif not want.matches <= set(got.matches):
            problem(
                f"identify {want.identify} lacks matches {sorted(want.matches - set(got.matches))}"
            )
        detail = (details or {}).get(want.name)
        for message in _detail_mismatches(want, detail) if detail is not None else []:
            problem(message)
    missing: dict[str, list[str]] = {}
    for context, owner in sorted(expected.contexts.items()):
        if context not in contexts:
            missing.setdefault(owner, []).append(context)
    for owner, names in missing.items():
        shown = ", ".join(names[:5])
        problems.append(
            Mismatch((owner,), f"{len(names)} dialplan contexts are not loaded ({shown})")
        )
    return problems


def _detail_mismatches(want: ExpectedEndpoint, detail: Mapping[str, str]) -> list[str]:
    got_codecs = tuple(c for c in detail.get("allow", "").strip("()").split("|") if c)
    shown: dict[str, tuple[object, object]] = {
        "media_encryption": (detail.get("media_encryption"), want.media_encryption)
    }
    if want.codecs:
        shown["codecs"] = (got_codecs, want.codecs)
    if want.context:
        shown["context"] = (detail.get("context"), want.context)
    if want.transport:
        shown["transport"] = (detail.get("transport"), want.transport)
    # The source ACL keeps requests from outside the trunk's ranges out (a header anyone can
    # send may identify them); its addresses are not shown, its presence is.
    if "deny" not in detail.get("acl", ""):
        shown["acl"] = (detail.get("acl"), "deny/permit")
    if want.password_sha256 and detail.get("password_sha256") != want.password_sha256:
        return [
            *_shown_mismatches(want, shown),
            f"auth {want.auth} has another password than the Secret's (Asterisk kept the old one)",
        ]
    return _shown_mismatches(want, shown)


def _shown_mismatches(want: ExpectedEndpoint, shown: dict[str, tuple[object, object]]) -> list[str]:
    return [
        f"endpoint {want.name} has {name} {got!r}, not {wanted!r} (Asterisk kept another version)"
        for name, (got, wanted) in shown.items()
        if got != wanted
    ]


# ---- the delivery script ------------------------------------------------------------------


def pack(files: Files) -> bytes:
    """A deterministic gzip'd tar of the files (paths relative to the config directory)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(files):
            data = files[path].encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o640
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)


def _owned_files(base: str) -> str:
    return " ".join(f"{base}/{glob}" for glob in OWNED_GLOBS)


def _move_owned(glob: str, previous: str) -> str:
    directory = glob.split("/")[0]
    return f'for f in {CONFIG_DIR}/{glob}; do [ -e "$f" ] && mv "$f" {previous}/{directory}/; done'


def _section(name: str, command: str) -> str:
    return f'echo "{MARK}{name}"; {command}'


DETAIL_LIST = f"{STATE_DIR}/verify-endpoints"


def _observe() -> str:
    """Shell that prints what Asterisk has loaded, in marked sections: the listing, the
    contexts, the delivered hash, file digests, and `pjsip show endpoint X` for each name in
    DETAIL_LIST (one per line, written from stdin before)."""
    return "; ".join(
        [
            f'while read -r e; do echo "{MARK}endpoint:$e"; asterisk -rx "pjsip show endpoint $e";'
            f' echo "{MARK}auth:$e"; asterisk -rx "pjsip show auth $e-auth"'
            " | sed -n 's/^ *password *: //p' | sha256sum;"
            f" done < {DETAIL_LIST}",
            _section("endpoints", "asterisk -rx 'pjsip show endpoints'"),
            _section(
                "contexts",
                f"asterisk -rx 'dialplan show' > {STATE_DIR}/dialplan.txt;"
                f" grep '^\\[ Context' {STATE_DIR}/dialplan.txt; rm -f {STATE_DIR}/dialplan.txt",
            ),
            _section("hash", f"cat {STATE_DIR}/hash 2>/dev/null || true"),
            _section(
                "files",
                f"cd {CONFIG_DIR} && for f in {' '.join(OWNED_GLOBS)};"
                ' do [ -e "$f" ] && sha256sum "$f"; done; true',
            ),
        ]
    )


def _reload() -> str:
    return "; ".join(
        [
            _section("reload-pjsip", "asterisk -rx 'module reload res_pjsip.so' 2>&1"),
            _section("reload-dialplan", "asterisk -rx 'dialplan reload' 2>&1"),
        ]
    )


def _read_detail_list(size: int) -> str:
    return f"head -c {size} > {DETAIL_LIST}"


def deliver_script(size: int, digest: str, detail_size: int = 0) -> str:
    """Stage the tar from stdin, keep the previous set, swap, reload, observe.

    Stdin: the gzip'd tar (`size` bytes), then the endpoint names to check in depth."""
    staging, previous = f"{STATE_DIR}/staging", f"{STATE_DIR}/previous"
    return "\n".join(
        [
            "set -e",
            f"mkdir -p {STATE_DIR} {CONFIG_DIR}/{PJSIP_DIR} {CONFIG_DIR}/{EXTENSIONS_DIR}",
            f"rm -rf {staging} && mkdir -p {staging}",
            f"head -c {size} | tar -xzf - -C {staging}",
            _read_detail_list(detail_size),
            _section("transports", "asterisk -rx 'pjsip show transports'"),
            f"rm -rf {previous} && mkdir -p {previous}/{PJSIP_DIR} {previous}/{EXTENSIONS_DIR}",
            f"cp {STATE_DIR}/hash {previous}/hash 2>/dev/null || true",
            "set +e",
            *[_move_owned(glob, previous) for glob in OWNED_GLOBS],
            "set -e",
            f"cp -R {staging}/. {CONFIG_DIR}/",
            f"echo {shlex.quote(digest)} > {STATE_DIR}/hash",
            _reload(),
            _observe(),
        ]
    )


def rollback_script() -> str:
    """Put the previous set back and reload."""
    previous = f"{STATE_DIR}/previous"
    return "\n".join(
        [
            "set -e",
            f"test -d {previous}",
            f"rm -f {_owned_files(CONFIG_DIR)}",
            f"cp -R {previous}/{PJSIP_DIR} {previous}/{EXTENSIONS_DIR} {CONFIG_DIR}/",
            f"if [ -f {previous}/hash ]; then cp {previous}/hash {STATE_DIR}/hash;"
            f" else rm -f {STATE_DIR}/hash; fi",
            f": > {DETAIL_LIST}",  # what is restored was verified when it was delivered
            _reload(),
            _observe(),
        ]
    )


def sections(stdout: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith(MARK):
            name = line[len(MARK) :].strip()
            out[name] = ""
        elif name is not None:
            out[name] += line
    return out


# ---- the operations -----------------------------------------------------------------------


@dataclass
class Observation:
    """What one pod's Asterisk has loaded."""

    endpoints: dict[str, Endpoint]
    contexts: set[str]
    delivered_hash: str | None
    file_digests: dict[str, str] = field(default_factory=dict)  # path -> sha256 in the pod
    details: dict[str, dict[str, str]] = field(default_factory=dict)  # `pjsip show endpoint`


@dataclass
class DeliveryResult:
    ok: bool
    hash: str
    problems: list[Mismatch]
    observation: Observation | None
    rolled_back: bool = False


def _observation(parts: Mapping[str, str]) -> Observation:
    return Observation(
        endpoints=parse_endpoints(parts.get("endpoints", "")),
        contexts=parse_contexts(parts.get("contexts", "")),
        delivered_hash=parts.get("hash", "").strip() or None,
        file_digests={
            path: digest
            for digest, _, path in (
                line.partition("  ") for line in parts.get("files", "").splitlines()
            )
            if path
        },
        details=_details(parts),
    )


def _details(parts: Mapping[str, str]) -> dict[str, dict[str, str]]:
    details = {
        name.removeprefix("endpoint:"): parse_endpoint_detail(text)
        for name, text in parts.items()
        if name.startswith("endpoint:")
    }
    for name, text in parts.items():
        if name.startswith("auth:") and name.removeprefix("auth:") in details:
            details[name.removeprefix("auth:")]["password_sha256"] = (text.split() or [""])[0]
    return details


def drifted(files: Files, observation: Observation) -> bool:
    """Whether the pod's operator-owned files differ from the delivered set (hand edits)."""
    wanted = {path: hashlib.sha256(text.encode()).hexdigest() for path, text in files.items()}
    return wanted != observation.file_digests


def _run(exec_: Exec, script: str, stdin: bytes | None, timeout: float) -> ExecResult:
    return exec_(["sh", "-c", script], stdin, timeout)


def _error_lines(parts: Mapping[str, str]) -> list[str]:
    """Asterisk's own words from the reloads, when they say something went wrong."""
    lines = []
    for key in ("reload-pjsip", "reload-dialplan"):
        for line in parts.get(key, "").splitlines():
            if re.search(r"error|unable|fail|not found|could not", line, re.IGNORECASE):
                lines.append(line.strip())
    return lines[:5]


def _names(names: Iterable[str]) -> bytes:
    return "".join(f"{name}\n" for name in sorted(set(names))).encode()


def deliver(
    exec_: Exec,
    files: Files,
    expected: Expected,
    timeout: float = 120,
    detailed: Iterable[str] = (),
) -> DeliveryResult:
    """Deliver, reload and verify; `detailed` names the endpoints to check in depth (those
    whose configuration this delivery changes)."""
    digest = files_hash(files)
    payload = pack(files)
    names = _names(detailed)
    script = deliver_script(len(payload), digest, len(names))
    result = _run(exec_, script, payload + names, timeout)
    parts = sections(result.stdout)
    if result.returncode != 0 or "endpoints" not in parts:
        raise ExecError(
            f"delivery script failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        )
    observation = _observation(parts)
    transports = parse_transports(parts.get("transports", ""))
    problems = verify(
        expected, observation.endpoints, observation.contexts, transports, observation.details
    )
    if not problems:
        return DeliveryResult(True, digest, [], observation)
    problems += [Mismatch((), line) for line in _error_lines(parts)]
    back = _run(exec_, rollback_script(), None, timeout)
    restored = _observation(sections(back.stdout)) if back.returncode == 0 else None
    return DeliveryResult(False, digest, problems, restored, rolled_back=back.returncode == 0)


def observe(exec_: Exec, timeout: float = 30, detailed: Iterable[str] = ()) -> Observation:
    names = _names(detailed)
    script = f"mkdir -p {STATE_DIR}; {_read_detail_list(len(names))}; {_observe()}"
    result = _run(exec_, script, names, timeout)
    if result.returncode != 0:
        raise ExecError(
            f"observe failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        )
    return _observation(sections(result.stdout))
