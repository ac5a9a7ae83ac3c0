"""Status writes wait while a pod's set is restored, for a
bounded time."""

import asyncio
import time

import pytest

from trunk_operator.runtime import restores
from trunk_operator.runtime.restores import Restores


def test_a_status_turn_waits_until_every_restore_has_ended() -> None:
    async def scenario() -> None:
        calls = Restores()
        await asyncio.wait_for(calls.status_turn(), 0.1)  # nothing restoring: at once
        first, second = calls.restoring(), calls.restoring()
        await first.__aenter__()
        await second.__aenter__()  # two pods at once
        turn = asyncio.create_task(calls.status_turn())
        await asyncio.sleep(0.05)
        assert not turn.done() and not calls.status_may_go()
        await first.__aexit__(None, None, None)
        await asyncio.sleep(0.05)
        assert not turn.done()  # the other one still restores
        await second.__aexit__(None, None, None)
        await asyncio.wait_for(turn, 0.1)
        assert calls.status_may_go()

    asyncio.run(scenario())


def test_a_restore_that_hangs_holds_the_statuses_back_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(restores, "RESTORE_FIRST_AT_MOST", 0.2)

    async def scenario() -> None:
        calls = Restores()
        async with calls.restoring():
            started = time.monotonic()
            await asyncio.wait_for(calls.status_turn(), 1)
            waited = time.monotonic() - started
            assert 0.15 <= waited < 0.5
            assert calls.status_may_go()  # later writes do not wait again
            await asyncio.wait_for(calls.status_turn(), 0.05)
        async with calls.restoring():  # a new restore: the bound counts from its start
            assert not calls.status_may_go()

    asyncio.run(scenario())


def test_a_restore_that_fails_ends_all_the_same() -> None:
    async def scenario() -> None:
        calls = Restores()
        with pytest.raises(RuntimeError):
            async with calls.restoring():
                raise RuntimeError("exec failed")
        await asyncio.wait_for(calls.status_turn(), 0.1)

    asyncio.run(scenario())
