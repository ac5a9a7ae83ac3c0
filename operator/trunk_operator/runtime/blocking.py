"""The controller's threads for its blocking calls: API calls and execs into pods.

A pool of their own, not asyncio's default executor: that one has min(32, cores + 4)
threads (6 on 2 cores), so 1,000 new CRs ran 6 API calls at a time, and deliveries hanging on
slow pods would hold back the Lease renewals and Kopf's probes, which use it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from trunk_operator.kube.client import API_CALLS

THREADS = 48  # those, plus one exec per pod

_T = TypeVar("_T")
_P = ParamSpec("_P")


class BlockingCalls:
    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="trunkop-io")
        self.api = asyncio.Semaphore(API_CALLS)  # held around each API call

    async def run(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """A blocking call that is not an API call (an exec), or that takes `api` itself."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(call, *args, **kwargs))

    async def api_call(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """An API call, at most API_CALLS at once."""
        async with self.api:
            return await self.run(call, *args, **kwargs)
