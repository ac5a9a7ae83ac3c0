"""One real node per machine (port 10250 and the host's fixed paths): an flock on a file in
the cache, which holds the pid of its holder for whoever is refused."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path

from testbed.node.errors import NodeError


class NodeLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise NodeError(
                f"another real node runs on this machine (pid {holder or '?'}, lock "
                f"{self.path}); only one at a time"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd  # children do not inherit it (close_fds), so it dies with us

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def hand_to_sleeper(self) -> int:
        """Pass the lock to a ``sleep infinity`` child of its own session, which keeps it
        after this process exits (``make demo``). Returns its pid."""
        assert self._fd is not None
        holder = subprocess.Popen(
            ["sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(self._fd,),
            start_new_session=True,
        )
        # What another start() reports as the lock's holder.
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{holder.pid}, make demo; make demo-down stops it\n".encode(), 0)
        os.close(self._fd)  # the holder's copy of the descriptor keeps the lock
        self._fd = None
        return holder.pid
