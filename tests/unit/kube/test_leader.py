"""Leader election on a Lease (client-go's algorithm), against an in-memory API server that
keeps resourceVersions and refuses stale writes with 409, and clocks the test moves."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trunk_operator.kube.client import KubeError
from trunk_operator.kube.leader import LeaderElector, Timings


class LeaseApi:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        if self.down:
            raise KubeError(f"{method} {path}: ConnectTimeoutError")
        if method == "GET":
            if self.lease is None:
                raise KubeError("not found", 404)
            return copy.deepcopy(self.lease)
        if method == "POST" and self.lease is not None:
            raise KubeError("exists", 409)
        if method == "PUT" and body["metadata"].get("resourceVersion") != str(self.version):
            raise KubeError("conflict", 409)
        self.version += 1
        self.lease = {**copy.deepcopy(body), "metadata": {
            **body["metadata"], "resourceVersion": str(self.version)}}  # fmt: skip
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api() -> LeaseApi:
    return LeaseApi()


def elector(api: LeaseApi, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(api, "ns", "lease", identity, Timings(), clock)  # type: ignore[arg-type]


def test_one_holder_and_a_takeover_only_after_the_lease_ran_out(api: LeaseApi) -> None:
    clock_a, clock_b = Clock(), Clock()
    a, b = elector(api, "a", clock_a), elector(api, "b", clock_b)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    clock_a.now += 2
    assert a.try_acquire_or_renew() is True  # renewed: b sees the record change
    clock_b.now += 2
    assert b.try_acquire_or_renew() is False
    # a stops renewing (its pod was deleted). b takes over 15 s after it last saw a change,
    # judged by its own clock, whatever the timestamps in the Lease say.
    clock_b.now += 14
    assert b.try_acquire_or_renew() is False
    clock_b.now += 1.5
    assert b.try_acquire_or_renew() is True
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1
    assert a.try_acquire_or_renew() is False  # the old leader sees it lost


def test_a_concurrent_write_loses_with_409(api: LeaseApi) -> None:
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    stale = copy.deepcopy(api.lease)
    assert b.try_acquire_or_renew() is False  # b sees a holding it
    clock.now += 20  # then a stops renewing: expired for b, which takes it over
    assert b.try_acquire_or_renew() is True
    real_request = api.request

    def stale_read(method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        if method == "GET":  # `a` read the Lease before b's write landed
            return copy.deepcopy(stale)  # type: ignore[arg-type]
        return real_request(method, path, body, **kw)

    api.request = stale_read  # type: ignore[method-assign]
    assert a.try_acquire_or_renew() is False  # its PUT carries the old resourceVersion
    assert api.lease is not None and api.lease["spec"]["holderIdentity"] == "b"


def test_a_leader_cut_off_stops_before_anyone_may_take_over(api: LeaseApi) -> None:
    """Renew deadline (10 s) < lease duration (15 s): `hold` returns (the controller stops)
    while the lease is still valid for the others."""
    import asyncio

    clock = Clock()
    a = elector(api, "a", clock)
    a.timings = Timings(retry_seconds=0.01)
    assert a.try_acquire_or_renew()
    api.down = True

    async def run() -> float:
        async def tick() -> None:
            while True:
                await asyncio.sleep(0.005)
                clock.now += 0.5

        ticker = asyncio.create_task(tick())
        await asyncio.wait_for(a.hold(), 5)
        ticker.cancel()
        return clock.now - a.renewed_at

    stopped_after = asyncio.run(run())
    assert 10 <= stopped_after < 15


def test_a_released_lease_is_taken_at_the_next_retry(api: LeaseApi) -> None:
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()  # a clean shutdown
    assert b.try_acquire_or_renew() is True  # no need to wait out the 15 s
