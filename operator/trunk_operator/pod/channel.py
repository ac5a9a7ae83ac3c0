"""The exec channel into an Asterisk pod: deliver a file set, reload, verify, roll back, observe.

One exec round per pod and pass: the new files travel as a gzip'd tar on stdin (never in the
command, which is part of the URL), framed by length so the shell needs no stdin EOF. The
script stages them, keeps the previous set, renames the new files into place (a reload by
anyone at any moment reads the old set or the new), reloads what changed, and prints what
Asterisk loaded between markers. Success is decided by comparing that output with what was
rendered, never by the reload commands' own words (they report success even when they kept
the old configuration; `verify`). On a mismatch the previous set is restored and reloaded.

What is read back costs about the same at 10 trunks as at 10,000 (`pjsip show endpoints` and
`dialplan show` grow with the square of the set; reference twilio-and-asterisk, section 5):
- every object's presence, from the `pjsip list` tables: endpoints with their state, AORs,
  auths with their usernames, identifies with their endpoint, contacts with status and RTT;
- in depth, one `pjsip show endpoint X` (and the auth's password hash) per endpoint that a
  delivery changes and Asterisk had before: codecs, media encryption, context, transport,
  ACL, identify criteria (a new object is loaded as rendered or missing);
- the dialplan contexts a delivery changes, one `dialplan show CTX` each (one full listing
  when there are many, e.g. the buckets of a large DIDSegment).
Each read is checked against the count Asterisk prints after it: on a loaded node its CLI drops
output a reader does not take within 100 ms (asterisk_output), and a read cut short is read
again (READ_ATTEMPTS), never taken for missing objects.

A pod holds one operator file per directory (`POD_FILES`): a PJSIP reload parses every
included file once per object type and looks each one up in a list, so its cost grows with
the square of the file count, and in one file it is linear. Nothing else is touched.

The scripts that run in the pod are files (`scripts/`, sent by `shell.command`); this module
gives them their parameters and reads what they print.

A pod that takes its trunks over ARI (`pod.ari`) gets the same set: its PJSIP file goes to
PUSHED_DIR instead of pjsip.d/, and the objects that differ are pushed instead of reloaded.

One delivery (or rollback) runs in a pod at a time (LOCK): an exec that timed out leaves its
script running there, and the next one waits for it. Observations take no lock.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from trunk_operator.core.asterisk_output import (
    ADDED_LISTS,
    LISTS,
    contexts_complete,
    parse_contexts,
    parse_endpoint_detail,
    parse_endpoints,
    parse_listing,
    parse_transports,
    table_complete,
)
from trunk_operator.core.render import (
    EXTENSIONS_DIR,
    PJSIP_DIR,
    POD_FILE,
    Files,
    files_hash,
)
from trunk_operator.core.verify import (
    ARI_PUSH_FAILED,
    Expected,
    Mismatch,
    Observation,
    Probe,
    verify,
)
from trunk_operator.kube.exec import Exec, ExecError, ExecResult
from trunk_operator.pod import shell
from trunk_operator.pod.delivery import FILES, NOTHING_PUSHED, RECORD_DIFFERS, Delivery, Round

CONFIG_DIR = "/etc/asterisk"
STATE_DIR = f"{CONFIG_DIR}/.trunk-operator"
# A pod delivered over ARI (pod.ari): its PJSIP file is what was pushed, kept here.
PUSHED_DIR = f"{STATE_DIR}/pushed"
MARK = "=====trunk-operator:"
# Above this many contexts to check, one full `dialplan show` costs less than one each.
FULL_DIALPLAN_AT = 40
# At most this many endpoints read in depth per delivery (two `asterisk -rx` each); beyond,
# every object's presence comes from the listings and the observer's audit reads the rest in
# depth over its rounds. A retry after a timed-out delivery can find thousands of changed
# endpoints already loaded (its predecessor kept running in the pod).
DETAILS_AT_MOST = 50
LISTINGS_ONLY = Probe()  # nothing read in depth
RELOAD_COMMANDS = {PJSIP_DIR: "module reload res_pjsip.so", EXTENSIONS_DIR: "dialplan reload"}
LOCK = f"{STATE_DIR}/lock"  # one delivery script at a time in a pod (scripts/lib.sh)
DETAIL_LIST = f"{STATE_DIR}/verify-endpoints"
ADDED = f"{STATE_DIR}/adds-endpoints"  # present when a delivery adds endpoints
CONTEXT_LIST = f"{STATE_DIR}/verify-contexts"
# A read that Asterisk's CLI cut short (asterisk_output) is read again, this many times in all.
READ_ATTEMPTS = 3
READERS = 4  # `asterisk -rx` processes reading in parallel (each costs a process start)


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
    # Level 1: the pipe is local, and the higher levels cost more than they save.
    return gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)


# ---- the pod scripts' parameters (scripts/*.sh) --------------------------------------------


def _common(detail_size: int, context_size: int) -> dict[str, str | int]:
    """What every pod script is given: where things are, and the sizes of the probe lists
    that follow on stdin."""
    return {
        "CONFIG_DIR": CONFIG_DIR,
        "STATE_DIR": STATE_DIR,
        "PUSHED_DIR": PUSHED_DIR,
        "MARK": MARK,
        "PJSIP_DIR": PJSIP_DIR,
        "EXTENSIONS_DIR": EXTENSIONS_DIR,
        "POD_FILE": POD_FILE,
        "DETAIL_LIST": DETAIL_LIST,
        "CONTEXT_LIST": CONTEXT_LIST,
        "ADDED": ADDED,
        "READERS": READERS,
        "FULL_DIALPLAN_AT": FULL_DIALPLAN_AT,
        "DETAILS_AT_MOST": DETAILS_AT_MOST,
        "PJSIP_RELOAD": RELOAD_COMMANDS[PJSIP_DIR],
        "DIALPLAN_RELOAD": RELOAD_COMMANDS[EXTENSIONS_DIR],
        "LISTS": " ".join(LISTS),
        "ADDED_LISTS": " ".join(ADDED_LISTS),
        "DETAIL_SIZE": detail_size,
        "CONTEXT_SIZE": context_size,
    }


def deliver_script(
    size: int,
    digest: str,
    detail_size: int = 0,
    context_size: int = 0,
    reload: Iterable[str] = (PJSIP_DIR, EXTENSIONS_DIR),
    delivery: Delivery = FILES,
    lock_wait: float = 60,
    run: Round = NOTHING_PUSHED,
) -> str:
    """scripts/deliver.sh: stage the tar from stdin, keep the previous set, swap, reload (or
    push), observe. Stdin: the gzip'd tar (`size` bytes), then the endpoint names to check in
    depth, then the contexts to check (one per line), then `run.stdin`. `reload`: the
    directories whose files changed."""
    directories = set(reload)
    params = {
        **_common(detail_size, context_size),
        **_strategy(delivery, run, lock_wait),
        "TAR_SIZE": size,
        "DIGEST": digest,
        "RELOAD_PJSIP": "1" if PJSIP_DIR in directories else "",
        "RELOAD_DIALPLAN": "1" if EXTENSIONS_DIR in directories else "",
    }
    return shell.command("deliver.sh", params, delivery.functions)


def rollback_script(
    delivery: Delivery = FILES, lock_wait: float = 60, run: Round = NOTHING_PUSHED
) -> str:
    """scripts/rollback.sh: put the previous set back and reload it (over ARI: push it back
    first, so no id is in memory when a restored trunk file brings it back)."""
    params = {**_common(0, 0), **_strategy(delivery, run, lock_wait)}
    return shell.command("rollback.sh", params, delivery.functions)


def _strategy(delivery: Delivery, run: Round, lock_wait: float) -> dict[str, str | int]:
    return {
        **run.params,
        "PUSHED": "1" if delivery.pushed else "",
        "LOCK_WAIT": f"{max(lock_wait, 1):.0f}",
    }


def observe_script(
    detail_size: int, context_size: int, pushed: bool, whole_dialplan: bool = True
) -> str:
    """scripts/observe.sh: what the pod serves now, changing nothing."""
    return shell.command(
        "observe.sh",
        {
            **_common(detail_size, context_size),
            "PUSHED": "1" if pushed else "",
            "WHOLE_DIALPLAN": "1" if whole_dialplan else "",
        },
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
class DeliveryResult:
    ok: bool
    hash: str
    problems: list[Mismatch]
    observation: Observation | None
    rolled_back: bool = False
    phases: dict[str, float] = field(default_factory=dict)  # seconds: stage, reload, read
    ari_unavailable: str = ""  # the executor's words when ARI could not be used at all
    read_again: list[str] = field(default_factory=list)  # reads Asterisk's CLI cut short
    delivery: Delivery = FILES  # the strategy as this delivery left it (its copy of the record)


def _phases(parts: Mapping[str, str]) -> dict[str, float]:
    clocks = {
        name.removeprefix("clock:"): int(text.strip() or 0)
        for name, text in parts.items()
        if name.startswith("clock:")
    }
    steps = {
        "stage": ("start", "swapped"),
        "reload": ("swapped", "reloaded"),
        "read": ("reloaded", "read"),
    }
    return {
        name: (clocks[end] - clocks[begin]) / 1e9
        for name, (begin, end) in steps.items()
        if begin in clocks and end in clocks
    }


def _observation(parts: Mapping[str, str], probe: Probe, expected: Expected) -> Observation:
    shown = {
        name.removeprefix("endpoint:"): text
        for name, text in parts.items()
        if name.startswith("endpoint:")
    }
    details = {name: parse_endpoint_detail(text) for name, text in shown.items()}
    for name, text in parts.items():
        if name.startswith("auth:") and name.removeprefix("auth:") in details:
            details[name.removeprefix("auth:")]["password_sha256"] = (text.split() or [""])[0]
    return Observation(
        listing=parse_listing(parts),
        delivered_hash=parts.get("hash", "").strip() or None,
        file_digests={
            path: digest
            for digest, _, path in (
                line.partition("  ") for line in parts.get("files", "").splitlines()
            )
            if path
        },
        shown={
            name: endpoint
            for text in shown.values()
            for name, endpoint in parse_endpoints(text).items()
        },
        details=details,
        contexts=parse_contexts(_contexts_read(parts)) & probe.contexts,
        contexts_checked=probe.contexts,
        cut_short=_cut_short(parts, probe),
    ).attach(expected)


def _contexts_read(parts: Mapping[str, str]) -> str:
    """The kept lines of the dialplan reads: the whole `dialplan show`, or one per context."""
    return parts["dialplan"] if "dialplan" in parts else parts.get("contexts", "")


def _cut_short(parts: Mapping[str, str], probe: Probe) -> list[str]:
    """The reads of this run whose output Asterisk's CLI cut short."""
    tables = {f"list-{kind}": kind for kind in (*LISTS, *ADDED_LISTS)} | {
        "transports": "transports"
    }
    cut = [
        name
        for name, kind in tables.items()
        if name in parts and not table_complete(parts[name], kind)
    ]
    checked = len(probe.contexts)
    reads = 1 if "dialplan" in parts else checked
    if checked and not contexts_complete(_contexts_read(parts), reads):
        cut.append("contexts")
    return cut


def _run(exec_: Exec, script: str, stdin: bytes | None, timeout: float) -> ExecResult:
    return exec_(["sh", "-c", script], stdin, timeout)


def _error_lines(parts: Mapping[str, str]) -> list[Mismatch]:
    """Asterisk's own words from the reloads (and the pusher's), when they say something
    went wrong; they belong to no one CR."""
    found = [
        Mismatch((), line, ARI_PUSH_FAILED)
        for line in parts.get("ari", "").splitlines()
        if line.startswith("ari-")
    ]
    for key in (*(f"reload-{d}" for d in RELOAD_COMMANDS), "reload-migration"):
        for line in parts.get(key, "").splitlines():
            if re.search(r"error|unable|fail|not found|could not", line, re.IGNORECASE):
                found.append(Mismatch((), line.strip()))
    return found[:5]


def _roll_back(
    exec_: Exec, delivery: Delivery, wait: float, timeout: float
) -> tuple[ExecResult, Delivery]:
    """The rollback's run, again from the pod's record when the operator's copy was not it."""
    for _ in range(2):
        run = delivery.push_back()
        result = _run(exec_, rollback_script(delivery, wait, run), run.stdin or None, timeout)
        delivery = delivery.after(run, sections(result.stdout))
        if result.returncode != RECORD_DIFFERS:
            break
    return result, delivery


def _lines(names: Iterable[str]) -> bytes:
    return "".join(f"{name}\n" for name in sorted(set(names))).encode()


def deliver(
    exec_: Exec,
    files: Files,
    expected: Expected,
    timeout: float = 120,
    probe: Probe = LISTINGS_ONLY,
    reload: Iterable[str] = (PJSIP_DIR, EXTENSIONS_DIR),
    delivery: Delivery = FILES,
    digest: str | None = None,
) -> DeliveryResult:
    """Deliver, reload what `reload` names and verify; `probe` names what to check beyond
    the listings (what this delivery changes); `delivery`: files, or the PJSIP objects over
    ARI (pod.delivery); `digest`: the files' `files_hash`, when the caller has it."""
    started = time.monotonic()
    digest = digest or files_hash(files)
    sent = _send(exec_, files, digest, probe, set(reload), delivery, timeout)
    parts, delivery = sent.parts, sent.delivery
    observation = _observation(parts, probe, expected)
    read_again = observation.cut_short
    observation, transports = _complete(
        exec_,
        expected,
        timeout,
        probe,
        delivery,
        observation,
        parse_transports(parts.get("transports", "")),
    )
    problems = verify(expected, observation, transports)
    if not problems:
        # Where the time went: packing here, the exec (the script's own phases inside it),
        # parsing and verifying here.
        phases = {"pack": sent.at - started, "exec": sent.took, **_phases(parts)}
        phases["verify"] = time.monotonic() - sent.at - sent.took  # and reading again
        return DeliveryResult(
            True, digest, [], observation, phases=phases, read_again=read_again, delivery=delivery
        )
    return _rolled_back(exec_, expected, timeout, delivery, digest, problems, parts)


@dataclass(frozen=True)
class _Sent:
    parts: dict[str, str]  # what the script printed, by section
    delivery: Delivery  # as the run left it
    at: float  # monotonic time the exec started
    took: float  # the exec's seconds


def _send(
    exec_: Exec,
    files: Files,
    digest: str,
    probe: Probe,
    reload: set[str],
    delivery: Delivery,
    timeout: float,
) -> _Sent:
    """The delivery script's run, again when the pod's record of what was pushed over ARI
    was not the strategy's copy (it then changed nothing and printed its own)."""
    payload = pack(files)
    details, contexts = _lines(probe.details), _lines(probe.contexts)
    wait = timeout / 2  # the rest is the script's own time
    for _ in range(2):
        run = delivery.push(files, PJSIP_DIR in reload)
        script = deliver_script(
            len(payload), digest, len(details), len(contexts), reload, delivery, wait, run
        )
        at = time.monotonic()
        result = _run(exec_, script, payload + details + contexts + run.stdin, timeout)
        took = time.monotonic() - at
        parts = sections(result.stdout)
        delivery = delivery.after(run, parts)
        if result.returncode != RECORD_DIFFERS:
            break
    if result.returncode != 0 or "files" not in parts:  # the last section: it ran through
        raise ExecError(
            f"delivery script failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        )
    return _Sent(parts, delivery, at, took)


def _complete(
    exec_: Exec,
    expected: Expected,
    timeout: float,
    probe: Probe,
    delivery: Delivery,
    observation: Observation,
    transports: dict[str, str],
) -> tuple[Observation, dict[str, str]]:
    """The delivery's read, or a whole one read again (no reload) when Asterisk's CLI cut it
    short: the new endpoints in depth too, within the same bound. Still cut short, nothing can
    be verified: the previous set goes back, and the caller retries."""
    if not observation.cut_short:
        return observation, transports
    again = Probe(frozenset(sorted(probe.details)[:DETAILS_AT_MOST]), probe.contexts)
    observation, transports = _read_again(
        exec_, expected, timeout, again, delivery.pushed, READ_ATTEMPTS - 1
    )
    if observation.cut_short:
        _roll_back(exec_, delivery, timeout / 2, timeout)
        raise ExecError(f"{_cut_short_message(observation)}; the previous set was put back")
    return observation, transports


def _rolled_back(
    exec_: Exec,
    expected: Expected,
    timeout: float,
    delivery: Delivery,
    digest: str,
    problems: list[Mismatch],
    parts: Mapping[str, str],
) -> DeliveryResult:
    """Asterisk did not load what was rendered: its own words join the mismatches, and the
    previous set goes back."""
    errors = _error_lines(parts)
    problems += errors
    back, delivery = _roll_back(exec_, delivery, timeout / 2, timeout)
    restored = (
        _observation(sections(back.stdout), LISTINGS_ONLY, expected)
        if back.returncode == 0
        else None
    )
    unavailable = [e.message for e in errors if e.message.startswith("ari-unavailable:")]
    return DeliveryResult(
        False,
        digest,
        problems,
        restored,
        rolled_back=back.returncode == 0,
        ari_unavailable=unavailable[0] if unavailable else "",
        delivery=delivery,
    )


def observe(
    exec_: Exec,
    expected: Expected,
    timeout: float = 30,
    probe: Probe = LISTINGS_ONLY,
    pushed: bool = False,
) -> Observation:
    """What the pod serves now; `expected` links listed contacts to their endpoints;
    `pushed`: the pod takes its PJSIP objects over ARI (where its PJSIP file is kept)."""
    observation, _ = _read(exec_, expected, timeout, probe, pushed)
    if observation.cut_short:
        observation, _ = _read_again(exec_, expected, timeout, probe, pushed, READ_ATTEMPTS - 1)
    if observation.cut_short:
        raise ExecError(_cut_short_message(observation))
    return observation


def _read(
    exec_: Exec,
    expected: Expected,
    timeout: float,
    probe: Probe,
    pushed: bool,
    whole_dialplan: bool = True,
) -> tuple[Observation, dict[str, str]]:
    """One read of what the pod serves, and its transports; nothing is changed."""
    details, contexts = _lines(probe.details), _lines(probe.contexts)
    script = observe_script(len(details), len(contexts), pushed, whole_dialplan)
    result = _run(exec_, script, details + contexts, timeout)
    if result.returncode != 0:
        raise ExecError(
            f"observe failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        )
    parts = sections(result.stdout)
    observation = _observation(parts, probe, expected)
    return observation, parse_transports(parts.get("transports", ""))


def _read_again(
    exec_: Exec, expected: Expected, timeout: float, probe: Probe, pushed: bool, attempts: int
) -> tuple[Observation, dict[str, str]]:
    """After a read Asterisk cut short: up to `attempts` more, each context on its own (the
    last one is returned, cut or not)."""
    for _ in range(attempts - 1):
        observation, transports = _read(exec_, expected, timeout, probe, pushed, False)
        if not observation.cut_short:
            return observation, transports
    return _read(exec_, expected, timeout, probe, pushed, False)


def _cut_short_message(observation: Observation) -> str:
    return (
        f"Asterisk's CLI cut short its output ({', '.join(observation.cut_short)})"
        f" {READ_ATTEMPTS} times in a row: it drops what a reader does not take within"
        " 100 ms (a loaded node)"
    )
