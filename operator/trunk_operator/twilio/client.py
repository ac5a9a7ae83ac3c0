"""The operator's client for Twilio's REST API: one account's trunks (trunking v1) and SIP
credential lists, credentials, IP access control lists and addresses (api 2010), as records,
with the operator's own timeouts, concurrency bound and retry policy around each call.

Built on Twilio's official Python SDK (`twilio`), its async client (`*_async`, on aiohttp,
which Kopf already brings). Why the SDK: it is the client Twilio users know and Twilio's own
generated code for every operation (paths, parameter names and serialisation, paging), so the
operator makes the calls every Twilio script makes, and a reader can check them against
Twilio's docs. What it costs, and what this module does about it:
- No base-URL setting (only `region`/`edge`, which rewrite the host). Its documented way to
  point it elsewhere is a custom HTTP client: `_HttpClient` rewrites every URL to `base_url`
  (tests only), the absolute `next_page_url`s of trunking v1 included. Region and edge go to the
  SDK's Client, which puts them in the host; with `base_url` the rewrite wins.
- Its async HTTP client ignores its own `timeout` (only a per-call one, which the generated
  methods never pass), opens an aiohttp session in its constructor (outside any event loop)
  and passes `auth=` to aiohttp (deprecated there). `_HttpClient` replaces its `request`: one
  session created lazily inside the running loop (closed by `close()`), an explicit total
  timeout per request, the Authorization header set here, at most `concurrency` requests in
  flight for the account.
- Its failed *list* page (the first as well as a next one) raises a bare
  `TwilioException("Unable to fetch page")` with no status. The HTTP client records each
  call's last exchange (a context variable), so every failure is classified by the status
  Twilio answered, whichever exception the SDK chose.
- Its `environment` falls back to `os.environ` when empty or None: `TWILIO_REGION`/`TWILIO_EDGE`
  in the operator's environment would redirect every account. A non-empty mapping is passed.

Why our own retry policy (the SDK's stays off: `max_retries=None`, and `_HttpClient` never
uses the SDK's session anyway): its `max_retries` (aiohttp-retry `ExponentialRetry`) repeats
every 5xx on every method, POST creates included, and Twilio has no idempotency key, so a
create answered 500 after it was applied would become a duplicate; and it never retries 429,
the one answer Twilio documents as "not processed, safe to retry after backing off". The
policy, in `TwilioApi._call`:
- 429: retried (honouring `Retry-After`; else full-jitter exponential backoff,
  `random() * min(backoff_cap, backoff * 2**n)`); a `Retry-After` beyond `backoff_cap` is not
  slept through: `Unavailable` with its `retry_after`, for the caller to requeue.
- 5xx, timeouts, connections lost: retried when the call is safe to repeat (GETs, and so whole
  listings, a failed next page included; deletes; updates by SID, which set the same values
  again); for a create (a POST to a list) the outcome is unknown: `Ambiguous` at once, never
  retried blindly. The caller re-lists and finds it or creates again.
- A connection that could not be made (refused, DNS, connect timeout): nothing was sent, so it
  is retried for every call.
- 401/403: `Unauthorized` at once. Other 4xx: `Refused` (validation, a SID not found...), except
  404 on a delete (already gone: done) and 409 on associating a list with a trunk (already
  there: done; what Twilio answers there is UNCONFIRMED, the stand-in answers 409).
- Attempts exhausted (`attempts` in all): `Unavailable`.

Secrets: passwords (the account's auth token or key secret, SIP credential passwords) travel
only in the Authorization header and form bodies. Neither is logged: `_HttpClient` never calls
the SDK's `log_request` (which logs method, URL, query and headers other than Authorization,
not bodies) and logs only the operation, method, URL and status at DEBUG. Exception texts are
written here from the status and Twilio's code and message, with every secret of the call
redacted, and chain no SDK or aiohttp exception.

`requests` counts every HTTP request sent, retries and pages included, per operationId (the
vendored specs' names, `OPERATIONS`): the "API requests per trunk per hour" of the bench.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.base.exceptions import TwilioException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

log = logging.getLogger(__name__)

T = TypeVar("T")

# Every operation the client can call, by the vendored specs' operationIds (testbed/twilio-api/).
OPERATIONS: frozenset[str] = frozenset(
    {
        "ListTrunk",
        "FetchTrunk",
        "CreateTrunk",
        "UpdateTrunk",
        "ListCredentialList",
        "CreateCredentialList",
        "ListIpAccessControlList",
        "CreateIpAccessControlList",
        "DeleteIpAccessControlList",
        "ListSipCredentialList",
        "FetchSipCredentialList",
        "CreateSipCredentialList",
        "ListSipCredential",
        "CreateSipCredential",
        "UpdateSipCredential",
        "DeleteSipCredential",
        "ListSipIpAccessControlList",
        "FetchSipIpAccessControlList",
        "CreateSipIpAccessControlList",
        "ListSipIpAddress",
        "CreateSipIpAddress",
        "DeleteSipIpAddress",
    }
)
MAX_PAGE_SIZE = 1000  # both APIs' PageSize maximum: fewest requests per listing
# The SDK reads region and edge from os.environ when this is empty (see the docstring).
_NO_ENVIRONMENT = {"TWILIO_ENVIRONMENT": "ignored"}
_REDACTED = "********"
_GONE = frozenset({404})  # a fetch of what is not there: None


@dataclass(frozen=True)
class AccountCredentials:
    account_sid: str
    username: str  # an API key SID ("SK...") or the account SID
    password: str = field(repr=False)  # the key's secret or the auth token
    region: str | None = None
    edge: str | None = None


@dataclass(frozen=True)
class TrunkRecord:
    sid: str
    domain_name: str
    friendly_name: str
    secure: bool


@dataclass(frozen=True)
class CredentialListRecord:
    sid: str
    friendly_name: str


@dataclass(frozen=True)
class CredentialRecord:
    sid: str
    username: str


@dataclass(frozen=True)
class IpAccessControlListRecord:
    sid: str
    friendly_name: str


@dataclass(frozen=True)
class IpAddressRecord:
    sid: str
    ip_address: str
    cidr_prefix_length: int
    friendly_name: str


class TwilioError(Exception):
    """A call that did not succeed. The text never holds a password or key secret."""

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class Unauthorized(TwilioError):
    """401/403: Twilio refuses the account's API credentials."""


class Refused(TwilioError):
    """Another 4xx (validation, a SID not found, a conflict): not retried."""


class Ambiguous(TwilioError):
    """A create whose outcome is unknown (5xx, timeout, connection lost once it may have been
    sent): it may have happened. Not retried: the caller re-lists."""


class Unavailable(TwilioError):
    """Attempts exhausted (429s, 5xx, timeouts), or Twilio asked to wait longer than the
    backoff cap (`retry_after`, seconds)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


@dataclass
class _Exchange:
    """One attempt of a call: the last response its requests got (set by `_HttpClient`)."""

    operation: str
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""


_EXCHANGE: contextvars.ContextVar[_Exchange] = contextvars.ContextVar("twilio_exchange")


class _Retry(Exception):
    """An attempt that failed in a way worth another (internal to `_call`)."""

    def __init__(self, reason: str, status: int | None, code: int | None, after: float | None):
        super().__init__(reason)
        self.reason, self.status, self.code, self.after = reason, status, code, after


class _HttpClient(AsyncTwilioHttpClient):
    """The SDK's async HTTP client with its `request` replaced (see the module docstring)."""

    def __init__(
        self,
        base_url: str | None,
        timeout: float,
        concurrency: int,
        requests: collections.Counter[str],
    ) -> None:
        super().__init__(pool_connections=False, timeout=timeout, logger=log, max_retries=None)
        self.base = urlsplit(base_url) if base_url else None
        self.limit = asyncio.Semaphore(concurrency)
        self.requests = requests
        self.session: aiohttp.ClientSession | None = None

    def rewrite(self, url: str) -> str:
        if self.base is None:
            return url
        parts = urlsplit(url)
        path = self.base.path.rstrip("/") + parts.path
        return urlunsplit((self.base.scheme, self.base.netloc, path, parts.query, ""))

    async def request(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        exchange = _EXCHANGE.get(None) or _Exchange("unknown")
        sent = dict(headers or {})
        if auth is not None:
            sent["Authorization"] = aiohttp.encode_basic_auth(auth[0], auth[1])
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
        async with self.limit:
            self.requests[exchange.operation] += 1
            async with self.session.request(
                method,
                self.rewrite(url),
                params=dict(params) if params else None,
                data=dict(data) if data else None,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                allow_redirects=allow_redirects,
            ) as response:
                text = await response.text()
        log.debug("Twilio %s: %s %s -> %d", exchange.operation, method, url, response.status)
        exchange.status, exchange.headers, exchange.body = response.status, response.headers, text
        return Response(response.status, text, response.headers)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class TwilioApi:
    """One Twilio account's API, with the operator's policy (module docstring); one instance
    per account. `base_url`: tests only, every Twilio URL is rewritten to it. `concurrency`: at
    most this many requests in flight for the account. `attempts`: in all, the first included.
    `page_size`: records per listing request. `sleep`, `random`: the backoff's, for tests."""

    def __init__(
        self,
        credentials: AccountCredentials,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        concurrency: int = 4,
        attempts: int = 5,
        backoff: float = 0.5,
        backoff_cap: float = 30.0,
        page_size: int = MAX_PAGE_SIZE,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.account = credentials
        self.attempts, self.backoff, self.backoff_cap = attempts, backoff, backoff_cap
        self.page_size = page_size
        self.sleep, self.random = sleep, random
        self.requests: collections.Counter[str] = collections.Counter()
        self.http = _HttpClient(base_url, timeout, concurrency, self.requests)
        self.client: Any = Client(
            credentials.username,
            credentials.password,
            credentials.account_sid,
            region=credentials.region,
            edge=credentials.edge,
            http_client=self.http,
            environment=_NO_ENVIRONMENT,
        )

    async def close(self) -> None:
        await self.http.close()

    # ---- the policy --------------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        run: Callable[[], Awaitable[T]],
        *,
        safe: bool,
        done: frozenset[int] = frozenset(),
        secrets: tuple[str, ...] = (),
    ) -> T | None:
        """`run` under the policy; None when Twilio answered a status of `done` (a delete of
        what is gone). `secrets`: the call's own, redacted from any error text."""
        last: _Retry | None = None
        for n in range(self.attempts):
            if last is not None:
                if last.after is not None and last.after > self.backoff_cap:
                    what = f"asked to retry after {last.after:g}s"
                    raise self._error(Unavailable, operation, what, last, secrets)
                await self.sleep(self._delay(n - 1, last))
            exchange = _Exchange(operation)
            token = _EXCHANGE.set(exchange)
            failure: _Retry | TwilioError
            try:
                return await run()
            except TwilioException:
                if exchange.status is not None and exchange.status in done:
                    return None
                failure = self._verdict(operation, exchange, safe, secrets)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
                failure = _Retry(f"cannot connect ({type(error).__name__})", None, None, None)
            except (aiohttp.ClientError, TimeoutError) as error:
                reason = f"no answer ({type(error).__name__})"
                failure = _Retry(reason, None, None, None)
                if not safe:
                    text = f"{operation}: {reason}: it may have been applied"
                    failure = Ambiguous(self._redact(text, secrets))
            finally:
                _EXCHANGE.reset(token)
            if isinstance(failure, TwilioError):
                raise failure  # here, not in the handler: no SDK exception as its context
            last = failure
            log.debug("Twilio %s: attempt %d of %d: %s", operation, n + 1, self.attempts, last)
        assert last is not None
        raise self._error(
            Unavailable, operation, f"gave up after {self.attempts} attempts", last, secrets
        )

    def _delay(self, n: int, last: _Retry) -> float:
        """Before retry `n` (0, 1, ...): Twilio's Retry-After, else full-jitter backoff."""
        if last.after is not None:
            return last.after
        return self.random() * min(self.backoff_cap, self.backoff * 2**n)

    def _verdict(
        self, operation: str, exchange: _Exchange, safe: bool, secrets: tuple[str, ...]
    ) -> _Retry | TwilioError:
        """A failed answer: the retry it deserves, or the error to raise."""
        status = exchange.status
        code, message = _twilio_error(exchange.body)
        said = f"HTTP {status}" + (f" (Twilio error {code})" if code else "")
        said += f": {message}" if message else ""
        if status == 429:
            return _Retry(said, status, code, _retry_after(exchange.headers))
        if status in (401, 403):
            kind: type[TwilioError] = Unauthorized
            text = f"{operation}: Twilio refused the account's API credentials: {said}"
        elif status is not None and 400 <= status < 500:
            kind, text = Refused, f"{operation}: {said}"
        elif status is None or status < 400:  # a 2xx the SDK could not read: not Twilio's
            kind, text = Refused, f"{operation}: unreadable answer ({said})"
        elif safe:
            return _Retry(said, status, code, None)
        else:
            kind, text = Ambiguous, f"{operation}: {said}: it may have been applied"
        return kind(self._redact(text, secrets), status=status, code=code)

    def _error(
        self,
        kind: type[Unavailable],
        operation: str,
        what: str,
        last: _Retry,
        secrets: tuple[str, ...],
    ) -> Unavailable:
        text = self._redact(f"{operation}: {what}; last: {last.reason}", secrets)
        return kind(text, status=last.status, code=last.code, retry_after=last.after)

    def _redact(self, text: str, secrets: tuple[str, ...]) -> str:
        for secret in (self.account.password, *secrets):
            if secret:
                text = text.replace(secret, _REDACTED)
        return text

    async def _list(self, operation: str, run: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
        return await self._call(operation, run, safe=True) or []

    async def _create(
        self, operation: str, run: Callable[[], Awaitable[Any]], secrets: tuple[str, ...] = ()
    ) -> Any:
        return await self._call(operation, run, safe=False, secrets=secrets)

    # ---- the operations ----------------------------------------------------------------

    @property
    def _trunking(self) -> Any:
        return self.client.trunking.v1

    @property
    def _sip(self) -> Any:
        return self.client.api.v2010.account.sip

    async def check(self) -> None:
        """The cheapest authenticated call: one trunk (or none) on one page."""
        await self._list("ListTrunk", lambda: self._trunking.trunks.list_async(limit=1))

    async def trunks(self) -> list[TrunkRecord]:
        found = await self._list(
            "ListTrunk", lambda: self._trunking.trunks.list_async(page_size=self.page_size)
        )
        return [_trunk(t) for t in found]

    async def trunk(self, sid: str) -> TrunkRecord | None:
        """One trunk by SID (None: it is gone): a resync's look, without a listing."""
        found = await self._call(
            "FetchTrunk", lambda: self._trunking.trunks(sid).fetch_async(), safe=True, done=_GONE
        )
        return _trunk(found) if found is not None else None

    async def create_trunk(self, friendly_name: str, domain_name: str, secure: bool) -> TrunkRecord:
        return _trunk(
            await self._create(
                "CreateTrunk",
                lambda: self._trunking.trunks.create_async(
                    friendly_name=friendly_name, domain_name=domain_name, secure=secure
                ),
            )
        )

    async def update_trunk(
        self, sid: str, *, friendly_name: str | None = None, secure: bool | None = None
    ) -> TrunkRecord:
        trunk = await self._call(
            "UpdateTrunk",
            lambda: self._trunking.trunks(sid).update_async(
                friendly_name=friendly_name, secure=secure
            ),
            safe=True,
        )
        return _trunk(trunk)

    async def credential_lists(self) -> list[CredentialListRecord]:
        found = await self._list(
            "ListSipCredentialList",
            lambda: self._sip.credential_lists.list_async(page_size=self.page_size),
        )
        return [CredentialListRecord(c.sid, c.friendly_name or "") for c in found]

    async def credential_list(self, sid: str) -> CredentialListRecord | None:
        found = await self._call(
            "FetchSipCredentialList",
            lambda: self._sip.credential_lists(sid).fetch_async(),
            safe=True,
            done=_GONE,
        )
        return CredentialListRecord(found.sid, found.friendly_name or "") if found else None

    async def create_credential_list(self, friendly_name: str) -> CredentialListRecord:
        created = await self._create(
            "CreateSipCredentialList",
            lambda: self._sip.credential_lists.create_async(friendly_name=friendly_name),
        )
        return CredentialListRecord(created.sid, created.friendly_name or "")

    async def trunk_credential_lists(self, trunk_sid: str) -> list[str]:
        found = await self._list(
            "ListCredentialList",
            lambda: self._trunking.trunks(trunk_sid).credentials_lists.list_async(
                page_size=self.page_size
            ),
        )
        return [a.sid for a in found]

    async def associate_credential_list(self, trunk_sid: str, credential_list_sid: str) -> None:
        await self._call(
            "CreateCredentialList",
            lambda: self._trunking.trunks(trunk_sid).credentials_lists.create_async(
                credential_list_sid=credential_list_sid
            ),
            safe=False,
            done=frozenset({409}),
        )

    async def credentials(self, credential_list_sid: str) -> list[CredentialRecord]:
        found = await self._list(
            "ListSipCredential",
            lambda: self._sip.credential_lists(credential_list_sid).credentials.list_async(
                page_size=self.page_size
            ),
        )
        return [CredentialRecord(c.sid, c.username or "") for c in found]

    async def create_credential(
        self, credential_list_sid: str, username: str, password: str
    ) -> CredentialRecord:
        created = await self._create(
            "CreateSipCredential",
            lambda: self._sip.credential_lists(credential_list_sid).credentials.create_async(
                username=username, password=password
            ),
            secrets=(password,),
        )
        return CredentialRecord(created.sid, created.username or "")

    async def update_credential_password(
        self, credential_list_sid: str, sid: str, password: str
    ) -> None:
        await self._call(
            "UpdateSipCredential",
            lambda: (
                self._sip.credential_lists(credential_list_sid)
                .credentials(sid)
                .update_async(password=password)
            ),
            safe=True,
            secrets=(password,),
        )

    async def delete_credential(self, credential_list_sid: str, sid: str) -> None:
        """Already gone (404) is done."""
        await self._call(
            "DeleteSipCredential",
            lambda: self._sip.credential_lists(credential_list_sid).credentials(sid).delete_async(),
            safe=True,
            done=frozenset({404}),
        )

    async def ip_access_control_lists(self) -> list[IpAccessControlListRecord]:
        found = await self._list(
            "ListSipIpAccessControlList",
            lambda: self._sip.ip_access_control_lists.list_async(page_size=self.page_size),
        )
        return [IpAccessControlListRecord(a.sid, a.friendly_name or "") for a in found]

    async def ip_access_control_list(self, sid: str) -> IpAccessControlListRecord | None:
        found = await self._call(
            "FetchSipIpAccessControlList",
            lambda: self._sip.ip_access_control_lists(sid).fetch_async(),
            safe=True,
            done=_GONE,
        )
        return IpAccessControlListRecord(found.sid, found.friendly_name or "") if found else None

    async def create_ip_access_control_list(self, friendly_name: str) -> IpAccessControlListRecord:
        created = await self._create(
            "CreateSipIpAccessControlList",
            lambda: self._sip.ip_access_control_lists.create_async(friendly_name=friendly_name),
        )
        return IpAccessControlListRecord(created.sid, created.friendly_name or "")

    async def ip_addresses(self, acl_sid: str) -> list[IpAddressRecord]:
        found = await self._list(
            "ListSipIpAddress",
            lambda: self._sip.ip_access_control_lists(acl_sid).ip_addresses.list_async(
                page_size=self.page_size
            ),
        )
        return [_ip_address(a) for a in found]

    async def create_ip_address(
        self, acl_sid: str, friendly_name: str, ip_address: str, cidr_prefix_length: int
    ) -> IpAddressRecord:
        created = await self._create(
            "CreateSipIpAddress",
            lambda: self._sip.ip_access_control_lists(acl_sid).ip_addresses.create_async(
                friendly_name=friendly_name,
                ip_address=ip_address,
                cidr_prefix_length=cidr_prefix_length,
            ),
        )
        return _ip_address(created)

    async def delete_ip_address(self, acl_sid: str, sid: str) -> None:
        """Already gone (404) is done."""
        await self._call(
            "DeleteSipIpAddress",
            lambda: self._sip.ip_access_control_lists(acl_sid).ip_addresses(sid).delete_async(),
            safe=True,
            done=frozenset({404}),
        )

    async def trunk_ip_access_control_lists(self, trunk_sid: str) -> list[str]:
        found = await self._list(
            "ListIpAccessControlList",
            lambda: self._trunking.trunks(trunk_sid).ip_access_control_lists.list_async(
                page_size=self.page_size
            ),
        )
        return [a.sid for a in found]

    async def associate_ip_access_control_list(self, trunk_sid: str, acl_sid: str) -> None:
        await self._call(
            "CreateIpAccessControlList",
            lambda: self._trunking.trunks(trunk_sid).ip_access_control_lists.create_async(
                ip_access_control_list_sid=acl_sid
            ),
            safe=False,
            done=frozenset({409}),
        )

    async def dissociate_ip_access_control_list(self, trunk_sid: str, acl_sid: str) -> None:
        """The list no longer applies to the trunk (it stays in the account); 404: done."""
        await self._call(
            "DeleteIpAccessControlList",
            lambda: (
                self._trunking.trunks(trunk_sid).ip_access_control_lists(acl_sid).delete_async()
            ),
            safe=True,
            done=_GONE,
        )


def _trunk(trunk: Any) -> TrunkRecord:
    return TrunkRecord(
        trunk.sid, trunk.domain_name or "", trunk.friendly_name or "", bool(trunk.secure)
    )


def _ip_address(address: Any) -> IpAddressRecord:
    return IpAddressRecord(
        address.sid,
        address.ip_address or "",
        int(address.cidr_prefix_length or 32),
        address.friendly_name or "",
    )


def _twilio_error(body: str) -> tuple[int | None, str]:
    """Twilio's error code and message from an error body ({code, message, more_info, status},
    or RFC 9457's {type, title, status, code, detail})."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None, ""
    if not isinstance(payload, dict):
        return None, ""
    code = payload.get("code")
    message = payload.get("message") or payload.get("detail") or payload.get("title") or ""
    return (code if isinstance(code, int) else None), str(message)[:300]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """`Retry-After`: seconds, or an HTTP date."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
