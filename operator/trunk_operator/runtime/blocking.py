"""The controller's threads for its blocking calls: API calls and execs into pods.

A pool of their own, not asyncio's default executor: that one has min(32, cores + 4)
threads (6 on 2 cores), so 1,000 new CRs ran 6 API calls at a time, and deliveries hanging on
slow pods would hold back the Lease renewals and Kopf's probes, which use it. Status writes
give way to the calls that bring a pod's set back after a restart (`restoring`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from trunk_operator.kube.client import API_CALLS

THREADS = 48  # those, plus one exec per pod
# The longest a status write waits for a pod's set to be restored: a restore that hangs (an
# exec timing out) does not hold the statuses back for its whole timeout.
RESTORE_FIRST_AT_MOST = 5.0

_T = TypeVar("_T")
_P = ParamSpec("_P")


class BlockingCalls:
    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="trunkop-io")
        self.api = asyncio.Semaphore(API_CALLS)  # held around each API call
        self._restoring = 0
        self._restoring_since = 0.0  # monotonic, when the first of them began
        self._nothing_restoring = asyncio.Event()
        self._nothing_restoring.set()

    @contextlib.asynccontextmanager
    async def restoring(self) -> AsyncIterator[None]:
        """Held by a pod's first round after its container (or this process) started: until
        it ends, status writes wait (`status_turn`). A restarted pod's read shares the cores
        and the API server with them, and a pod's CRs all flipped to "no ready pod" slow it
        markedly (bench/README.md, measurement 8). A round runs only for a ready pod, so
        those writes are already untrue when it starts; once it ends they are superseded, most
        of them never written. Each waits at most RESTORE_FIRST_AT_MOST."""
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

    async def run(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """A blocking call that is not an API call (an exec), or that takes `api` itself."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(call, *args, **kwargs))

    async def api_call(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """An API call, at most API_CALLS at once."""
        async with self.api:
            return await self.run(call, *args, **kwargs)
