"""The two ways a file set reaches Asterisk in a pod, behind one interface.

- `FileDelivery`: both files are renamed into pjsip.d/ and extensions.d/, and what changed is
  reloaded (scripts/files.sh).
- `AriDelivery`: the dialplan file likewise; the PJSIP objects that differ are pushed into
  Asterisk's memory over ARI (scripts/ari.sh, pod/ari.py), for pods with many trunks.

Each names the shell functions its deliveries and rollbacks run in the pod, the parameters
those need and what follows the probe lists on the script's stdin. The rest (staging, the
lock, the reads after a change, verification) is the same for both (pod/channel.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from trunk_operator.pod.ari import AriAccess, pusher_size


class Delivery(Protocol):
    @property
    def functions(self) -> str:
        """The script in scripts/ that defines the strategy's shell functions."""
        ...

    @property
    def pushed(self) -> bool:
        """The PJSIP objects live in Asterisk's memory (their record is PUSHED_DIR)."""
        ...

    def params(self) -> dict[str, str | int]: ...

    def stdin(self, pjsip_changed: bool) -> bytes:
        """What the delivery script reads after the probe lists."""
        ...

    def rollback_stdin(self) -> bytes | None: ...


@dataclass(frozen=True)
class FileDelivery:
    functions = "files.sh"
    pushed = False

    def params(self) -> dict[str, str | int]:
        return {}

    def stdin(self, pjsip_changed: bool) -> bytes:
        return b""

    def rollback_stdin(self) -> bytes | None:
        return None


@dataclass(frozen=True)
class AriDelivery:
    access: AriAccess
    functions = "ari.sh"
    pushed = True

    def params(self) -> dict[str, str | int]:
        return {"ARI_URL": self.access.url, "PUSHER_SIZE": pusher_size()}

    def stdin(self, pjsip_changed: bool) -> bytes:
        return self.access.stdin() if pjsip_changed else b""

    def rollback_stdin(self) -> bytes | None:
        return self.access.stdin()


FILES = FileDelivery()


def delivery_for(ari: AriAccess | None) -> Delivery:
    """The strategy of a pod: over ARI when it has an ARI user, else files."""
    return FILES if ari is None else AriDelivery(ari)
