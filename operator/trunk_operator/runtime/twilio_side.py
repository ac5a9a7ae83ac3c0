"""The Twilio end of each opted-in trunk (spec.twilio): reconciled, and rotated with Asterisk's.

A trunk's sync (`_sync`) looks at Twilio's end and makes it what the spec says: the trunk found
by its domain or created, the operator's credential list attached to it holding the credential
Asterisk uses, and the optional IP access control list (`twilio_trunk`). It runs when the trunk,
its Secret or its account changes, while a rotation waits, and every `resyncSeconds` (a
credential deleted in Twilio's console is put back; a password changed there cannot be seen:
Twilio never shows one).

Asterisk never uses the trunk's Secret directly: it uses the operator's Secret of the
credential Twilio holds (`twilio_credential_secret`). A new password in the trunk's Secret (a
vault's rotation) goes to Twilio first, under the next generation's username; Asterisk
switches once Twilio has had it for `credentialPropagationSeconds`; the previous credential is
removed `rotationGraceSeconds` after every pod serves the new one. At no moment does Asterisk
use a credential Twilio does not hold. Restart-safe: the operator's Secret says what Asterisk
uses; a rotation cut short is taken up again (the new credential's password is set again, and
the propagation time counted from then).

What each sync found goes to the store (`status.TwilioView`), from which the status writer
writes the TwilioSynced condition and status.twilio.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from trunk_operator.core.models import TwilioTrunkSpec, twilio_credential_secret
from trunk_operator.core.plan import TRUNK
from trunk_operator.core.status import TwilioView
from trunk_operator.core.twilio import (
    ActiveCredential,
    credential_username,
    owner_tag,
    password_problem,
)
from trunk_operator.kube.api import Kube, NotOurs, Owner
from trunk_operator.runtime.blocking import BlockingCalls
from trunk_operator.runtime.store import Store
from trunk_operator.runtime.twilio_accounts import AccountProblem, Key, TwilioAccounts
from trunk_operator.runtime.twilio_trunk import (
    Conflict,
    ensure_credential,
    ensure_credential_list,
    ensure_ip_access,
    ensure_trunk,
)
from trunk_operator.twilio.client import CredentialRecord, TwilioApi, TwilioError, Unauthorized

log = logging.getLogger(__name__)

WAITING_LOOK = 2.0  # seconds between looks while a rotation waits for Asterisk
RETRY_FIRST, RETRY_MAX = 5.0, 300.0  # after a failed sync, doubling, with jitter
SYNCS_AT_ONCE = 8


class TwilioEvents(Protocol):
    """What the Twilio side tells its owner (the controller), and asks of it."""

    async def twilio_changed(self, namespace: str) -> None:
        """A trunk's Twilio view changed: statuses."""
        ...

    def credential_written(self, namespace: str, secret: str) -> None:
        """The operator's Secret of a trunk's credential changed: plan again."""
        ...

    def served_secret(self, namespace: str, trunk: str) -> str | None:
        """The credentials Secret version every pod of the trunk serves (last Ready with)."""
        ...

    def twilio_status(self, namespace: str, trunk: str) -> Mapping[str, Any]:
        """The trunk's status.twilio as last written (or as first seen): the SIDs found."""
        ...


@dataclass(frozen=True)
class _Pending:
    """A rotation's credential, once Twilio took it."""

    generation: int
    username: str
    password_sha: str
    since: float


@dataclass
class _Trunk:
    due: float = 0.0
    pending: _Pending | None = None
    served_since: tuple[str, float] | None = None  # (Secret version, first seen served)
    failures: int = 0


@dataclass
class _Found:
    """What a sync found and did, for the view and the next steps."""

    fields: dict[str, Any] = field(default_factory=dict)
    held: dict[str, CredentialRecord] = field(default_factory=dict)
    list_sid: str = ""


class TwilioSide:
    def __init__(
        self,
        kube: Kube,
        calls: BlockingCalls,
        store: Store,
        events: TwilioEvents,
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube, self.calls, self.store, self.events = kube, calls, store, events
        self.accounts = TwilioAccounts(kube, calls, base_url)
        self.clock = clock
        self.trunks: dict[Key, _Trunk] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    # ---- inputs -------------------------------------------------------------------------

    def touch(self, namespace: str, trunk: str) -> None:
        """Sync the trunk now (a trunk that does not opt in is dropped by its sync)."""
        self.trunks.setdefault((namespace, trunk), _Trunk()).due = 0.0
        self.wake.set()

    def secret_changed(self, namespace: str, name: str) -> None:
        for (ns, account), _ in list(self.accounts.accounts.items()):
            if ns == namespace and self.accounts.secret_of((ns, account)) == name:
                self.account_changed(ns, account)
        for (ns, trunk), spec in self._specs(namespace):
            if spec.credentials.secret_name == name:
                self.touch(ns, trunk)

    def upsert_account(self, body: Any) -> None:
        namespace, name = self.accounts.upsert(body)
        self.account_changed(namespace, name)

    async def forget_account(self, namespace: str, name: str) -> None:
        await self.accounts.forget((namespace, name))
        self.account_changed(namespace, name)

    def account_changed(self, namespace: str, name: str) -> None:
        self.trunks.setdefault((namespace, f"{_ACCOUNT}{name}"), _Trunk()).due = 0.0
        for (ns, trunk), spec in self._specs(namespace):
            if spec.twilio is not None and spec.twilio.account_ref.name == name:
                self.touch(ns, trunk)
        self.wake.set()

    def _specs(self, namespace: str) -> list[tuple[Key, TwilioTrunkSpec]]:
        plan = self.store.plans.get(namespace)
        specs = plan.twilio_specs.items() if plan else ()
        return [((namespace, name), spec) for name, spec in specs]

    # ---- the loop -----------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="twilio")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for key in list(self.accounts.clients):
            await self.accounts.forget(key)

    async def _loop(self) -> None:
        while True:
            self.wake.clear()
            now = self.clock()
            due = sorted((t.due, k) for k, t in self.trunks.items() if t.due <= now)
            keys = [k for _, k in due[:SYNCS_AT_ONCE]]
            if keys:
                changed = await asyncio.gather(*(self._run(k) for k in keys))
                for namespace in {k[0] for k, c in zip(keys, changed, strict=True) if c}:
                    await self.events.twilio_changed(namespace)
                continue
            upcoming = min((t.due for t in self.trunks.values()), default=now + 60)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(0.05, upcoming - now))

    async def _run(self, key: Key) -> bool:
        """One sync of a trunk (or an account's check); True when its view changed."""
        if key[1].startswith(_ACCOUNT):
            account = (key[0], key[1].removeprefix(_ACCOUNT))
            self.trunks.pop(key, None)
            await self.accounts.check(account)
            await self._account_status(account)
            return False
        memory = self.trunks[key]
        before = self.store.twilio.get(key)
        try:
            view = await self._sync(key, memory)
            memory.failures = 0
        except (TwilioError, AccountProblem, Conflict) as error:
            view = self._failed(key, memory, error)
        except Exception as error:  # a bug must not stop the other trunks' syncs
            log.exception("Twilio side of %s/%s", *key)
            view = self._failed(key, memory, error)
        if view is None:
            self.trunks.pop(key, None)
            self.store.twilio.pop(key, None)
        else:
            self.store.twilio[key] = view
        if (before is None) != (view is None):  # opted in or out: its account counts it
            self._count(key[0])
        return view != before

    def _count(self, namespace: str) -> None:
        """The accounts of the namespace write their status again (their trunks)."""
        for ns, name in list(self.accounts.accounts):
            if ns == namespace:
                self.trunks.setdefault((ns, f"{_ACCOUNT}{name}"), _Trunk()).due = 0.0

    def _failed(self, key: Key, memory: _Trunk, error: Exception) -> TwilioView:
        memory.failures += 1
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (memory.failures - 1))
        memory.due = self.clock() + delay * (0.5 + random.random() / 2)
        reason = getattr(error, "reason", None) or (
            "TwilioCredentialsRefused"
            if isinstance(error, Unauthorized)
            else "TwilioUnreachable"
            if isinstance(error, TwilioError)
            else "TwilioError"
        )
        before = self.store.twilio.get(key)
        fields = dict(before.fields) if before else {}
        return TwilioView(False, reason, str(error)[:500], bool(before and before.serves), fields)

    async def _account_status(self, account: Key) -> None:
        users = [
            k for k, spec in self._specs(account[0])
            if spec.twilio is not None and spec.twilio.account_ref.name == account[1]
        ]  # fmt: skip
        await self.accounts.write_status(account, len(users))

    # ---- one trunk ----------------------------------------------------------------------

    async def _sync(self, key: Key, memory: _Trunk) -> TwilioView | None:
        namespace, name = key
        plan = self.store.plans.get(namespace)
        spec = plan.twilio_specs.get(name) if plan else None
        tracked = self.store.crs.get(namespace, {}).get(f"{TRUNK}/{name}")
        if spec is None or spec.twilio is None or tracked is None or tracked.deleting:
            return None
        account = (namespace, spec.twilio.account_ref.name)
        api = await self.accounts.api(account)
        secret = await self.calls.run(
            self.kube.read_secret, namespace, spec.credentials.secret_name
        )
        active_read = await self.calls.run(
            self.kube.read_secret, namespace, twilio_credential_secret(name)
        )
        active = ActiveCredential.from_secret(active_read.data) if active_read else None
        try:
            found = await self._twilio_end(api, key, spec, active)
        except TwilioError as error:
            self.accounts.met(account, error)
            raise
        self.accounts.met(account, None)
        memory.due = self.clock() + self.accounts.resync_seconds(account)
        keys = (spec.credentials.username_key, spec.credentials.password_key)
        if secret is None or not all(secret.data.get(k) for k in keys):
            what = "does not exist" if secret is None else f"has no {' or '.join(keys)}"
            problem = f"Secret {spec.credentials.secret_name} {what}"
            return TwilioView(False, "SecretNotFound", problem, active is not None, found.fields)
        base, password = secret.data[keys[0]], secret.data[keys[1]]
        if active is None or active.password != password:
            return await self._rotate(key, memory, spec, api, found, active, base, password)
        memory.pending = None
        version = active_read.resource_version if active_read else ""
        await self._clean_up(key, memory, spec, api, found, active, version)
        message = f"Twilio holds credential {active.username} (generation {active.generation})"
        return TwilioView(True, "Synced", message, True, found.fields)

    async def _twilio_end(
        self, api: TwilioApi, key: Key, spec: TwilioTrunkSpec, active: ActiveCredential | None
    ) -> _Found:
        """Twilio's trunk, credential list and IP access list as the spec says; the active
        credential put back if it went missing."""
        assert spec.twilio is not None
        tag = owner_tag(*key)
        before = self.store.twilio.get(key)
        known = dict(before.fields) if before else dict(self.events.twilio_status(*key))
        trunk = await ensure_trunk(
            api, tag, spec.termination_host, spec.secure, known.get("trunkSid")
        )
        credential_list = await ensure_credential_list(
            api, tag, trunk.sid, known.get("credentialListSid")
        )
        for what, sid, now in (
            ("trunk", known.get("trunkSid"), trunk.sid),
            ("credential list", known.get("credentialListSid"), credential_list.sid),
        ):
            if sid and sid != now:
                gone = f"Twilio {what} {sid} was gone (deleted in the console?): {now} now"
                await self._event(key, "Warning", "TwilioObjectReplaced", gone)
        held = {c.username: c for c in await api.credentials(credential_list.sid)}
        acl = await ensure_ip_access(
            api, tag, trunk.sid, spec.twilio.ip_access_control, known.get("ipAccessControlListSid")
        )
        if active is not None and active.username not in held:
            await ensure_credential(
                api, credential_list.sid, held, active.username, active.password, False
            )
            missing = f"credential {active.username} was missing at Twilio: added again"
            await self._event(key, "Warning", "TwilioCredentialRestored", missing)
        fields = {
            "trunkSid": trunk.sid,
            "credentialListSid": credential_list.sid,
            "ipAccessControlListSid": acl.sid if acl else None,
            "username": active.username if active else None,
            "generation": active.generation if active else None,
            "rotation": None,  # a merge patch keeps what a status does not say: cleared here
        }
        return _Found(fields, held, credential_list.sid)

    async def _rotate(
        self,
        key: Key,
        memory: _Trunk,
        spec: TwilioTrunkSpec,
        api: TwilioApi,
        found: _Found,
        active: ActiveCredential | None,
        base: str,
        password: str,
    ) -> TwilioView:
        """The Secret's password is not the one Asterisk uses: to Twilio under the next
        username, then (after the propagation time) to Asterisk."""
        assert spec.twilio is not None
        if problem := password_problem(password):
            message = f"{problem}: neither Twilio nor Asterisk changed"
            memory.pending = None
            return TwilioView(False, "WeakPassword", message, False, found.fields)
        generation = active.generation + 1 if active else 1
        username = credential_username(base, generation)
        sha = hashlib.sha256(password.encode()).hexdigest()
        pending = memory.pending
        if pending is None or (pending.username, pending.password_sha) != (username, sha):
            await ensure_credential(api, found.list_sid, found.held, username, password, True)
            pending = memory.pending = _Pending(generation, username, sha, self.clock())
            await self._event(key, "Normal", "TwilioCredentialAdded",
                        f"credential {username} added at Twilio for the new password")  # fmt: skip
        switch_at = pending.since + spec.twilio.credential_propagation_seconds
        rotation = {"generation": generation, "username": username, "phase": "Propagating"}
        fields = {**found.fields, "rotation": rotation}
        if self.clock() < switch_at:
            memory.due = switch_at
            left = switch_at - self.clock()
            message = f"credential {username} is at Twilio; Asterisk switches to it in {left:.0f} s"
            return TwilioView(True, "Rotating", message, False, fields)
        secret = ActiveCredential(username, password, generation)
        tracked = self.store.crs[key[0]][f"{TRUNK}/{key[1]}"]
        owner = Owner(TRUNK, key[1], key[0], tracked.uid)
        try:
            await self.calls.api_call(
                self.kube.write_credential_secret,
                owner,
                twilio_credential_secret(key[1]),
                secret.as_secret(),
            )
        except NotOurs as error:
            raise Conflict("CredentialSecretTaken", str(error)) from None
        memory.pending, memory.served_since = None, None
        memory.due = self.clock() + WAITING_LOOK
        self.events.credential_written(key[0], twilio_credential_secret(key[1]))
        switched = f"Asterisk switches to credential {username} (generation {generation})"
        await self._event(key, "Normal", "TwilioCredentialSwitched", switched)
        fields = {**found.fields, "username": username, "generation": generation}
        message = f"Asterisk switches to credential {username}"
        return TwilioView(True, "Rotating", message, False, fields)

    async def _clean_up(
        self,
        key: Key,
        memory: _Trunk,
        spec: TwilioTrunkSpec,
        api: TwilioApi,
        found: _Found,
        active: ActiveCredential,
        version: str,
    ) -> None:
        """Credentials of earlier generations go once every pod has served the active one
        for the grace time."""
        assert spec.twilio is not None
        old = [c for u, c in found.held.items() if u != active.username]
        if not old:
            return
        if self.events.served_secret(*key) != version:
            memory.due = min(memory.due, self.clock() + WAITING_LOOK)
            return
        if memory.served_since is None or memory.served_since[0] != version:
            memory.served_since = (version, self.clock())
        remove_at = memory.served_since[1] + spec.twilio.rotation_grace_seconds
        if self.clock() < remove_at:
            memory.due = min(memory.due, remove_at)
            return
        for credential in old:
            await api.delete_credential(found.list_sid, credential.sid)
            await self._event(key, "Normal", "TwilioCredentialRemoved",
                        f"credential {credential.username} removed from Twilio")  # fmt: skip

    async def _event(self, key: Key, kind: str, reason: str, message: str) -> None:
        """An Event on the trunk, and the same line in the log."""
        log.info("%s/%s: %s", key[0], key[1], message)
        tracked = self.store.crs.get(key[0], {}).get(f"{TRUNK}/{key[1]}")
        if tracked is not None:
            owner = Owner(TRUNK, key[1], key[0], tracked.uid)
            await self.calls.api_call(self.kube.event, owner, kind, reason, message)


_ACCOUNT = "\0account:"  # the key of an account's check among the trunks' syncs
