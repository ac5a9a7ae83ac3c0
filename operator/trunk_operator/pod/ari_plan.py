"""What an ARI delivery sends: the PJSIP objects that differ from what this Asterisk process
was given, as an ordered list of operations the pod's executor (scripts/ari-push.pl) runs.

The operator keeps a copy of the pod's record (`PushRecord`): each object's digest as pushed,
or UNKNOWN when a request did not complete. The record itself stays in the pod, because the
objects live in Asterisk's memory as long as its process, whatever happens to the operator; it
is named by a token (its first line and its length) which each push names as its
precondition. A pod whose record differs (the operator restarted, an exec was cut off, Asterisk
restarted) prints it and changes nothing, and the push is computed again from it.

The order is Asterisk's:
- a changed object is replaced (DELETE, then PUT), never updated: a PUT onto an existing
  object merges into it (contacts and ACL entries accumulate, callerid turns "unknown");
- deletions go first, referring objects first (identify, endpoint, aor, auth), then the
  creations in the other order, so references resolve;
- the endpoints wait for Asterisk's tasks of new AORs (`settle aor`): each new AOR's task
  retrieves every endpoint into a sorted list, so AORs settled first cost m^2 for the m
  endpoints already there, not for all of them;
- a replaced endpoint is DELETEd with the deletions (`clear`), and PUT again (`refill`) only
  once Asterisk ran the tasks of those DELETEs (`await endpoint`): a PUT of the same id before
  that task ran loses the endpoint's state for good, and the next CLI read of it crashes
  Asterisk 22 (asterisk/asterisk#2172).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

KINDS = ("auth", "aor", "endpoint", "identify")  # referred-to first
UNKNOWN = "-"  # an object that may exist in any version: a request that did not complete
GONE = "gone"  # in the record: deleted
NO_RECORD = "none"  # the token of a pod with no record of its Asterisk's current process

Key = tuple[str, str]  # (kind, id)

_SKIPPED = re.compile(r"^[ \t]*(?:;[^\n]*)?\n", re.MULTILINE)  # blank lines and comments
_SECTION = re.compile(r"^(?=\[)", re.MULTILINE)
_SETTING = re.compile(r"\s*([^=\s]+)\s*=\s*(.*?)\s*")
_TYPE = re.compile(r"^type\s*=\s*(\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class PjsipObject:
    kind: str
    id: str
    section: str = field(repr=False)  # its lines in the file, without comments and blank lines
    digest: str  # of `section`: the record's digests since 0.1.0

    def fields(self) -> list[tuple[str, str]]:
        """Its settings in the file's order, without `type` (read only for what is pushed)."""
        settings = [_setting(line, self.id) for line in self.section.splitlines()[1:]]
        return [(name, value) for name, value in settings if name != "type"]

    def body(self) -> str:
        """ARI's JSON for the object (`;` is escaped in files, where it starts a comment)."""
        fields = [{"attribute": k, "value": v.replace("\\;", ";")} for k, v in self.fields()]
        return json.dumps({"fields": fields}, separators=(",", ":"), ensure_ascii=False)


def pjsip_objects(text: str) -> dict[Key, PjsipObject]:
    """The trunk objects of a rendered PJSIP file, by (kind, id), in the file's order."""
    objects: dict[Key, PjsipObject] = {}
    for section in _SECTION.split(_SKIPPED.sub("", text)):
        if not section.startswith("["):
            continue
        id_ = section[1:].partition("]")[0]
        kind = _TYPE.search(section)
        if kind is None or kind[1] not in KINDS:
            raise ValueError(f"[{id_}] is not a trunk object (type {kind and kind[1]})")
        digest = hashlib.md5(section.encode(), usedforsecurity=False).hexdigest()
        objects[kind[1], id_] = PjsipObject(kind[1], id_, section, digest)
    return objects


def _setting(line: str, id_: str) -> tuple[str, str]:
    match = _SETTING.fullmatch(line)
    if match is None:
        raise ValueError(f"[{id_}]: cannot read line {line!r}")
    return match[1], match[2]


@dataclass(frozen=True)
class Op:
    """One step of the executor: `verb` is delete, clear (an endpoint's DELETE before its
    refill), await (the endpoint tasks of the DELETEs so far), replace (DELETE then PUT),
    create, refill (the PUT after a clear), or settle (the AOR tasks of the PUTs so far)."""

    verb: str
    kind: str
    id: str = ""
    digest: str = ""
    body: str = ""

    @property
    def key(self) -> Key | None:
        return (self.kind, self.id) if self.id else None

    @property
    def intent(self) -> str:
        """The object's state in the record once the step succeeded."""
        return GONE if self.verb == "delete" else UNKNOWN if self.verb == "clear" else self.digest

    def line(self) -> str:
        return "\t".join((self.verb, self.kind, self.id, self.digest, self.body)) + "\n"


def push_ops(wanted: Mapping[Key, PjsipObject], had: Mapping[Key, str]) -> tuple[Op, ...]:
    """The steps from what the record says this Asterisk has (`had`: digest or UNKNOWN) to
    `wanted`; none when they agree."""
    changed = {key: obj for key, obj in wanted.items() if had.get(key) != obj.digest}
    gone = [key for key in had if key not in wanted]
    ops: list[Op] = []
    for kind in reversed(KINDS):
        ops += [Op("delete", kind, id_) for k, id_ in sorted(gone) if k == kind]
        if kind == "endpoint":
            replaced = sorted(key for key in changed if key[0] == kind and key in had)
            ops += [Op("clear", kind, id_) for _, id_ in replaced]
            if any(op.kind == "endpoint" for op in ops):
                ops.append(Op("await", "endpoint"))
    for kind in KINDS:
        ours = sorted((key, obj) for key, obj in changed.items() if key[0] == kind)
        if kind == "endpoint":
            ops += [_put("refill", obj) for key, obj in ours if key in had]
            ops += [_put("create", obj) for key, obj in ours if key not in had]
        else:
            ops += [_put("replace" if key in had else "create", obj) for key, obj in ours]
        if kind == "aor" and ours:
            ops.append(Op("settle", "aor"))
    return tuple(ops)


def _put(verb: str, obj: PjsipObject) -> Op:
    return Op(verb, obj.kind, obj.id, obj.digest, obj.body())


@dataclass(frozen=True)
class PushRecord:
    """The operator's copy of a pod's record of what its Asterisk process was given over ARI,
    and of the pod's PJSIP files, as text: the one pushed last (`given`), and the one before the
    last delivery (`previous`: what a rollback pushes back, read only then). Text, because it is
    the very string the pod worker holds for its files: parsed, each would be twice the size."""

    token: str  # the pod's record's first line and length, or NO_RECORD
    objects: Mapping[Key, str] = field(default_factory=dict)  # digest or UNKNOWN
    given: str = ""
    previous: str = ""

    @property
    def lines(self) -> int:
        return 0 if self.token == NO_RECORD else int(self.token.rsplit(" ", 1)[1])

    def compact_after(self, ops: Iterable[Op]) -> bool:
        """Write the record whole after these steps: it is appended to, and a quarter of it
        would be lines a later one overrides."""
        keyed = sum(1 for op in ops if op.key)
        return self.lines + 2 * keyed > 1.25 * len(self.objects) + 64

    def after(
        self,
        ops: Iterable[Op],
        left: Iterable[Key],
        token: str,
        given: str,
        previous: str,
    ) -> PushRecord:
        """The record once the executor ran `ops`: each object as intended but those `left`
        (failed, or not run), which it may hold in any version."""
        objects = dict(self.objects)
        for op in ops:
            if op.key is not None:
                objects[op.key] = op.intent
        objects.update(dict.fromkeys(left, UNKNOWN))
        kept = {k: v for k, v in objects.items() if v != GONE}
        return PushRecord(token, kept, given, previous)


def record_of(dump: str, pushed_file: str, previous_file: str) -> PushRecord:
    """The record a pod printed when it was not the one a push named (empty: there is none of
    the Asterisk process running now), with its last pushed file and the one before."""
    lines = dump.splitlines()
    if not lines or not lines[0].startswith("boot "):
        return PushRecord(NO_RECORD, {}, pushed_file, previous_file)
    objects: dict[Key, str] = {}
    for line in lines[1:]:
        kind, _, rest = line.partition("\t")
        id_, _, state = rest.partition("\t")
        if state:
            objects[kind, id_] = state  # a later line for an object wins
    token = f"{lines[0]} {len(lines)}"
    kept = {k: v for k, v in objects.items() if v != GONE}
    return PushRecord(token, kept, pushed_file, previous_file)


def left_of(text: str) -> list[Key]:
    """The executor's list of objects it left in an unknown state."""
    split = (line.partition("\t") for line in text.splitlines())
    return [(kind, id_) for kind, _, id_ in split if id_]
