"""PJSIP trunk objects pushed over ARI into Asterisk's memory, for pods with thousands of
trunks: how the delivery script (scripts/deliver.sh) reaches ARI from inside the pod.

Why: `module reload res_pjsip.so` costs 4-5 s with 10,000 trunks whatever the file layout
(about 2 s even when nothing changed: it resynchronizes every AOR's qualify state), while
replacing one object over ARI takes 1-2 ms and is served at once (bench/README.md, section 5).

A pod opts in with the annotation ARI_CREDENTIALS_ANNOTATION, naming a Secret in its
namespace (keys `username` and `password`) of an ARI user its Asterisk has; its sorcery.conf
maps the trunk types to `config` then `memory` (examples/asterisk-ari). Then:
- the rendered PJSIP file does not go into pjsip.d/ but into PUSHED_DIR (what was pushed, for
  a person who opens the pod, and for the content hashes); the operator computes the steps
  that replace the objects that differ from what this Asterisk process was given (DELETE, then
  PUT: a PUT onto an existing object merges into it; pod/ari_plan.py), and
  pod/scripts/ari-push.pl runs them and records each object's digest; the dialplan stays a
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

from dataclasses import dataclass, field
from importlib import resources

ARI_CREDENTIALS_ANNOTATION = "trunks.asterisk-operator.dev/ari-credentials"
ARI_URL_ANNOTATION = "trunks.asterisk-operator.dev/ari-url"
DEFAULT_ARI_URL = "http://127.0.0.1:8088/ari"
PUSH_SCRIPT = (resources.files("trunk_operator.pod") / "scripts" / "ari-push.pl").read_text()


def pusher_size() -> int:
    """The executor's length: it comes first on the script's stdin (`AriAccess.stdin`)."""
    return len(PUSH_SCRIPT.encode())


class AriUnavailable(RuntimeError):
    """A pod's ARI cannot be used: its Secret is missing or incomplete, or ARI is unreachable
    or refuses the credentials. Not the trunks' fault: the delivery is retried."""


@dataclass(frozen=True)
class AriAccess:
    """How the script in the pod reaches its Asterisk's ARI."""

    url: str
    username: str
    password: str = field(repr=False)

    def stdin(self, steps: bytes) -> bytes:
        """What `ari_push` reads from stdin: the executor itself, then its credentials line,
        then its `steps` (pod/ari_plan.Op lines)."""
        return PUSH_SCRIPT.encode() + f"{self.username}:{self.password}\n".encode() + steps
