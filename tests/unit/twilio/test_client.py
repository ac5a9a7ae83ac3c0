"""The operator's Twilio client (trunk_operator.twilio.client) against the REST stand-in
(testbed/twilio_rest.py) served on loopback: every operation across two pages on both APIs, and
the retry policy under the stand-in's faults. Every exchange is validated against the vendored
specs inside the stand-in; each test ends with no violation. Backoff sleeps are recorded, not
slept."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import pytest
from aiohttp import web

from testbed.twilio_rest import TwilioRestStandIn
from trunk_operator.twilio.client import (
    AccountCredentials,
    Ambiguous,
    Refused,
    TrunkRecord,
    TwilioApi,
    Unauthorized,
    Unavailable,
)

STRONG = "Rotated-Passw0rd-1"
NEWER = "Rotated-Passw0rd-2"


class Sleeps:
    """The injected sleep: records each delay and yields once, nothing more."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
def standin() -> Iterator[TwilioRestStandIn]:
    twilio = TwilioRestStandIn()
    yield twilio
    twilio.close()
    assert twilio.violations == []


@pytest.fixture
def base_url(standin: TwilioRestStandIn) -> str:
    return standin.serve()


def client(
    standin: TwilioRestStandIn, base_url: str, token: str = "", *where: str, **options: Any
) -> TwilioApi:
    """A client of the stand-in's account (with `token` instead of its own, in `where`: a
    region and an edge)."""
    account = standin.account
    token = token or account.auth_token
    credentials = AccountCredentials(account.account_sid, account.account_sid, token, *where)
    options = {"sleep": Sleeps(), "random": lambda: 0.5, **options}
    return TwilioApi(credentials, base_url=base_url, **options)


def run(api: TwilioApi, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            await api.close()

    asyncio.run(main())


def delays(api: TwilioApi) -> list[float]:
    assert isinstance(api.sleep, Sleeps)
    return api.sleep.delays


def served(standin: TwilioRestStandIn, operation: str, status: int | None = None) -> int:
    return sum(1 for op, _, s in standin.requests if op == operation and status in (None, s))


def text_of(error: BaseException) -> str:
    return repr(error) + "".join(traceback.format_exception(error))


def test_every_operation_across_two_pages_on_both_apis(
    standin: TwilioRestStandIn,
    base_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trunk_operator.twilio.client")
    monkeypatch.setenv("TWILIO_REGION", "au1")  # the SDK's fallback: not the operator's
    api = client(standin, base_url, page_size=2)

    async def listed(operation: str, listing: Awaitable[list[Any]]) -> list[Any]:
        before = api.requests[operation]
        found = await listing
        assert api.requests[operation] - before == 2, operation  # 3 objects, pages of 2
        return found

    async def scenario() -> None:
        await api.check()
        trunks = [await api.create_trunk(f"t{i}", f"t{i}.pstn.twilio.com", False) for i in range(3)]
        assert await listed("ListTrunk", api.trunks()) == trunks
        trunk = await api.update_trunk(trunks[0].sid, friendly_name="renamed", secure=True)
        assert trunk == TrunkRecord(trunks[0].sid, "t0.pstn.twilio.com", "renamed", True)
        assert await api.trunk(trunk.sid) == trunk
        assert await api.trunk("TK" + "0" * 32) is None  # gone
        lists = [await api.create_credential_list(f"cl{i}") for i in range(3)]
        assert await listed("ListSipCredentialList", api.credential_lists()) == lists
        assert await api.credential_list(lists[1].sid) == lists[1]
        assert await api.credential_list("CL" + "0" * 32) is None
        for cl in lists:
            await api.associate_credential_list(trunk.sid, cl.sid)
        await api.associate_credential_list(trunk.sid, lists[0].sid)  # already there: done
        associated = await listed("ListCredentialList", api.trunk_credential_lists(trunk.sid))
        assert associated == [cl.sid for cl in lists]
        creds = [await api.create_credential(lists[0].sid, f"u{i}", STRONG) for i in range(3)]
        assert await listed("ListSipCredential", api.credentials(lists[0].sid)) == creds
        await api.update_credential_password(lists[0].sid, creds[0].sid, NEWER)
        held = standin.account.credentials_of_domain("t0.pstn.twilio.com")
        assert held == {"u0": NEWER, "u1": STRONG, "u2": STRONG}
        await api.delete_credential(lists[0].sid, creds[1].sid)
        await api.delete_credential(lists[0].sid, creds[1].sid)  # gone already: done
        assert await api.credentials(lists[0].sid) == [creds[0], creds[2]]
        acls = [await api.create_ip_access_control_list(f"acl{i}") for i in range(3)]
        assert await listed("ListSipIpAccessControlList", api.ip_access_control_lists()) == acls
        assert await api.ip_access_control_list(acls[2].sid) == acls[2]
        assert await api.ip_access_control_list("AL" + "0" * 32) is None
        for acl in acls:
            await api.associate_ip_access_control_list(trunk.sid, acl.sid)
        acl_sids = await listed(
            "ListIpAccessControlList", api.trunk_ip_access_control_lists(trunk.sid)
        )
        assert acl_sids == [acl.sid for acl in acls]
        await api.dissociate_ip_access_control_list(trunk.sid, acls[2].sid)
        await api.dissociate_ip_access_control_list(trunk.sid, acls[2].sid)  # gone: done
        assert await api.trunk_ip_access_control_lists(trunk.sid) == [acls[0].sid, acls[1].sid]
        addresses = [
            await api.create_ip_address(acls[0].sid, f"ip{i}", f"192.0.2.{i}", 32 - i)
            for i in range(3)
        ]
        assert addresses[2].cidr_prefix_length == 30
        assert await listed("ListSipIpAddress", api.ip_addresses(acls[0].sid)) == addresses
        await api.delete_ip_address(acls[0].sid, addresses[0].sid)
        await api.delete_ip_address(acls[0].sid, addresses[0].sid)
        assert await api.ip_addresses(acls[0].sid) == addresses[1:]

    run(api, scenario)
    # Every request counted under the operationId the stand-in served it as.
    assert api.requests == Counter(op for op, *_ in standin.requests)
    assert "https://trunking.twilio.com/v1/Trunks" in caplog.text and "au1" not in caplog.text


def test_429s_under_a_concurrency_limit_converge_within_the_bound(
    standin: TwilioRestStandIn, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    standin.faults.concurrency_limit = 2
    standin.faults.latency = 0.02
    in_flight, most = [0], [0]
    handle = standin.handle

    def counted(*args: Any) -> Any:
        with standin.account.lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            time.sleep(0.01)  # the 429s too take a while: requests in flight overlap
            return handle(*args)
        finally:
            with standin.account.lock:
                in_flight[0] -= 1

    monkeypatch.setattr(standin, "handle", counted)
    api = client(standin, base_url, concurrency=3, attempts=100)

    async def scenario() -> None:
        await asyncio.gather(*(api.create_credential_list(f"cl{i}") for i in range(12)))
        names = sorted(cl.friendly_name for cl in await api.credential_lists())
        assert names == sorted(f"cl{i}" for i in range(12))  # each once: 429s are not applied

    run(api, scenario)
    assert most[0] == 3  # the bound, reached and never passed
    limited = served(standin, "CreateSipCredentialList", 429)
    assert limited > 0 and len(delays(api)) == limited
    assert set(delays(api)) <= {0.5 * min(30.0, 0.5 * 2**n) for n in range(100)}
    assert api.requests["CreateSipCredentialList"] == 12 + limited


def test_a_create_applied_then_answered_500_is_ambiguous_and_a_relist_finds_one(
    standin: TwilioRestStandIn, base_url: str
) -> None:
    api = client(standin, base_url)
    standin.faults.fail("CreateTrunk", status=500, applied=True)
    standin.faults.fail("CreateSipCredential", status=502, applied=True)

    async def scenario() -> None:
        with pytest.raises(Ambiguous) as ambiguous:
            await api.create_trunk("acme", "acme.pstn.twilio.com", False)
        assert (ambiguous.value.status, ambiguous.value.code) == (500, 20500)
        assert [t.domain_name for t in await api.trunks()] == ["acme.pstn.twilio.com"]
        cl = await api.create_credential_list("acme")
        with pytest.raises(Ambiguous):
            await api.create_credential(cl.sid, "acme-1", STRONG)
        assert [c.username for c in await api.credentials(cl.sid)] == ["acme-1"]

    run(api, scenario)
    assert api.requests["CreateTrunk"] == 1 and api.requests["CreateSipCredential"] == 1
    assert delays(api) == []


def test_a_create_that_times_out_is_ambiguous(standin: TwilioRestStandIn, base_url: str) -> None:
    api = client(standin, base_url)

    async def scenario() -> None:
        api.http.timeout, standin.faults.latency = 0.05, 0.5  # applied after the client gave up
        with pytest.raises(Ambiguous, match="TimeoutError"):
            await api.create_credential_list("slow")
        assert api.requests["CreateSipCredentialList"] == 1
        api.http.timeout, standin.faults.latency = 10.0, 0.0
        for _ in range(100):
            if await api.credential_lists():
                break
            await asyncio.sleep(0.02)
        assert [cl.friendly_name for cl in await api.credential_lists()] == ["slow"]

    run(api, scenario)


def test_safe_calls_are_retried_after_5xx_and_timeouts(
    standin: TwilioRestStandIn, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = client(standin, base_url, page_size=2)
    handle = standin.handle
    second_pages, slow = [0], list[float]()

    def faulty(method: str, target: str, *args: Any) -> Any:
        if "PageToken=PT2" in target and target.startswith("/v1/Trunks?"):
            second_pages[0] += 1
            if second_pages[0] == 1:
                standin.faults.fail("ListTrunk", status=503)
        time.sleep(slow.pop() if slow else 0.0)
        return handle(method, target, *args)

    monkeypatch.setattr(standin, "handle", faulty)

    async def scenario() -> None:
        trunks = [await api.create_trunk("", f"t{i}.pstn.twilio.com", False) for i in range(3)]
        standin.faults.fail("ListSipCredentialList", status=500, times=2)
        assert await api.credential_lists() == []
        assert api.requests["ListSipCredentialList"] == 3
        assert delays(api) == [0.25, 0.5]  # random() * min(cap, 0.5 * 2**n)
        # The next page fails (the SDK's bare "Unable to fetch page"): the listing again.
        assert await api.trunks() == trunks
        assert api.requests["ListTrunk"] == 2 + 2
        # Applied, then 500: done again (the same values), or gone already.
        standin.faults.fail("UpdateTrunk", status=500, applied=True)
        assert (await api.update_trunk(trunks[0].sid, secure=True)).secure
        cl = await api.create_credential_list("cl")
        cred = await api.create_credential(cl.sid, "u", STRONG)
        standin.faults.fail("DeleteSipCredential", status=500, applied=True)
        await api.delete_credential(cl.sid, cred.sid)
        assert api.requests["DeleteSipCredential"] == 2
        api.http.timeout, slow[:] = 0.1, [0.5]  # the first answer late, the second in time
        assert await api.credentials(cl.sid) == []
        assert api.requests["ListSipCredential"] == 2

    run(api, scenario)
    assert served(standin, "DeleteSipCredential", 404) == 1


def test_retries_exhausted_are_unavailable(standin: TwilioRestStandIn, base_url: str) -> None:
    api = client(standin, base_url, attempts=3)

    async def scenario() -> None:
        standin.faults.fail("ListTrunk", status=503, times=3)
        with pytest.raises(Unavailable) as unavailable:
            await api.trunks()
        assert unavailable.value.status == 503 and api.requests["ListTrunk"] == 3
        standin.faults.concurrency_limit = 0  # 429 to everything: retried, creates too
        with pytest.raises(Unavailable) as limited:
            await api.create_credential_list("x")
        assert (limited.value.status, limited.value.code) == (429, 20429)
        assert api.requests["CreateSipCredentialList"] == 3
        standin.faults.concurrency_limit = None
        assert await api.credential_lists() == []  # nothing was created

    run(api, scenario)
    assert delays(api) == [0.25, 0.5] * 2


def test_an_unreachable_twilio_is_retried_even_for_creates() -> None:
    with contextlib.closing(socket.socket()) as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections refused
        credentials = AccountCredentials("AC" + "0" * 32, "AC" + "0" * 32, "token")
        sleeps = Sleeps()
        api = TwilioApi(credentials, base_url=f"http://127.0.0.1:{port}", attempts=4, sleep=sleeps)

        async def scenario() -> None:
            with pytest.raises(Unavailable, match="cannot connect"):
                await api.create_trunk("x", "x.pstn.twilio.com", False)

        run(api, scenario)
    assert api.requests["CreateTrunk"] == 4 and len(sleeps.delays) == 3


def test_refused_credentials_and_requests(standin: TwilioRestStandIn, base_url: str) -> None:
    api = client(standin, base_url, token="not-the-token")

    async def scenario() -> None:
        with pytest.raises(Unauthorized) as unauthorized:
            await api.check()
        assert (unauthorized.value.status, unauthorized.value.code) == (401, 20003)
        with pytest.raises(Unauthorized):
            await api.create_trunk("x", "x.pstn.twilio.com", False)
        assert "not-the-token" not in text_of(unauthorized.value)
        good = client(standin, base_url)
        try:
            with pytest.raises(Refused) as refused:
                await good.create_trunk("x", "x.example.com", False)
            assert refused.value.status == 400
            with pytest.raises(Refused) as missing:
                await good.update_trunk("TK" + "0" * 32, secure=True)
            assert (missing.value.status, missing.value.code) == (404, 20404)
        finally:
            await good.close()

    run(api, scenario)
    assert api.requests == Counter({"ListTrunk": 1, "CreateTrunk": 1}) and delays(api) == []


Intercept = Callable[[web.Request, bytes], web.Response | None]


@contextlib.asynccontextmanager
async def proxied(target: str, intercept: Intercept) -> AsyncIterator[str]:
    """The stand-in behind a proxy that answers itself what `intercept` answers."""

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if (own := intercept(request, body)) is not None:
            return own
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Accept")}
        if request.content_type == "application/x-www-form-urlencoded":
            headers["Content-Type"] = request.content_type
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, target + request.path_qs, headers=headers, data=body
            ) as answer,
        ):
            return web.Response(status=answer.status, body=await answer.read())

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def echo_credentials(request: web.Request, body: bytes) -> web.Response | None:
    """400 to a credential's create or update, quoting all it carried: the worst a server's
    error text could do."""
    if "/Credentials" not in request.path:
        return None
    auth = base64.b64decode(request.headers["Authorization"].split()[1]).decode()
    said = f"refused {dict(parse_qsl(body.decode()))} from {auth}"
    return web.json_response({"code": 21000, "message": said, "status": 400}, status=400)


def test_no_secret_in_error_texts_or_logs(
    standin: TwilioRestStandIn, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = standin.account.auth_token

    async def scenario() -> None:
        async with proxied(base_url, echo_credentials) as url:
            api = client(standin, url, "", "ie1", "dublin")
            try:
                cl = await api.create_credential_list("acme")
                with pytest.raises(Refused) as refused:
                    await api.create_credential(cl.sid, "acme-1", STRONG)
                said = text_of(refused.value)
                assert "acme-1" in said and STRONG not in said and token not in said
                with pytest.raises(Refused) as again:
                    await api.update_credential_password(cl.sid, "CR" + "0" * 32, NEWER)
                assert NEWER not in text_of(again.value) and token not in text_of(again.value)
            finally:
                await api.close()

    asyncio.run(scenario())
    # The client logs its requests, to the region's and edge's host, without secrets.
    assert "POST https://api.dublin.ie1.twilio.com/2010-04-01/Accounts/" in caplog.text
    assert STRONG not in caplog.text and NEWER not in caplog.text and token not in caplog.text


def test_retry_after_is_honoured_up_to_the_cap(standin: TwilioRestStandIn, base_url: str) -> None:
    """The stand-in's 429s carry no Retry-After (UNCONFIRMED for Twilio): a proxy's do."""
    waits: list[str | None] = ["7", None, "120"]  # None: the stand-in answers

    def limited(request: web.Request, body: bytes) -> web.Response | None:
        wait = waits.pop(0) if waits else None
        if wait is None:
            return None
        answer = {"code": 20429, "message": "Too Many Requests", "status": 429}
        return web.json_response(answer, status=429, headers={"Retry-After": wait})

    async def scenario() -> None:
        async with proxied(base_url, limited) as url:
            api = client(standin, url)
            try:
                assert await api.trunks() == []
                assert delays(api) == [7.0] and api.requests["ListTrunk"] == 2
                with pytest.raises(Unavailable) as later:
                    await api.trunks()
                assert later.value.retry_after == 120.0 and delays(api) == [7.0]
            finally:
                await api.close()

    asyncio.run(scenario())
