"""The two ways a file set reaches Asterisk in a pod, behind one interface.

- `FileDelivery`: both files are renamed into pjsip.d/ and extensions.d/, and what changed is
  reloaded (scripts/files.sh).
- `AriDelivery`: the dialplan file likewise; the PJSIP objects that differ are pushed into
  Asterisk's memory over ARI (scripts/ari.sh, pod/ari.py), as steps computed here from the
  operator's copy of the pod's record (pod/ari_plan.py), for pods with many trunks.

Each names the shell functions its deliveries and rollbacks run in the pod, and gives each run
its parameters and what follows the probe lists on the script's stdin (a `Round`); after the
run, `after` is the strategy as that run left it. The rest (staging, the lock, the reads after
a change, verification) is the same for both (pod/channel.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from trunk_operator.core.render import PJSIP_DIR, POD_FILE, Files
from trunk_operator.pod.ari import AriAccess, pusher_size
from trunk_operator.pod.ari_plan import (
    Op,
    PushRecord,
    left_of,
    pjsip_objects,
    push_ops,
    record_of,
)

# A pod script's exit status when the pod's record is not the one the steps were computed
# from: it changed nothing and printed its record (scripts/lib.sh, check_record).
RECORD_DIFFERS = 5
UNKNOWN_RECORD = "unknown"  # the token expected when the operator has no copy: never a pod's


@dataclass(frozen=True)
class Round:
    """What a strategy adds to one run of a pod script."""

    params: Mapping[str, str | int] = field(default_factory=dict)
    stdin: bytes = b""
    ops: tuple[Op, ...] = ()
    given: str = ""  # the pushed PJSIP file after it
    rollback: bool = False


class Delivery(Protocol):
    @property
    def functions(self) -> str:
        """The script in scripts/ that defines the strategy's shell functions."""
        ...

    @property
    def pushed(self) -> bool:
        """The PJSIP objects live in Asterisk's memory (their record is PUSHED_DIR)."""
        ...

    @property
    def record(self) -> PushRecord | None:
        """The operator's copy of the pod's record of what was pushed (None: none, or unknown)."""
        ...

    def push(self, files: Files, pjsip_changed: bool) -> Round:
        """A delivery's run of `files`."""
        ...

    def push_back(self) -> Round:
        """A rollback's run: the set before the last delivery."""
        ...

    def after(self, run: Round, parts: Mapping[str, str]) -> Delivery:
        """The strategy once `run` printed `parts` (pod/channel.sections)."""
        ...


@dataclass(frozen=True)
class FileDelivery:
    functions = "files.sh"
    pushed = False
    record = None

    def push(self, files: Files, pjsip_changed: bool) -> Round:
        return Round()

    def push_back(self) -> Round:
        return Round()

    def after(self, run: Round, parts: Mapping[str, str]) -> Delivery:
        return self


@dataclass(frozen=True)
class AriDelivery:
    access: AriAccess
    record: PushRecord | None = None
    functions = "ari.sh"
    pushed = True

    def push(self, files: Files, pjsip_changed: bool) -> Round:
        if not pjsip_changed:  # the dialplan only: nothing is pushed
            given = self.record.given if self.record is not None else ""
            return Round(self._params(), given=given)
        return self._round(files.get(f"{PJSIP_DIR}/{POD_FILE}", ""), False)

    def push_back(self) -> Round:
        return self._round(self.record.previous if self.record is not None else "", True)

    def after(self, run: Round, parts: Mapping[str, str]) -> Delivery:
        record = self.record
        if "ari-record-dump" in parts:
            dump, pushed = parts["ari-record-dump"], parts.get("ari-pushed-file", "")
            return self._with(record_of(dump, pushed, parts.get("ari-previous-file", "")))
        if record is None:
            return self
        # The pod's previous set: what it had before a delivery (a rollback keeps it).
        previous = record.previous if run.rollback else record.given
        if "ari" not in parts:
            if not run.rollback and "files" in parts:  # a delivery of the dialplan only
                return self._with(replace(record, previous=previous))
            return self._with(None)  # stopped before its push: what it changed is unknown
        if "ari: created " not in parts["ari"] or "ari-record" not in parts:
            return self._with(None)  # the executor did not finish
        token, left = parts["ari-record"].strip(), left_of(parts.get("ari-left", ""))
        return self._with(record.after(run.ops, left, token, run.given, previous))

    def _with(self, record: PushRecord | None) -> AriDelivery:
        return AriDelivery(self.access, record)

    def _round(self, wanted: str, rollback: bool) -> Round:
        """Steps from the record to the PJSIP file `wanted`: none when there is no copy of the
        record (the pod prints it instead)."""
        if self.record is None:
            params = {**self._params(), "EXPECT_RECORD": UNKNOWN_RECORD, "OPS_SIZE": 0}
            return Round(params, self.access.stdin(b""), (), wanted, rollback)
        ops = push_ops(pjsip_objects(wanted), self.record.objects)
        steps = "".join(op.line() for op in ops).encode()
        params = {
            **self._params(),
            "EXPECT_RECORD": self.record.token,
            "OPS_SIZE": len(steps),
            "COMPACT": "1" if self.record.compact_after(ops) else "",
        }
        return Round(params, self.access.stdin(steps), ops, wanted, rollback)

    def _params(self) -> dict[str, str | int]:
        return {"ARI_URL": self.access.url, "PUSHER_SIZE": pusher_size()}


FILES = FileDelivery()
NOTHING_PUSHED = Round()  # a run of the file strategy, or a script that pushes nothing


def delivery_for(ari: AriAccess | None, record: PushRecord | None = None) -> Delivery:
    """The strategy of a pod: over ARI when it has an ARI user, else files."""
    return FILES if ari is None else AriDelivery(ari, record)
