"""PJSIP trunk objects pushed over ARI into Asterisk's memory, for pods with thousands of
trunks; the shell the delivery script (asterisk) runs for it in the pod.

Why: `module reload res_pjsip.so` costs 4-5 s with 10,000 trunks whatever the file layout
(about 2 s even when nothing changed: it resynchronizes every AOR's qualify state), while
replacing one object over ARI takes 1-2 ms and is served at once (bench/README.md, section 5).

A pod opts in with the annotation ARI_CREDENTIALS_ANNOTATION, naming a Secret in its
namespace (keys `username` and `password`) of an ARI user its Asterisk has; its sorcery.conf
maps the trunk types to `config` then `memory` (examples/asterisk-ari). Then:
- the rendered PJSIP file does not go into pjsip.d/ but into PUSHED_DIR (what was pushed, for
  a person who opens the pod, and for the content hashes); pod/scripts/ari-push.pl replaces
  the objects that differ from what this Asterisk process was given (DELETE, then PUT: a PUT
  onto an existing object merges into it) and records their digests; the dialplan stays a
  file, reloaded when it changes;
- objects in memory die with the process: the record names the Asterisk start it belongs to,
  so a restarted Asterisk gets every object (its readiness gate is closed meanwhile);
- an id both in a file and in memory can crash Asterisk: a pod that had the trunk file is
  reloaded without it before anything is pushed (a gap for its trunks, once), and a pod whose
  Asterisk holds pushed objects is not given the file again until that Asterisk restarts;
- ARI is reached from inside the pod only (the exec is already the operator's way in; ARI can
  listen on loopback), with the password on the script's stdin, never in a command line.
Verification, rollback (the previous file pushed back) and the observer are the file
delivery's: they read what Asterisk serves, whichever store it came from.

Trade-off: ARI's power. Its user can change any dynamic configuration of that Asterisk, so
its password is a Secret the operator reads per delivery and nothing else needs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from importlib import resources

ARI_CREDENTIALS_ANNOTATION = "trunks.asterisk-operator.dev/ari-credentials"
ARI_URL_ANNOTATION = "trunks.asterisk-operator.dev/ari-url"
DEFAULT_ARI_URL = "http://127.0.0.1:8088/ari"
PUSH_SCRIPT = (resources.files("trunk_operator.pod") / "scripts" / "ari-push.pl").read_text()


class AriUnavailable(RuntimeError):
    """A pod's ARI cannot be used: its Secret is missing or incomplete, or ARI is unreachable
    or refuses the credentials. Not the trunks' fault: the delivery is retried."""


@dataclass(frozen=True)
class AriAccess:
    """How the script in the pod reaches its Asterisk's ARI."""

    url: str
    username: str
    password: str = field(repr=False)

    def stdin(self) -> bytes:
        """What `push` reads from stdin: the pusher itself, then its credentials line."""
        return PUSH_SCRIPT.encode() + f"{self.username}:{self.password}\n".encode()


def boot_epoch() -> str:
    """Shell: `boot` set to when this Asterisk started, in epoch seconds (to the second: the
    pusher allows for the two reads' jitter)."""
    return (
        "uptime=$(asterisk -rx 'core show uptime seconds'"
        " | sed -n 's/^System uptime: *\\([0-9]*\\).*/\\1/p'); boot=$(( $(date +%s) - uptime ))"
    )


def push(state_dir: str, wanted: str, url: str) -> str:
    """Shell: read the pusher from stdin (`AriAccess.stdin`), then run it on `wanted` with
    the credentials line that follows it (`boot` set before, once per script: `boot_epoch`);
    its output is also kept in `pushed`."""
    script = f"{state_dir}/ari-push.pl"
    return (
        f"head -c {len(PUSH_SCRIPT.encode())} > {script};"
        f" pushed=$(perl {script} {shlex.quote(url)} {wanted} {state_dir}/pushed.state"
        ' "$boot" 2>&1); echo "$pushed"'
    )


def light_after_push(added: str) -> str:
    """Shell: `light` set when the push only replaced objects (none created, deleted or
    refused), no reload preceded it and every changed endpoint is read in depth (no `added`
    marker). Then the reads after it skip the `pjsip list` tables, ~2.5 s with 10,000
    trunks: `pjsip show endpoint` shows each replaced endpoint's AORs, contacts, identify and
    auth, and an object no push touched cannot have changed in memory but by a restart (the
    observer's audit and the next push find that)."""
    return (
        'case "$pushed" in *"ari: created 0 replaced "*" deleted 0 failed 0"*)'
        f' [ -z "$migrating" ] && [ ! -e {added} ] && light=1;; esac'
    )


def _given_to_this_asterisk(state: str) -> str:
    """Shell condition: the record `state` is of this Asterisk process (`boot` set before)."""
    return (
        f"had=$(sed -n '1s/^boot //p' {state} 2>/dev/null);"
        ' [ -n "$had" ] && [ $(( boot - had )) -le 2 ] && [ $(( had - boot )) -le 2 ]'
    )


def pushed_endpoints(state_dir: str) -> str:
    """Shell printing the endpoints this Asterisk process was given (none after a restart;
    `boot` set before)."""
    state = f"{state_dir}/pushed.state"
    # The record is appended to: an endpoint's last line says its state.
    listed = (
        """awk -F'\t' '$1 == "endpoint" { state[$2] = $3 }"""
        """ END { for (e in state) if (state[e] != "-" && state[e] != "gone") print e }'"""
    )
    return f"{{ if {_given_to_this_asterisk(state)}; then {listed} {state}; fi; }}"


def refuse_when_pushed(state_dir: str, pushed_dir: str) -> str:
    """Shell for a file delivery: stop (exit 3) when this Asterisk holds pushed objects (the
    file's ids would be in two stores); a record of an earlier start is removed."""
    state = f"{state_dir}/pushed.state"
    return (
        f"if [ -e {state} ]; then {boot_epoch()}; if {_given_to_this_asterisk(state)}; then"
        " echo 'this Asterisk holds trunks pushed over ARI: restart its container to deliver"
        " them as files again' >&2; exit 3; fi;"
        f" rm -rf {state} {pushed_dir}; fi"
    )
