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
the square of the file count, and in one file it is linear. Files of the earlier layout
(`LEGACY_GLOBS`) are still owned: the first delivery moves them out in the same swap as it
brings the new file in, before one reload, so service has no gap. Nothing else is touched.

A pod that takes its trunks over ARI (`pod.ari`) gets the same set: its PJSIP file goes to
PUSHED_DIR instead of pjsip.d/, and the objects that differ are pushed instead of reloaded.

One delivery (or rollback) runs in a pod at a time (LOCK): an exec that timed out leaves its
script running there, and the next one waits for it. Observations take no lock.
"""

from __future__ import annotations

import gzip
import io
import re
import shlex
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
from trunk_operator.core.render import EXTENSIONS_DIR, PJSIP_DIR, POD_FILES, Files, files_hash
from trunk_operator.core.verify import Expected, Mismatch, Observation, Probe, verify
from trunk_operator.kube.exec import Exec, ExecError, ExecResult
from trunk_operator.pod.ari import (
    AriAccess,
    boot_epoch,
    light_after_push,
    push,
    pushed_endpoints,
    refuse_when_pushed,
)

CONFIG_DIR = "/etc/asterisk"
STATE_DIR = f"{CONFIG_DIR}/.trunk-operator"
# One file per CR, and an auth file per trunk: the layout of operator versions up to 0.1.0.
LEGACY_GLOBS = tuple(
    f"{d}/{prefix}*.conf"
    for d in (PJSIP_DIR, EXTENSIONS_DIR)
    for prefix in ("twiliotrunk-", "didsegment-")
)
OWNED_GLOBS = (*POD_FILES, *LEGACY_GLOBS)
PJSIP_GLOBS = tuple(glob for glob in OWNED_GLOBS if glob.startswith(f"{PJSIP_DIR}/"))
# A pod delivered over ARI (pod.ari): its PJSIP file is what was pushed, kept here.
PUSHED_DIR = f"{STATE_DIR}/pushed"
MARK = "=====trunk-operator:"
# Above this many contexts to check, one full `dialplan show` costs less than one each.
FULL_DIALPLAN_AT = 40
# At most this many endpoints read in depth per delivery (two `asterisk -rx` each, ~20 ms);
# beyond, every object's presence comes from the listings and the observer's audit reads the
# rest in depth over its rounds. A retry after a timed-out delivery can find thousands of
# changed endpoints already loaded (its predecessor kept running in the pod).
DETAILS_AT_MOST = 50
LISTINGS_ONLY = Probe()  # nothing read in depth
RELOAD_COMMANDS = {PJSIP_DIR: "module reload res_pjsip.so", EXTENSIONS_DIR: "dialplan reload"}


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
    # Level 1: the pipe is local, and level 6 costs 0.17 s for 10,000 trunks.
    return gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)


def _owned_files(base: str) -> str:
    return " ".join(f"{base}/{glob}" for glob in OWNED_GLOBS)


def _move_owned(glob: str, previous: str, keep: bool = False) -> str:
    """Shell: our files of `glob` into `previous`; `keep`: copied, they stay in place."""
    directory, verb = glob.split("/")[0], "cp -p" if keep else "mv"
    return (
        f'for f in {CONFIG_DIR}/{glob}; do [ -e "$f" ] && {verb} "$f" {previous}/{directory}/; done'
    )


def _rename_in(source: str) -> str:
    """Shell (file pods): the set in `source` (staged, or a previous one) in place by rename,
    which is atomic: a reload at any moment, ours or anyone's, reads the old file or the new,
    never none. Then the owned files that set does not have go (an earlier layout's)."""
    owned = " ".join(OWNED_GLOBS)
    return "; ".join(
        [
            f"names=$(cd {source} && ls -d {owned} 2>/dev/null || true)",
            f'for f in $names; do mv "{source}/$f" "{CONFIG_DIR}/$f"; done',
            f"(cd {CONFIG_DIR} && ls -d {owned} 2>/dev/null || true)"
            f' | grep -vxF "$names" | while read -r f; do rm -f "{CONFIG_DIR}/$f"; done',
        ]
    )


def _section(name: str, command: str) -> str:
    return f'echo "{MARK}{name}"; {command}'


def _clock(phase: str) -> str:
    """When the script reached `phase`, in ns: `DeliveryResult.phases` says where time went."""
    return _section(f"clock:{phase}", "date +%s%N")


# One delivery script at a time in a pod: a delivery whose exec timed out still runs there, and
# the retry must not stage, push or read beside it. flock(1): util-linux, busybox.
LOCK = f"{STATE_DIR}/lock"


def _lock(wait: float) -> str:
    """Shell: hold the pod's lock for the rest of the script, waiting up to `wait` s."""
    return (
        f"mkdir -p {STATE_DIR}; exec 9> {LOCK}; flock -w {max(wait, 1):.0f} 9"
        " || { echo 'another delivery still runs in this pod (an earlier exec that timed out)'"
        " >&2; exit 4; }"
    )


DETAIL_LIST = f"{STATE_DIR}/verify-endpoints"
ADDED = f"{STATE_DIR}/adds-endpoints"  # present when a delivery adds endpoints
CONTEXT_LIST = f"{STATE_DIR}/verify-contexts"
# The headers, and the lines that end each `dialplan show` (its counts: contexts_complete).
_CONTEXT_LINES = "grep -e '^\\[ ' -e '^-= ' -e '^There is no existence' || true"
# A read that Asterisk's CLI cut short (asterisk_output) is read again, this many times in all.
READ_ATTEMPTS = 3


READERS = 4  # `asterisk -rx` processes reading in parallel (each costs ~10 ms to start)


def _deal(source: str, prefix: str) -> str:
    """Deal the lines of `source` round robin into `prefix`0.. `prefix`3 (only those that get
    a line exist). Not `split -n l/4`: coreutils 9.10 fails on a one-line file."""
    return (
        f'i=0; while read -r line; do echo "$line" >> "{prefix}$((i % {READERS}))";'
        f" i=$((i + 1)); done < {source}"
    )


def _file_digests(pushed: bool) -> str:
    """The owned files' digests by path. Pushed over ARI, the PJSIP file is the record in
    PUSHED_DIR, and one in pjsip.d/ is listed by its full path: it is no longer ours to have
    there (a redelivery moves it out)."""
    digests = '[ -e "$f" ] && sha256sum "$f"'
    if not pushed:
        return f"cd {CONFIG_DIR} && for f in {' '.join(OWNED_GLOBS)}; do {digests}; done; true"
    return (
        f"cd {CONFIG_DIR} && for f in {' '.join(g for g in OWNED_GLOBS if g not in PJSIP_GLOBS)};"
        f" do {digests}; done; for f in {' '.join(PJSIP_GLOBS)};"
        f' do [ -e "$f" ] && echo "present  {CONFIG_DIR}/$f"; done;'
        f" cd {PUSHED_DIR} 2>/dev/null && for f in {' '.join(POD_FILES)}; do {digests}; done; true"
    )


def _observe(pushed: bool = False, whole_dialplan: bool = True) -> str:
    """Shell that prints what Asterisk has loaded, in marked sections: `pjsip show endpoint X`
    and the auth's password hash for each name in DETAIL_LIST, the contexts of CONTEXT_LIST
    that exist, the transports, the listings, the delivered hash and the owned files' digests.
    `whole_dialplan`: one `dialplan show` when there are many contexts to check (a line of
    it is lost when the reader stalls; a context's own read is too small to fill the socket).

    The reads run in parallel (READERS for the endpoints, one per listing) into files under
    `observed/`, printed in order once all are done: their sum is what a delivery waits for."""
    out = f"{STATE_DIR}/observed"
    details = (
        f'while read -r e; do echo "{MARK}endpoint:$e"; asterisk -rx "pjsip show endpoint $e";'
        f' echo "{MARK}auth:$e"; asterisk -rx "pjsip show auth $e-auth"'
        " | sed -n 's/^ *password *: //p' | sha256sum; done"
    )
    contexts = f'while read -r c; do asterisk -rx "dialplan show $c" | {_CONTEXT_LINES}; done'
    reads = {
        "transports": "asterisk -rx 'pjsip show transports'",
        **{f"list-{name}": f"asterisk -rx 'pjsip list {name}'" for name in LISTS},
    }
    added = {f"list-{name}": f"asterisk -rx 'pjsip list {name}'" for name in ADDED_LISTS}
    lists = {f"list-{name}" for name in LISTS}
    return "\n".join(
        [
            f"rm -rf {out} && mkdir -p {out}",
            _deal(DETAIL_LIST, f"{out}/detail."),
            f'for chunk in {out}/detail.?; do [ -e "$chunk" ] || continue;'
            f' ({details}) < "$chunk" > "$chunk.out" & done',
            f"if {'true' if whole_dialplan else 'false'}"
            f' && [ "$(wc -l < {CONTEXT_LIST})" -gt {FULL_DIALPLAN_AT} ]; then'
            f" (asterisk -rx 'dialplan show' | {_CONTEXT_LINES}) > {out}/dialplan &",
            f"else {_deal(CONTEXT_LIST, f'{out}/context.')}",
            f' for chunk in {out}/context.?; do [ -e "$chunk" ] || continue;'
            f' ({contexts}) < "$chunk" > "$chunk.out" & done; fi',
            f"({reads['transports']}) > {out}/transports &",
            # `light`: a push that only replaced objects, each read in depth (pod.ari).
            'if [ -z "$light" ]; then',
            *(f" ({command}) > {out}/{name} &" for name, command in reads.items() if name in lists),
            "fi",
            f'if [ -z "$light" ] && [ -e {ADDED} ]; then',
            *(f" ({command}) > {out}/{name} &" for name, command in added.items()),
            "fi",
            "wait",
            f"cat {out}/detail.*.out 2>/dev/null || true",
            _section("contexts", f"cat {out}/context.*.out 2>/dev/null || true"),
            # The whole dialplan, when it was read instead: its own section (one read to count).
            f"if [ -e {out}/dialplan ]; then {_section('dialplan', f'cat {out}/dialplan')}; fi",
            *(
                f"if [ -e {out}/{name} ]; then {_section(name, f'cat {out}/{name}')}; fi"
                for name in (*reads, *added)
            ),
            _section("hash", f"cat {STATE_DIR}/hash 2>/dev/null || true"),
            _section("files", f"({_file_digests(pushed)})"),
        ]
    )


def _reload(directories: Iterable[str]) -> str:
    return "; ".join(
        _section(f"reload-{d}", f"asterisk -rx '{RELOAD_COMMANDS[d]}' 2>&1")
        for d in (PJSIP_DIR, EXTENSIONS_DIR)
        if d in set(directories)
    )


def _only_loaded_before(ari: bool = False) -> str:
    """Keep in DETAIL_LIST the endpoints Asterisk has before this reload. Only an object that
    exists can be kept at an old version; a new one is there as rendered or not at all,
    which the listings show. So a new pod's full set, or 1,000 new trunks, costs no reads in
    depth (two `asterisk -rx` each). Over ARI, the record of what this Asterisk was given
    says it (no listing: ~1 s with 10,000 trunks)."""
    before = f"{STATE_DIR}/loaded-before"
    names = "sed -n 's/^ *Endpoint:  *\\([^ /<][^ /]*\\).*/\\1/p'"
    listed = (
        pushed_endpoints(STATE_DIR) if ari else f"asterisk -rx 'pjsip list endpoints' | {names}"
    )
    return (
        f"rm -f {ADDED}; if [ -s {DETAIL_LIST} ]; then"
        f" {listed} > {before};"
        f" grep -Fx -f {before} {DETAIL_LIST} > {before}.changed || true;"
        f' [ "$(wc -l < {before}.changed)" = "$(wc -l < {DETAIL_LIST})" ] || touch {ADDED};'
        f" mv {before}.changed {DETAIL_LIST};"
        f' if [ "$(wc -l < {DETAIL_LIST})" -gt {DETAILS_AT_MOST} ]; then touch {ADDED};'
        f" head -n {DETAILS_AT_MOST} {DETAIL_LIST} > {before}.first;"
        f" mv {before}.first {DETAIL_LIST}; fi; fi"
    )


def _read_probe(detail_size: int, context_size: int) -> str:
    return f"head -c {detail_size} > {DETAIL_LIST}; head -c {context_size} > {CONTEXT_LIST}"


def _swap(staging: str, ari: AriAccess | None) -> str:
    """Shell: the staged set in place. Pushed over ARI, the PJSIP file goes to PUSHED_DIR,
    and `migrating` is set when pjsip.d/ had one of ours (its objects must be unloaded before
    the same ids are pushed)."""
    if ari is None:
        return _rename_in(staging)
    previous = f"{STATE_DIR}/previous"
    return "; ".join(
        [
            f"mkdir -p {PUSHED_DIR}/{PJSIP_DIR} {previous}/pushed/{PJSIP_DIR}",
            f"migrating=$(ls {previous}/{PJSIP_DIR})",
            f"mv {PUSHED_DIR}/{PJSIP_DIR}/* {previous}/pushed/{PJSIP_DIR}/ 2>/dev/null || true",
            f"if [ -d {staging}/{EXTENSIONS_DIR} ]; then"
            f" cp -R {staging}/{EXTENSIONS_DIR} {CONFIG_DIR}/; fi",
            f"if [ -d {staging}/{PJSIP_DIR} ]; then cp -R {staging}/{PJSIP_DIR} {PUSHED_DIR}/; fi",
        ]
    )


def _apply(reload: Iterable[str], ari: AriAccess | None) -> str:
    """Shell: reload what changed; over ARI, push the PJSIP objects instead of reloading
    (after a reload without the trunk file when the pod is migrating to ARI)."""
    directories = set(reload)
    if ari is None:
        return _reload(directories) or "true"
    wanted = f"{PUSHED_DIR}/{POD_FILES[0]}"
    steps = [
        'if [ -n "$migrating" ]; then '
        + _section("reload-migration", f"asterisk -rx '{RELOAD_COMMANDS[PJSIP_DIR]}' 2>&1")
        + "; fi",
        _reload(directories - {PJSIP_DIR}),
        _section("ari", push(STATE_DIR, wanted, ari.url)) + "; " + light_after_push(ADDED)
        if PJSIP_DIR in directories
        else "",
    ]
    return "; ".join(step for step in steps if step)


def deliver_script(
    size: int,
    digest: str,
    detail_size: int = 0,
    context_size: int = 0,
    reload: Iterable[str] = (PJSIP_DIR, EXTENSIONS_DIR),
    ari: AriAccess | None = None,
    lock_wait: float = 60,
) -> str:
    """Stage the tar from stdin, keep the previous set, swap, reload (or push), observe.

    Stdin: the gzip'd tar (`size` bytes), then the endpoint names to check in depth, then
    the contexts to check (one per line), then over ARI `AriAccess.stdin`. `reload`: the
    directories whose files changed."""
    staging, previous = f"{STATE_DIR}/staging", f"{STATE_DIR}/previous"
    return "\n".join(
        [
            "set -e",
            _lock(lock_wait),
            _clock("start"),
            f"mkdir -p {STATE_DIR} {CONFIG_DIR}/{PJSIP_DIR} {CONFIG_DIR}/{EXTENSIONS_DIR}",
            f"rm -rf {staging} && mkdir -p {staging}",
            f"head -c {size} | tar -xzf - -C {staging}",
            _read_probe(detail_size, context_size),
            # A reload asked of an Asterisk still starting (a restarted container) is ignored.
            "asterisk -rx 'core waitfullybooted' > /dev/null",
            # Over ARI, when this Asterisk started (`boot`): the push record is of one start.
            refuse_when_pushed(STATE_DIR, PUSHED_DIR) if ari is None else boot_epoch(),
            _only_loaded_before(ari is not None),
            f"rm -rf {previous} && mkdir -p {previous}/{PJSIP_DIR} {previous}/{EXTENSIONS_DIR}",
            f"cp {STATE_DIR}/hash {previous}/hash 2>/dev/null || true",
            "set +e",
            *[_move_owned(glob, previous, keep=ari is None) for glob in OWNED_GLOBS],
            "set -e",
            # Asterisk reads the files only when told to reload, below: never half a set.
            _swap(staging, ari),
            f"echo {shlex.quote(digest)} > {STATE_DIR}/hash",
            _clock("swapped"),
            _apply(reload, ari),
            _clock("reloaded"),
            _observe(pushed=ari is not None),
            _clock("read"),
        ]
    )


def rollback_script(ari: AriAccess | None = None, lock_wait: float = 60) -> str:
    """Put the previous set back and reload (over ARI: push it back first, so no id is in
    memory when a restored trunk file brings it back)."""
    previous = f"{STATE_DIR}/previous"
    steps = [
        "set -e",
        _lock(lock_wait),
        f"test -d {previous}",
        "asterisk -rx 'core waitfullybooted' > /dev/null",
    ]
    if ari is None:
        restore = f"{STATE_DIR}/restore"
        steps += [
            f"rm -rf {restore} && cp -R {previous} {restore}",
            _rename_in(restore),
        ]
    else:
        steps += [
            f"rm -f {_owned_files(CONFIG_DIR)}",
            boot_epoch(),
            f"rm -rf {PUSHED_DIR}/{PJSIP_DIR} && mkdir -p {PUSHED_DIR}",
            f"cp -R {previous}/pushed/{PJSIP_DIR} {PUSHED_DIR}/",
            _section("ari", push(STATE_DIR, f"{PUSHED_DIR}/{POD_FILES[0]}", ari.url)),
        ]
        steps.append(f"cp -R {previous}/{PJSIP_DIR} {previous}/{EXTENSIONS_DIR} {CONFIG_DIR}/")
    steps += [
        f"if [ -f {previous}/hash ]; then cp {previous}/hash {STATE_DIR}/hash;"
        f" else rm -f {STATE_DIR}/hash; fi",
        # What is restored was verified when it was delivered: the listings suffice.
        f": > {DETAIL_LIST}; : > {CONTEXT_LIST}",
        _reload(RELOAD_COMMANDS)
        if ari is None
        # Over ARI, PJSIP is reloaded only to bring back a trunk file (a failed migration).
        else f'if [ -n "$(ls {previous}/{PJSIP_DIR})" ]; then {_reload(RELOAD_COMMANDS)};'
        f" else {_reload([EXTENSIONS_DIR])}; fi",
        _observe(pushed=ari is not None),
    ]
    return "\n".join(steps)


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
    ari_unavailable: str = ""  # the pusher's words when ARI could not be used at all
    read_again: list[str] = field(default_factory=list)  # reads Asterisk's CLI cut short


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


def _error_lines(parts: Mapping[str, str]) -> list[str]:
    """Asterisk's own words from the reloads, when they say something went wrong."""
    lines = [line for line in parts.get("ari", "").splitlines() if line.startswith("ari-")]
    for key in (*(f"reload-{d}" for d in RELOAD_COMMANDS), "reload-migration"):
        for line in parts.get(key, "").splitlines():
            if re.search(r"error|unable|fail|not found|could not", line, re.IGNORECASE):
                lines.append(line.strip())
    return lines[:5]


def _lines(names: Iterable[str]) -> bytes:
    return "".join(f"{name}\n" for name in sorted(set(names))).encode()


def deliver(
    exec_: Exec,
    files: Files,
    expected: Expected,
    timeout: float = 120,
    probe: Probe = LISTINGS_ONLY,
    reload: Iterable[str] = (PJSIP_DIR, EXTENSIONS_DIR),
    ari: AriAccess | None = None,
    digest: str | None = None,
) -> DeliveryResult:
    """Deliver, reload what `reload` names and verify; `probe` names what to check beyond
    the listings (what this delivery changes); `ari`: the pod takes its PJSIP objects over
    ARI (pod.ari); `digest`: the files' `files_hash`, when the caller has it."""
    started = time.monotonic()
    digest = digest or files_hash(files)
    payload = pack(files)
    details, contexts = _lines(probe.details), _lines(probe.contexts)
    reload = set(reload)
    wait = timeout / 2  # the rest is the script's own time
    script = deliver_script(len(payload), digest, len(details), len(contexts), reload, ari, wait)
    pushing = ari.stdin() if ari is not None and PJSIP_DIR in reload else b""
    sent = time.monotonic()
    result = _run(exec_, script, payload + details + contexts + pushing, timeout)
    returned = time.monotonic()
    parts = sections(result.stdout)
    if result.returncode != 0 or "files" not in parts:  # the last section: it ran through
        raise ExecError(
            f"delivery script failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
        )
    observation = _observation(parts, probe, expected)
    transports = parse_transports(parts.get("transports", ""))
    read_again = observation.cut_short
    if observation.cut_short:
        # Read again (no reload): the new endpoints in depth too, within the same bound.
        again = Probe(frozenset(sorted(probe.details)[:DETAILS_AT_MOST]), probe.contexts)
        observation, transports = _read_again(
            exec_, expected, timeout, again, ari is not None, READ_ATTEMPTS - 1
        )
        if observation.cut_short:  # unverifiable: the verified set goes back, and a retry
            _run(exec_, rollback_script(ari, wait), ari.stdin() if ari else None, timeout)
            raise ExecError(f"{_cut_short_message(observation)}; the previous set was put back")
    problems = verify(expected, observation, transports)
    if not problems:
        # Where the time went: packing here, the exec (the script's own phases inside it),
        # parsing and verifying here.
        phases = {"pack": sent - started, "exec": returned - sent, **_phases(parts)}
        phases["verify"] = time.monotonic() - returned  # and reading again, if it did
        return DeliveryResult(True, digest, [], observation, phases=phases, read_again=read_again)
    errors = _error_lines(parts)
    problems += [Mismatch((), line) for line in errors]
    back = _run(exec_, rollback_script(ari, wait), ari.stdin() if ari else None, timeout)
    restored = (
        _observation(sections(back.stdout), LISTINGS_ONLY, expected)
        if back.returncode == 0
        else None
    )
    unavailable = [line for line in errors if line.startswith("ari-unavailable:")]
    return DeliveryResult(
        False,
        digest,
        problems,
        restored,
        rolled_back=back.returncode == 0,
        ari_unavailable=unavailable[0] if unavailable else "",
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
    # No lock: an observation that timed out would hold it, and deliveries would wait behind
    # its reads (10,000 trunks under load: 30 s and more). One that overlaps a delivery still
    # running in the pod reads a set in transition: the drift it reports brings a redelivery.
    script = "\n".join(
        [
            f"mkdir -p {STATE_DIR}",
            _read_probe(len(details), len(contexts)),
            _observe(pushed, whole_dialplan),
        ]
    )
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
