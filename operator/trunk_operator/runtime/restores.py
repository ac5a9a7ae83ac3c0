"""When status writes give way: while a pod's set is being restored.

A pod delivery worker's first round restores the pod's set (a restarted container read back or
pushed again, a new pod, or this process just started). A restarted pod's read shares the cores
and the API server with the status writes, and a pod's CRs all flipped to "no ready pod" slow
it markedly (bench/README.md, measurement 8). The round runs only for a ready pod, so those
writes are already untrue when it starts; once it ends they are superseded, most of them never
written. So status writes wait for it, at most RESTORE_FIRST_AT_MOST.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

# The longest a status write waits for a pod's set to be restored: a restore that hangs (an
# exec timing out) does not hold the statuses back for its whole timeout.
RESTORE_FIRST_AT_MOST = 5.0


class Restores:
    def __init__(self) -> None:
        self._restoring = 0
        self._restoring_since = 0.0  # monotonic, when the first of them began
        self._nothing_restoring = asyncio.Event()
        self._nothing_restoring.set()

    @contextlib.asynccontextmanager
    async def restoring(self) -> AsyncIterator[None]:
        """Held by a pod's first round: until it ends, status writes wait (`status_turn`)."""
        if not self._restoring:
            self._restoring_since = time.monotonic()
        self._restoring += 1
        self._nothing_restoring.clear()
        try:
            yield
        finally:
            self._restoring -= 1
            if not self._restoring:
                self._nothing_restoring.set()

    def status_may_go(self) -> bool:
        """No pod is being restored, or restores have held the statuses back long enough."""
        return (
            not self._restoring or time.monotonic() - self._restoring_since >= RESTORE_FIRST_AT_MOST
        )

    async def status_turn(self) -> None:
        """Returns once `status_may_go`."""
        if self.status_may_go():
            return
        left = self._restoring_since + RESTORE_FIRST_AT_MOST - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._nothing_restoring.wait(), max(left, 0.0))
