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
from collections.abc import Callable, Mapping
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
            current.out_auths.append(value.split("/", 1)[0])
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


def parse_transports(text: str) -> set[str]:
    """Transport ids from `pjsip show transports`."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Transport:") and "<" not in line:
            names.add(line.split()[1])
    return names


# ---- what must be there after a reload ----------------------------------------------------


@dataclass(frozen=True)
class ExpectedEndpoint:
    owner: str  # the resource these objects come from, e.g. "TwilioTrunk/acme"
    name: str
    auth: str
    aors: dict[str, str]  # aor id -> contact URI as Asterisk lists it
    identify: str
    matches: frozenset[str]


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
) -> list[Mismatch]:
    """What is missing or different; empty when Asterisk loaded exactly what was rendered."""
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


def _observe() -> str:
    """Shell that prints what Asterisk has loaded, in marked sections."""
    return "; ".join(
        [
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


def deliver_script(size: int, digest: str) -> str:
    """Stage the tar from stdin, keep the previous set, swap, reload, observe."""
    staging, previous = f"{STATE_DIR}/staging", f"{STATE_DIR}/previous"
    return "\n".join(
        [
            "set -e",
            f"mkdir -p {STATE_DIR} {CONFIG_DIR}/{PJSIP_DIR} {CONFIG_DIR}/{EXTENSIONS_DIR}",
            f"rm -rf {staging} && mkdir -p {staging}",
            f"head -c {size} | tar -xzf - -C {staging}",
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
    )


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


def deliver(exec_: Exec, files: Files, expected: Expected, timeout: float = 120) -> DeliveryResult:
    digest = files_hash(files)
    payload = pack(files)
    result = _run(exec_, deliver_script(len(payload), digest), payload, timeout)
    parts = sections(result.stdout)
    if result.returncode != 0 or "endpoints" not in parts:
        raise ExecError(
            f"delivery script failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        )
    observation = _observation(parts)
    transports = parse_transports(parts.get("transports", ""))
    problems = verify(expected, observation.endpoints, observation.contexts, transports)
    if not problems:
        return DeliveryResult(True, digest, [], observation)
    problems += [Mismatch((), line) for line in _error_lines(parts)]
    back = _run(exec_, rollback_script(), None, timeout)
    restored = _observation(sections(back.stdout)) if back.returncode == 0 else None
    return DeliveryResult(False, digest, problems, restored, rolled_back=back.returncode == 0)


def observe(exec_: Exec, timeout: float = 30) -> Observation:
    result = _run(exec_, _observe(), None, timeout)
    if result.returncode != 0:
        raise ExecError(
            f"observe failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        )
    return _observation(sections(result.stdout))
