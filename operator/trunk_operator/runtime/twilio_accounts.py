"""The TwilioAccounts the watches report, and one Twilio API client per account.

A client is made from the account's Secret (an API key `apiKeySid` + `apiKeySecret`, or the
account's `authToken`) when first needed, and made again when that Secret changes (a rotated
key is used from the next call on). An account's status says whether Twilio accepts its
credentials, from its own check and from what the trunks' syncs met since.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from trunk_operator.core.models import TwilioAccountSpec
from trunk_operator.core.status import timestamp, with_transition_times
from trunk_operator.kube.api import Kube
from trunk_operator.kube.client import KubeError
from trunk_operator.runtime.blocking import BlockingCalls
from trunk_operator.twilio.client import AccountCredentials, TwilioApi, TwilioError, Unauthorized

log = logging.getLogger(__name__)

ACCOUNTS = "twilioaccounts"
Key = tuple[str, str]  # (namespace, name)


class AccountProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Account:
    spec: TwilioAccountSpec | None
    problem: str  # why the spec is invalid ("" when it is not)
    generation: int | None
    status: dict[str, Any]  # as last written (or first seen)


class TwilioAccounts:
    def __init__(self, kube: Kube, calls: BlockingCalls, base_url: str | None = None) -> None:
        self.kube, self.calls, self.base_url = kube, calls, base_url
        self.accounts: dict[Key, _Account] = {}
        self.clients: dict[Key, tuple[str, TwilioApi]] = {}  # Secret version it was made from
        self.verdicts: dict[Key, tuple[bool, str, str]] = {}  # accepted, reason, message

    def upsert(self, body: Mapping[str, Any]) -> Key:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        try:
            spec, problem = TwilioAccountSpec.model_validate(body.get("spec") or {}), ""
        except ValidationError as error:
            spec, problem = None, "; ".join(e["msg"] for e in error.errors())[:500]
        known = self.accounts.get(key)
        status = known.status if known else dict(body.get("status") or {})
        self.accounts[key] = _Account(spec, problem, meta.get("generation"), status)
        return key

    async def forget(self, key: Key) -> None:
        self.accounts.pop(key, None)
        self.verdicts.pop(key, None)
        if (client := self.clients.pop(key, None)) is not None:
            await client[1].close()

    def secret_of(self, key: Key) -> str | None:
        account = self.accounts.get(key)
        return account.spec.secret_name if account and account.spec else None

    def resync_seconds(self, key: Key) -> float:
        account = self.accounts.get(key)
        return float(account.spec.resync_seconds) if account and account.spec else 300.0

    async def api(self, key: Key) -> TwilioApi:
        """The account's client, or AccountProblem saying why there is none."""
        account = self.accounts.get(key)
        if account is None:
            raise AccountProblem("AccountNotFound", f"TwilioAccount {key[1]} does not exist")
        if account.spec is None:
            raise AccountProblem("AccountInvalid", f"TwilioAccount {key[1]}: {account.problem}")
        spec = account.spec
        secret = await self.calls.run(self.kube.read_secret, key[0], spec.secret_name)
        if secret is None:
            raise AccountProblem("AccountSecretNotFound", f"Secret {spec.secret_name} not found")
        data = secret.data
        if data.get("apiKeySid") and data.get("apiKeySecret"):
            username, password = data["apiKeySid"], data["apiKeySecret"]
        elif data.get("authToken"):
            username, password = spec.account_sid, data["authToken"]
        else:
            raise AccountProblem(
                "AccountSecretKeyMissing",
                f"Secret {spec.secret_name} has neither apiKeySid and apiKeySecret nor authToken",
            )
        made = self.clients.get(key)
        if made is not None and made[0] == secret.resource_version:
            return made[1]
        if made is not None:
            await made[1].close()
        credentials = AccountCredentials(
            spec.account_sid, username, password, spec.region, spec.edge
        )
        client = TwilioApi(credentials, base_url=self.base_url)
        self.clients[key] = (secret.resource_version, client)
        return client

    async def check(self, key: Key) -> None:
        """Whether Twilio accepts the account's credentials (one call), into its status."""
        try:
            await (await self.api(key)).check()
            self.met(key, None)
        except AccountProblem as problem:
            self.verdicts[key] = (False, problem.reason, str(problem))
        except TwilioError as error:
            self.met(key, error)

    def met(self, key: Key, error: TwilioError | None) -> None:
        """What a call with the account's credentials met: None when Twilio took them."""
        if error is None:
            self.verdicts[key] = (True, "CredentialsAccepted", "Twilio accepts the credentials")
        elif isinstance(error, Unauthorized):
            self.verdicts[key] = (False, "TwilioCredentialsRefused", str(error))
        elif key not in self.verdicts:
            self.verdicts[key] = (False, "TwilioUnreachable", str(error))

    async def write_status(self, key: Key, trunks: int) -> None:
        account = self.accounts.get(key)
        verdict = self.verdicts.get(key)
        if account is None or verdict is None:
            return
        accepted, reason, message = verdict
        condition = {
            "type": "Ready",
            "status": "True" if accepted else "False",
            "reason": reason,
            "message": message[:1000],
            "observedGeneration": account.generation,
        }
        status: dict[str, Any] = {
            "observedGeneration": account.generation,
            "conditions": [condition],
            "reason": reason,
            "trunks": trunks,
        }
        if {**status, "conditions": [dict(c) for c in status["conditions"]]} == _bare(
            account.status
        ):
            return
        final = with_transition_times(status, account.status, timestamp())
        try:
            await self.calls.api_call(self.kube.patch_status, ACCOUNTS, key[0], key[1], final)
            account.status = final
        except KubeError as error:
            log.warning("TwilioAccount %s/%s: status not written: %s", *key, error)


def _bare(status: Mapping[str, Any]) -> dict[str, Any]:
    """A written status without its transition times, to compare with a new one."""
    conditions = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"}
        for c in status.get("conditions", [])
    ]
    return {**status, "conditions": conditions}
