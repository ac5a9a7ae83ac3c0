"""A stand-in for Twilio's REST API: the trunking v1 API and api 2010's SIP and number resources.

Twilio's API cannot be reached from the test machine, so the tests talk to this instead. It is
built from Twilio's published OpenAPI specs (`testbed/twilio-api/`, vendored): the operations,
their paths, parameters and response shapes are read from them, and every request it is sent
and every response it gives is validated against them with openapi-core. A request that breaks
the spec is answered 400 and kept in `violations`, as is a response of its own that would; a
test asserts `violations == []`. Responses carry Twilio's real URLs (a client reaches the
stand-in by rewriting hosts, as Twilio's SDK documents for mocks).

It is stateful (trunks, their origination URLs and associations, credential lists and
credentials, IP access control lists, the account's numbers) and keeps what the specs only say
in prose: DomainName unique and under pstn.twilio.com, `sip:` origination URLs only, SIP
passwords of at least 12 characters with a digit and both cases, usernames of at most 32, IPv4
only, a number on at most one trunk, derived fields (a trunk's `auth_type`, a number's
`trunk_sid`). What no source settles (testbed/twilio-api/README.md) is a `Rules` setting whose
default is the stricter reading. Buying or releasing a number is refused and recorded: the
operator must never do either.

Faults on demand (`Faults`): 429 when more requests than a limit are in flight, an error status
for the next requests of an operation (optionally after applying them: a create that happened
but was answered 500), latency. Edits "in the console" go through the account's
`console_update` and `console_delete` (`TwilioAccount`), which no validation sees.

The SIP side reads the account: `accepted_credentials(domain)` is what Twilio's termination
accepts for a trunk's domain at a given moment, from a timestamped history of what each domain
held and `Rules.credential_delay` (testbed/sip_gate.py checks every INVITE's digest with it).

A test holds this object, so it seeds, edits and reads in-process. For a stand-in that runs as
a process of its own (a demo that outlives the command that started it), the same is reachable
over HTTP under `/__standin/` (`admin`): no Twilio path starts so, none is validated, no
credentials asked (loopback, tests only).
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import yaml
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from twilio.http.http_client import TwilioHttpClient

SPECS = Path(__file__).resolve().parent / "twilio-api"
SPEC_FILES = ("twilio_trunking_v1.yaml", "twilio_api_v2010.subset.yaml")
PASSWORD_RULE = re.compile(r"^(?=.*\d)(?=.*[a-z])(?=.*[A-Z]).{12,}$")
ACTIONS = ("Create", "List", "Fetch", "Update", "Delete")
# Unset SIDs Twilio's own examples send as "" (testbed/twilio-api/README.md): sent as Twilio
# does, and validated as unset.
EMPTY_AS_UNSET = frozenset({"voice_application_sid", "sms_application_sid"})
# A trunk's association with a list: kept per trunk (a list may be on several trunks).
ASSOCIATIONS = frozenset({"CredentialList", "IpAccessControlList"})


class TwilioError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }


@dataclass(frozen=True)
class Operation:
    """One operation of a spec: `action` (Create, List, ...) on `kind` (Trunk, SipCredential...)."""

    operation_id: str
    method: str
    template: str
    pattern: re.Pattern[str]
    base: str  # the real host, e.g. https://trunking.twilio.com
    action: str
    kind: str
    schema: str  # the resource's schema name
    form: Mapping[str, Any]  # the form body's properties
    list_key: str | None


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def load_specs() -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load((SPECS / name).read_text()) for name in SPEC_FILES}


def operations(specs: Mapping[str, Mapping[str, Any]]) -> list[Operation]:
    found = []
    for spec in specs.values():
        base = spec["servers"][0]["url"]
        for template, item in spec["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+?)", template) + "$")
            for method in ("get", "post", "delete"):
                if method not in item:
                    continue
                op = item[method]
                action = next(a for a in ACTIONS if op["operationId"].startswith(a))
                body = op.get("requestBody", {}).get("content", {})
                form = body.get("application/x-www-form-urlencoded", {}).get("schema", {})
                ok = next(r for c, r in op["responses"].items() if c.startswith("2"))
                schema = ok.get("content", {}).get("application/json", {}).get("schema", {})
                list_key = None
                if "$ref" not in schema and schema:
                    list_key = next(k for k in schema["properties"] if k not in _PAGE_KEYS)
                    schema = schema["properties"][list_key]["items"]
                found.append(
                    Operation(
                        op["operationId"],
                        method.upper(),
                        template,
                        pattern,
                        base,
                        action,
                        op["operationId"].removeprefix(action),
                        schema.get("$ref", "").rsplit("/", 1)[-1] if schema else "",
                        form.get("properties", {}),
                        list_key,
                    )
                )
    # A resource's own kind from its schema, shared by its operations (Fetch/Delete have none).
    kinds = {(o.template.rstrip("}").rsplit("{", 1)[0]): o.schema for o in found if o.schema}
    return [
        o
        if o.schema
        else Operation(**{**o.__dict__, "schema": kinds.get(o.template.rsplit("{", 1)[0], "")})
        for o in found
    ]


_PAGE_KEYS = frozenset(
    {
        "meta",
        "end",
        "first_page_uri",
        "next_page_uri",
        "page",
        "page_size",
        "previous_page_uri",
        "start",
        "uri",
    }
)


@dataclass
class Rules:
    """Twilio behaviours no source settles: each defaults to the stricter reading."""

    duplicate_usernames: bool = False  # two credentials of one list with the same username
    delete_attached_credential_list: bool = False  # delete a list a trunk still uses
    move_numbers: bool = False  # associate a number already on another trunk (else refused)
    # Seconds before a credential change (API or console) reaches the SIP side. Stricter
    # reading: a new credential, or a new password, is accepted only once it has been in place
    # this long; a deleted one, or a replaced password, is refused at once.
    credential_delay: float = 10.0


@dataclass
class Faults:
    """Failures on demand."""

    concurrency_limit: int | None = None  # more requests in flight than this: 429/20429
    latency: float = 0.0  # seconds added to every request
    unreachable: bool = False  # every connection dropped before an answer (Twilio down)
    # operationId -> [(status, applied)]: the next requests of that operation fail with
    # `status`; `applied`: after doing what was asked (a create answered 500 that happened).
    scripted: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)

    def fail(self, operation_id: str, status: int = 500, applied: bool = False, times: int = 1):
        self.scripted.setdefault(operation_id, []).extend([(status, applied)] * times)


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _rfc2822(at: float) -> str:
    return email.utils.formatdate(at, usegmt=False).replace("-0000", "+0000")


class TwilioAccount:
    """One Twilio account's objects, and the rules Twilio applies to them. Changed through the
    stand-in's API (`TwilioRestStandIn`), or by a test as if in Twilio's console."""

    def __init__(self, account_sid: str | None = None, auth_token: str | None = None) -> None:
        self.account_sid = account_sid or _sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.api_keys: dict[str, str] = {}  # SK... -> secret
        self.rules = Rules()
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}  # kind -> key -> record
        self.passwords: dict[str, str] = {}  # credential SID -> password (for SIP digests)
        self.forbidden: list[str] = []  # numbers bought or released: never by the operator
        self.lock = threading.RLock()
        self.clock = time.time
        # (when, domain -> {(username, password)}): what each trunk's domain holds, after each
        # change of it; `accepted_credentials` reads it with the credential delay.
        self.credential_history: list[tuple[float, dict[str, frozenset[tuple[str, str]]]]] = [
            (self.clock(), {})
        ]
        self.sip_decisions: list[Any] = []  # the SIP side's verdicts (testbed.sip_gate)

    def add_api_key(self) -> tuple[str, str]:
        key, secret = _sid("SK"), secrets.token_urlsafe(24)
        self.api_keys[key] = secret
        return key, secret

    def seed_number(self, phone_number: str, friendly_name: str = "") -> str:
        """A number the account owns (bought before the test)."""
        with self.lock:
            sid = _sid("PN")
            self.store("IncomingPhoneNumber", sid, {"phone_number": phone_number}, {})
            record = self.objects["IncomingPhoneNumber"][sid]
            record["friendly_name"] = friendly_name or phone_number
            return sid

    def find(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [
                dict(r)
                for r in self.objects.get(kind, {}).values()
                if all(r.get(k) == v for k, v in fields.items())
            ]

    def console_update(self, kind: str, sid: str, **fields: Any) -> None:
        """An edit in Twilio's console: not through the API, not validated (a credential's
        `password` too)."""
        with self.lock:
            if kind == "SipCredential" and "password" in fields:
                self.passwords[sid] = str(fields.pop("password"))
            self.objects[kind][sid].update(fields, date_updated=time.time())
            self._note_credentials()

    def console_delete(self, kind: str, sid: str) -> None:
        with self.lock:
            self.delete(kind, sid)

    def credentials_of_domain(self, domain: str) -> dict[str, str]:
        """username -> password of every credential list on the trunk of `domain`."""
        with self.lock:
            trunks = [
                t for t in self.objects.get("Trunk", {}).values() if t["domain_name"] == domain
            ]
            lists = {
                a["sid"]
                for a in self.objects.get("CredentialList", {}).values()
                if trunks and a["trunk_sid"] == trunks[0]["sid"]
            }
            return {
                c["username"]: self.passwords[c["sid"]]
                for c in self.objects.get("SipCredential", {}).values()
                if c["credential_list_sid"] in lists
            }

    def accepted_credentials(
        self, domain: str, at: float | None = None
    ) -> frozenset[tuple[str, str]]:
        """The (username, password) pairs the SIP side accepts for `domain` at time `at` (now):
        those the trunk held all through the last `rules.credential_delay` seconds."""
        at = self.clock() if at is None else at
        since = at - self.rules.credential_delay
        with self.lock:
            held: frozenset[tuple[str, str]] | None = None
            for when, state in reversed(self.credential_history):
                if when > at:
                    continue
                pairs = state.get(domain, frozenset())
                held = pairs if held is None else held & pairs
                if when <= since:
                    break
            return held or frozenset()

    def _domain_credentials(self) -> dict[str, frozenset[tuple[str, str]]]:
        lists: dict[str, set[str]] = {}  # trunk SID -> its credential lists
        for a in self.objects.get("CredentialList", {}).values():
            lists.setdefault(a["trunk_sid"], set()).add(a["sid"])
        pairs: dict[str, set[tuple[str, str]]] = {}  # list SID -> its credentials
        for c in self.objects.get("SipCredential", {}).values():
            if c["sid"] in self.passwords:
                pair = (c["username"], self.passwords[c["sid"]])
                pairs.setdefault(c["credential_list_sid"], set()).add(pair)
        state = {
            t["domain_name"]: frozenset(
                p for sid in lists.get(t["sid"], ()) for p in pairs.get(sid, ())
            )
            for t in self.objects.get("Trunk", {}).values()
            if t.get("domain_name")
        }
        return {domain: held for domain, held in state.items() if held}

    def _note_credentials(self) -> None:
        """Appends to the history when what some domain holds changed."""
        state = self._domain_credentials()
        if state != self.credential_history[-1][1]:
            self.credential_history.append((self.clock(), state))

    # ---- what the API does to them ------------------------------------------------

    def get(self, kind: str, sid: str, parent: Mapping[str, str]) -> dict[str, Any]:
        key = f"{parent.get('TrunkSid')}/{sid}" if kind in ASSOCIATIONS else sid
        record = self.objects.get(kind, {}).get(key)
        if record is None or any(record.get(_camel_to_snake(k)) != v for k, v in parent.items()):
            raise TwilioError(404, 20404, f"The requested resource /{kind}/{sid} was not found")
        return record

    def create(self, kind: str, values: dict[str, Any], parent: dict[str, str]) -> str:
        check = getattr(self, f"_create_{_camel_to_snake(kind)}", None)
        if check is None:
            raise TwilioError(400, 21000, f"creating a {kind} is not supported here")
        key = check(values, {_camel_to_snake(k): v for k, v in parent.items()})
        self._note_credentials()
        return key

    def store(
        self, kind: str, sid: str, values: Mapping[str, Any], parent: Mapping[str, Any]
    ) -> str:
        now = time.time()
        record = {
            **values,
            **parent,
            "sid": sid,
            "account_sid": self.account_sid,
            "date_created": now,
            "date_updated": now,
        }
        self.objects.setdefault(kind, {})[_key(kind, record)] = record
        return _key(kind, record)

    def _create_trunk(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        domain = values.get("domain_name")
        if domain is not None:
            self._check_domain(domain, None)
        defaults = {
            "friendly_name": None,
            "domain_name": domain,
            "secure": False,
            "cnam_lookup_enabled": False,
            "symmetric_rtp_enabled": False,
            "transfer_mode": "disable-all",
            "transfer_caller_id": "from-transferee",
            "disaster_recovery_method": "POST",
            "disaster_recovery_url": None,
            "recording": {"mode": "do-not-record", "trim": "do-not-trim"},
        }
        return self.store("Trunk", _sid("TK"), {**defaults, **values}, parent)

    def _check_domain(self, domain: str, own: str | None) -> None:
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.pstn\.twilio\.com", domain):
            raise TwilioError(400, 21245, f"DomainName {domain!r} must end in pstn.twilio.com")
        if any(
            t["domain_name"] == domain and t["sid"] != own
            for t in self.objects.get("Trunk", {}).values()
        ):
            raise TwilioError(409, 21248, f"DomainName {domain} is already taken")

    def _create_origination_url(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        self.get("Trunk", parent["trunk_sid"], {})
        self._check_origination(values)
        return self.store("OriginationUrl", _sid("OU"), values, parent)

    def _check_origination(self, values: Mapping[str, Any]) -> None:
        if "sip_url" in values and not str(values["sip_url"]).startswith("sip:"):
            raise TwilioError(400, 21000, "SipUrl must be a sip: URI (sips is not supported)")

    def _associate(
        self, kind: str, target_kind: str, key: str, values: dict[str, Any], parent: dict[str, Any]
    ) -> str:
        self.get("Trunk", parent["trunk_sid"], {})
        target = self.get(target_kind, values[key], {})
        if f"{parent['trunk_sid']}/{target['sid']}" in self.objects.get(kind, {}):
            raise TwilioError(409, 21000, f"{target['sid']} is already on this trunk")
        return self.store(
            kind, target["sid"], {"friendly_name": target.get("friendly_name")}, parent
        )

    def _create_credential_list(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        return self._associate(
            "CredentialList", "SipCredentialList", "credential_list_sid", values, parent
        )

    def _create_ip_access_control_list(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        return self._associate(
            "IpAccessControlList",
            "SipIpAccessControlList",
            "ip_access_control_list_sid",
            values,
            parent,
        )

    def _create_phone_number(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        number = self.get("IncomingPhoneNumber", values["phone_number_sid"], {})
        trunk = parent["trunk_sid"]
        if number.get("trunk_sid") not in (None, trunk) and not self.rules.move_numbers:
            raise TwilioError(400, 21000, f"{number['phone_number']} is on another trunk")
        self.get("Trunk", trunk, {})
        number.update(trunk_sid=trunk, voice_application_sid=None, date_updated=time.time())
        self.objects.setdefault("PhoneNumber", {})[number["sid"]] = number
        return number["sid"]

    def _create_sip_credential_list(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        return self.store("SipCredentialList", _sid("CL"), values, parent)

    def _create_sip_ip_access_control_list(
        self, values: dict[str, Any], parent: dict[str, Any]
    ) -> str:
        return self.store("SipIpAccessControlList", _sid("AL"), values, parent)

    def _create_sip_credential(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        self.get("SipCredentialList", parent["credential_list_sid"], {})
        username, password = values["username"], str(values.pop("password"))
        if len(username) > 32:
            raise TwilioError(400, 21000, "Username is longer than 32 characters")
        self._check_password(password)
        taken = any(
            c["username"] == username and c["credential_list_sid"] == parent["credential_list_sid"]
            for c in self.objects.get("SipCredential", {}).values()
        )
        if taken and not self.rules.duplicate_usernames:
            raise TwilioError(400, 21000, f"Username {username} is already in this list")
        sid = self.store("SipCredential", _sid("CR"), values, parent)
        self.passwords[sid] = password
        return sid

    def _check_password(self, password: str) -> None:
        if not PASSWORD_RULE.match(password):
            raise TwilioError(
                400,
                21000,
                "Password must be 12 characters or more, with a digit, upper and lower case",
            )

    def _create_sip_ip_address(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        self.get("SipIpAccessControlList", parent["ip_access_control_list_sid"], {})
        if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", str(values["ip_address"])):
            raise TwilioError(400, 21000, "IpAddress: IPv4 only")
        values.setdefault("cidr_prefix_length", 32)
        return self.store("SipIpAddress", _sid("IP"), values, parent)

    def _create_incoming_phone_number(self, values: dict[str, Any], parent: dict[str, Any]) -> str:
        self.forbidden.append(f"buy {values.get('phone_number') or values.get('area_code')}")
        raise TwilioError(403, 20403, "buying a number is not something the operator does")

    def update(self, kind: str, record: dict[str, Any], values: dict[str, Any]) -> None:
        if kind == "Trunk" and "domain_name" in values:
            self._check_domain(values["domain_name"], record["sid"])
        if kind == "OriginationUrl":
            self._check_origination(values)
        if kind == "SipCredential":
            password = str(values.pop("password", ""))
            if password:
                self._check_password(password)
                self.passwords[record["sid"]] = password
        if kind == "IncomingPhoneNumber" and "trunk_sid" in values:
            if values["trunk_sid"]:
                self.get("Trunk", values["trunk_sid"], {})
                values["voice_application_sid"] = None
                self.objects.setdefault("PhoneNumber", {})[record["sid"]] = record
            else:
                values["trunk_sid"] = None
                self.objects.get("PhoneNumber", {}).pop(record["sid"], None)
        record.update(values, date_updated=time.time())
        self._note_credentials()

    def check_deletable(self, kind: str, record: Mapping[str, Any]) -> None:
        attached = any(
            a["sid"] == record["sid"] for a in self.objects.get("CredentialList", {}).values()
        )
        if (
            kind == "SipCredentialList"
            and attached
            and not self.rules.delete_attached_credential_list
        ):
            raise TwilioError(400, 21000, "the credential list is still used by a trunk")

    def delete(self, kind: str, sid: str) -> None:
        record = self.objects.get(kind, {}).pop(sid, None)
        if record is None:
            return
        if kind == "PhoneNumber":
            record.update(trunk_sid=None, date_updated=time.time())  # the same dict as the number
        if kind == "Trunk":
            for child in ("OriginationUrl", "CredentialList", "IpAccessControlList", "PhoneNumber"):
                table = self.objects.get(child, {})
                for other in [r for r in table.values() if r.get("trunk_sid") == sid]:
                    self.delete(child, _key(child, other))
        if kind == "SipCredentialList":
            table = self.objects.get("SipCredential", {})
            for cred in [c for c in table.values() if c["credential_list_sid"] == sid]:
                self.delete("SipCredential", cred["sid"])
        if kind == "SipCredential":
            self.passwords.pop(sid, None)
        self._note_credentials()


class TwilioRestStandIn:
    """The state and the rules; `serve()` puts it behind HTTP on `host:port`."""

    def __init__(self, account: TwilioAccount | None = None) -> None:
        self.account = account or TwilioAccount()
        self.specs = load_specs()
        self.validators = {name: OpenAPI.from_dict(spec) for name, spec in self.specs.items()}
        self.operations = operations(self.specs)
        self.schemas = {
            name: schema
            for spec in self.specs.values()
            for name, schema in spec["components"]["schemas"].items()
        }
        self.faults = Faults()
        self.violations: list[str] = []
        self.requests: list[tuple[str, str, int]] = []  # (operationId, path, status)
        self.in_flight = 0
        self.server: ThreadingHTTPServer | None = None
        self.url = ""  # the base URL, once served

    # ---- one request --------------------------------------------------------------------

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        url = urlsplit(target)
        op, params = self._route(method, url.path)
        if op is None:
            return 404, TwilioError(404, 20404, f"no such resource: {url.path}").body()
        if not self._enter():
            with self.account.lock:
                self.requests.append((op.operation_id, url.path, 429))
            return 429, TwilioError(429, 20429, "Too Many Requests").body()
        try:
            time.sleep(self.faults.latency)
            status, answer = self._answer(op, params, url, headers, body)
        finally:
            with self.account.lock:
                self.in_flight -= 1
        with self.account.lock:
            self.requests.append((op.operation_id, url.path, status))
        if 200 <= status < 300 and answer is not None:
            self._check_response(op, url, headers, body, status, answer)
        return status, answer

    # ---- test-only administration (/__standin/...) ---------------------------------------

    def admin(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        """`GET state`, `GET sip-decisions`, `POST numbers {phone_number, friendly_name}`,
        `POST|DELETE console/<Kind>/<Sid> {fields}`, `POST rules {...}`, `POST faults
        {concurrency_limit, latency, fail: {operation_id, status, applied, times}}`."""
        path = urlsplit(target).path.removeprefix(ADMIN).strip("/").split("/")
        try:
            args = json.loads(body or b"{}")
            with self.account.lock:
                return self._admin(method, path, args)
        except (KeyError, IndexError) as error:
            return 404, {"error": f"not found: {error}"}
        except (TypeError, ValueError) as error:
            return 400, {"error": str(error)}

    def _admin(self, method: str, path: list[str], args: dict[str, Any]) -> tuple[int, Any]:
        account = self.account
        match method, path:
            case "GET", ["state"]:
                return 200, {
                    "objects": account.objects,
                    "rules": asdict(account.rules),
                    "faults": asdict(self.faults),
                    "requests": self.requests,
                    "violations": self.violations,
                    "forbidden": account.forbidden,
                }
            case "GET", ["sip-decisions"]:
                return 200, [asdict(d) for d in account.sip_decisions]
            case "POST", ["numbers"]:
                return 201, {"sid": account.seed_number(**args)}
            case "POST", ["console", kind, sid]:
                account.console_update(kind, sid, **args)
                return 200, account.objects[kind][sid]
            case "DELETE", ["console", kind, sid]:
                if sid not in account.objects.get(kind, {}):
                    raise KeyError(f"{kind}/{sid}")
                account.console_delete(kind, sid)
                return 204, None
            case "POST", ["rules"]:
                for name, value in args.items():
                    getattr(account.rules, name)
                    setattr(account.rules, name, value)
                return 200, asdict(account.rules)
            case "POST", ["faults"]:
                fail = args.pop("fail", None)
                for name, value in args.items():
                    getattr(self.faults, name)
                    setattr(self.faults, name, value)
                if fail:
                    self.faults.fail(**fail)
                return 200, asdict(self.faults)
        raise KeyError("/".join(path))

    def _enter(self) -> bool:
        """Counts the request in; False (not counted) when over the concurrency limit."""
        with self.account.lock:
            limit = self.faults.concurrency_limit
            if limit is not None and self.in_flight >= limit:
                return False
            self.in_flight += 1
            return True

    def _route(self, method: str, path: str) -> tuple[Operation | None, dict[str, str]]:
        for op in self.operations:
            if op.method == method and (m := op.pattern.match(path)):
                return op, m.groupdict()
        return None, {}

    def _answer(
        self,
        op: Operation,
        params: dict[str, str],
        url: Any,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, Any] | None]:
        try:
            self._authenticate(headers, params)
            self._check_request(op, url, headers, body)
            form = dict(parse_qsl(body.decode())) if body else {}
            scripted = self.faults.scripted.get(op.operation_id)
            fault = scripted.pop(0) if scripted else None
            if fault and not fault[1]:
                raise TwilioError(fault[0], 20500, "Internal Server Error")
            with self.account.lock:
                status, answer = self._do(op, params, dict(parse_qsl(url.query)), form)
            if fault:  # applied, then answered as an error
                raise TwilioError(fault[0], 20500, "Internal Server Error")
            return status, answer
        except TwilioError as error:
            return error.status, error.body()

    def _authenticate(self, headers: Mapping[str, str], params: Mapping[str, str]) -> None:
        kind, _, value = headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(value or "").decode().partition(":")
        except ValueError:
            user = password = ""
        ok = kind == "Basic" and (
            (user == self.account.account_sid and password == self.account.auth_token)
            or (user in self.account.api_keys and self.account.api_keys[user] == password)
        )
        if not ok:
            raise TwilioError(401, 20003, "Authenticate")
        if params.get("AccountSid", self.account.account_sid) != self.account.account_sid:
            raise TwilioError(404, 20404, "The requested resource was not found")

    # ---- validation against the specs ------------------------------------------------

    def _spec_of(self, op: Operation) -> OpenAPI:
        return self.validators[
            SPEC_FILES[0] if op.base.startswith("https://trunking") else SPEC_FILES[1]
        ]

    def _mock_request(
        self, op: Operation, url: Any, headers: Mapping[str, str], body: bytes
    ) -> MockRequest:
        return MockRequest(
            op.base,
            op.method.lower(),
            url.path,
            args=dict(parse_qsl(url.query)),
            headers={"Authorization": headers.get("Authorization", "")},
            data=body or None,
            content_type=headers.get("Content-Type", "application/x-www-form-urlencoded"),
        )

    def _check_request(
        self, op: Operation, url: Any, headers: Mapping[str, str], body: bytes
    ) -> None:
        try:
            self._spec_of(op).validate_request(self._mock_request(op, url, headers, body))
        except Exception as error:  # openapi-core raises one type per kind of violation
            text = f"{op.operation_id} request: {_reason(error)}"
            self.violations.append(text)
            raise TwilioError(400, 21000, text) from None

    def _check_response(
        self,
        op: Operation,
        url: Any,
        headers: Mapping[str, str],
        body: bytes,
        status: int,
        answer: Mapping[str, Any] | None,
    ) -> None:
        shown = json.dumps(_unset_empty(answer)).encode() if answer is not None else b""
        response = MockResponse(shown, status_code=status, content_type="application/json")
        try:
            request = self._mock_request(op, url, headers, body)
            self._spec_of(op).validate_response(request, response)
        except Exception as error:
            self.violations.append(f"{op.operation_id} response: {_reason(error)}")

    # ---- the resources --------------------------------------------------------------

    def _do(
        self, op: Operation, params: dict[str, str], query: dict[str, str], form: dict[str, str]
    ) -> tuple[int, dict[str, Any] | None]:
        values = {_camel_to_snake(k): _typed(op.form.get(k, {}), v) for k, v in form.items()}
        parent = {k: v for k, v in params.items() if k not in ("Sid", "AccountSid")}
        if op.action == "Create":
            key = self.account.create(op.kind, values, parent)
            return 201, self._render(op, self.account.objects[op.kind][key])
        if op.action == "List":
            return 200, self._page(op, parent, query)
        if op.kind == "Recording":
            trunk = self.account.get("Trunk", params["TrunkSid"], {})
            trunk["recording"] = (
                {**trunk["recording"], **values} if op.action == "Update" else trunk["recording"]
            )
            return 200, dict(trunk["recording"])
        record = self.account.get(op.kind, params["Sid"], parent)
        if op.action == "Fetch":
            return 200, self._render(op, record)
        if op.action == "Update":
            self.account.update(op.kind, record, values)
            return 200, self._render(op, record)
        if op.kind == "IncomingPhoneNumber":
            self.account.forbidden.append(f"release {record['phone_number']}")
            raise TwilioError(403, 20403, "releasing a number is not something the operator does")
        self.account.check_deletable(op.kind, record)
        self.account.delete(op.kind, _key(op.kind, record))
        return 204, None

    # ---- what a response looks like -------------------------------------------------

    def _path_of(self, op: Operation, record: Mapping[str, Any]) -> str:
        """The instance's path, from its template, with this record's SIDs."""
        template = next(
            o.template for o in self.operations if o.kind == op.kind and o.action == "Fetch"
        )

        def value(name: str) -> str:
            if name == "Sid":
                return str(record["sid"])
            if name == "AccountSid":
                return self.account.account_sid
            return str(record.get(_camel_to_snake(name)) or "")

        return re.sub(r"\{(\w+)\}", lambda m: value(m[1]), template)

    def _render(self, op: Operation, record: Mapping[str, Any]) -> dict[str, Any]:
        schema = self.schemas[op.schema]
        v1 = op.base.startswith("https://trunking")
        path = self._path_of(op, record)
        out: dict[str, Any] = {}
        for name, prop in schema["properties"].items():
            value = record.get(name)
            if name in ("date_created", "date_updated") and value is not None:
                value = _iso(value) if v1 else _rfc2822(value)
            elif name == "url":
                value = op.base + path
            elif name == "uri":
                value = path
            elif name == "links" and v1:
                value = {
                    child: f"{op.base}{path}/{segment}"
                    for child, segment in _LINKS.get(op.kind, {}).items()
                }
            elif name == "subresource_uris":
                value = {
                    child: path.removesuffix(".json") + f"/{segment}.json"
                    for child, segment in _LINKS.get(op.kind, {}).items()
                }
            elif name in ("auth_type", "auth_type_set") and op.kind == "Trunk":
                kinds = [
                    label
                    for label, child in (
                        ("IP_ACL", "IpAccessControlList"),
                        ("CREDENTIAL_LIST", "CredentialList"),
                    )
                    if any(
                        r["trunk_sid"] == record["sid"]
                        for r in self.account.objects.get(child, {}).values()
                    )
                ]
                value = ",".join(kinds) if name == "auth_type" else kinds
            elif value is None:
                value = _default(prop, name, self.schemas)
            out[name] = value
        return out

    def _page(
        self, op: Operation, parent: Mapping[str, str], query: Mapping[str, str]
    ) -> dict[str, Any]:
        size = int(query.get("PageSize", 50))
        if not 1 <= size <= 1000:
            raise TwilioError(400, 21000, "PageSize must be between 1 and 1000")
        offset = int(query.get("PageToken", "PT0").removeprefix("PT") or 0)
        page = int(query.get("Page", 0))
        records = [
            r
            for r in sorted(
                self.account.objects.get(op.kind, {}).values(),
                key=lambda r: (r["date_created"], r["sid"]),
            )
            if all(r.get(_camel_to_snake(k)) == v for k, v in parent.items()) and _matches(r, query)
        ]
        shown = records[offset : offset + size]
        items = [self._render(op, r) for r in shown]
        path = re.sub(r"\{AccountSid\}", self.account.account_sid, op.template)
        for key, value in parent.items():
            path = path.replace("{" + key + "}", value)

        def at(token: int | None, number: int) -> str | None:
            if token is None:
                return None
            more = "".join(
                f"&{k}={v}" for k, v in query.items() if k in ("PhoneNumber", "FriendlyName")
            )
            return f"{path}?PageSize={size}&Page={number}&PageToken=PT{token}{more}"

        following = offset + size if offset + size < len(records) else None
        previous = max(offset - size, 0) if offset else None
        here = at(offset, page)
        if op.base.startswith("https://trunking"):
            meta = {
                "page": page,
                "page_size": size,
                "first_page_url": op.base + str(at(0, 0)),
                "previous_page_url": op.base + p if (p := at(previous, page - 1)) else None,
                "url": op.base + str(here),
                "next_page_url": op.base + n if (n := at(following, page + 1)) else None,
                "key": op.list_key,
            }
            return {str(op.list_key): items, "meta": meta}
        return {
            str(op.list_key): items,
            "page": page,
            "page_size": size,
            "start": offset,
            "end": offset + max(len(items) - 1, 0),
            "uri": here,
            "first_page_uri": at(0, 0),
            "previous_page_uri": at(previous, page - 1),
            "next_page_uri": at(following, page + 1),
        }

    # ---- HTTP -------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0: any free port); the base URL to reach it."""
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if standin.faults.unreachable and not self.path.startswith(ADMIN):
                    self.close_connection = True  # no answer at all
                    return
                if self.path.startswith(ADMIN):
                    status, answer = standin.admin(self.command, self.path, body)
                else:
                    status, answer = standin.handle(
                        self.command, self.path, dict(self.headers), body
                    )
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{host}:{self.server.server_address[1]}"
        return self.url

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _key(kind: str, record: Mapping[str, Any]) -> str:
    """Where a record is kept: by SID, or by trunk and SID for a trunk's list associations."""
    return f"{record['trunk_sid']}/{record['sid']}" if kind in ASSOCIATIONS else str(record["sid"])


ADMIN = "/__standin/"  # the test-only API; Twilio's paths start /v1/ or /2010-04-01/

# Child collections of a resource: name in `links`/`subresource_uris` -> path segment.
_LINKS: dict[str, dict[str, str]] = {
    "Trunk": {
        "origination_urls": "OriginationUrls",
        "credential_lists": "CredentialLists",
        "ip_access_control_lists": "IpAccessControlLists",
        "phone_numbers": "PhoneNumbers",
        "recording": "Recording",
    },
    "SipCredentialList": {"credentials": "Credentials"},
    "SipIpAccessControlList": {"ip_addresses": "IpAddresses"},
}


def _typed(prop: Mapping[str, Any], text: str) -> Any:
    kind = prop.get("type")
    if kind == "integer":
        return int(text)
    if kind == "boolean":
        return text.lower() == "true"
    return text


def _default(prop: Mapping[str, Any], name: str, schemas: Mapping[str, Any]) -> Any:
    """A field the record does not set: null where the spec allows it, else a valid value."""
    if name in EMPTY_AS_UNSET:
        return ""
    if prop.get("format") == "http-method":
        return "POST"  # Twilio's default method for its callbacks
    if prop.get("nullable"):
        return None
    ref = prop.get("$ref", "").rsplit("/", 1)[-1]
    if ref:
        return schemas[ref]["enum"][0]
    return {"integer": 0, "boolean": False, "string": "", "array": [], "object": {}}[prop["type"]]


def _matches(record: Mapping[str, Any], query: Mapping[str, str]) -> bool:
    """The list filters of IncomingPhoneNumbers: PhoneNumber is a partial match (`*` a
    wildcard), as Twilio documents; FriendlyName likewise."""
    for key, field_name in (("PhoneNumber", "phone_number"), ("FriendlyName", "friendly_name")):
        wanted = query.get(key)
        if wanted is None:
            continue
        pattern = ".*".join(re.escape(part) for part in wanted.split("*"))
        if not re.search(pattern, str(record.get(field_name) or "")):
            return False
    return True


def _unset_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: None if k in EMPTY_AS_UNSET and v == "" else _unset_empty(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_unset_empty(v) for v in value]
    return value


def _reason(error: BaseException) -> str:
    causes: Iterator[BaseException] = iter(getattr(error, "schema_errors", None) or [])
    details = "; ".join(str(getattr(c, "message", c))[:200] for c in causes)
    return f"{type(error).__name__}: {error}" + (f" ({details})" if details else "")


class StandInHttpClient(TwilioHttpClient):
    """Twilio's documented way to point its SDK elsewhere: its HTTP client, with every Twilio
    host (paging URLs included) rewritten to the stand-in at `base`."""

    def __init__(self, base: str) -> None:
        super().__init__(timeout=10)
        self.base = urlsplit(base)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        moved = urlunsplit((self.base.scheme, self.base.netloc, parts.path, parts.query, ""))
        return super().request(method, moved, *args, **kwargs)
