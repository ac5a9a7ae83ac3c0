"""The steps that make Twilio's end of one trunk what its spec says, each safe to repeat.

Twilio has no idempotency keys: every object the operator creates carries the trunk's owner
tag in its FriendlyName, is looked for before it is created, and after a create whose answer
was lost (`Ambiguous`) it is looked for again rather than created twice. Nothing without the
tag is changed, but the trunk found by its domain (adopted: its FriendlyName becomes the tag),
and nothing is ever deleted but credentials and IP addresses in the operator's own lists.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from trunk_operator.core.twilio import is_owner_tag
from trunk_operator.twilio.client import (
    Ambiguous,
    CredentialListRecord,
    CredentialRecord,
    IpAccessControlListRecord,
    IpAddressRecord,
    TrunkRecord,
    TwilioApi,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Conflict(Exception):
    """Twilio's end cannot be made what the spec says without touching what is not ours."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def _create_once(
    create: Callable[[], Awaitable[_T]], find: Callable[[], Awaitable[_T | None]]
) -> _T:
    """`create`, unless `find` finds it (again, after a create whose answer was lost)."""
    try:
        return await create()
    except Ambiguous:
        found: _T | None = await find()
        if found is None:
            raise
        return found


async def ensure_trunk(
    api: TwilioApi, tag: str, domain: str, secure: bool, known: str | None = None
) -> TrunkRecord:
    """The trunk with this domain: adopted when no other CR owns it, else created. `known`:
    its SID when a sync found it before (one fetch, not a listing of the account's trunks)."""

    async def find() -> TrunkRecord | None:
        return next((t for t in await api.trunks() if t.domain_name == domain), None)

    trunk = await api.trunk(known) if known else None
    if trunk is None or trunk.domain_name != domain:
        trunk = await find()
    if trunk is None:
        return await _create_once(lambda: api.create_trunk(tag, domain, secure), find)
    if is_owner_tag(trunk.friendly_name) and trunk.friendly_name != tag:
        raise Conflict(
            "TwilioTrunkOwnedElsewhere",
            f"Twilio trunk {trunk.sid} ({domain}) belongs to {trunk.friendly_name}",
        )
    if (trunk.friendly_name, trunk.secure) != (tag, secure):
        log.info("Twilio trunk %s (%s): tagged %s, secure %s", trunk.sid, domain, tag, secure)
        trunk = await api.update_trunk(trunk.sid, friendly_name=tag, secure=secure)
    return trunk


async def ensure_credential_list(
    api: TwilioApi, tag: str, trunk_sid: str, known: str | None = None
) -> CredentialListRecord:
    """The operator's credential list of the trunk, attached to it (lists of others stay)."""

    async def find() -> CredentialListRecord | None:
        owned = [c for c in await api.credential_lists() if c.friendly_name == tag]
        return min(owned, key=lambda c: c.sid) if owned else None

    found = await api.credential_list(known) if known else None
    if found is None or found.friendly_name != tag:
        found = await find()
    if found is None:
        found = await _create_once(lambda: api.create_credential_list(tag), find)
    if found.sid not in await api.trunk_credential_lists(trunk_sid):
        try:
            await api.associate_credential_list(trunk_sid, found.sid)
        except Ambiguous:
            if found.sid not in await api.trunk_credential_lists(trunk_sid):
                raise
    return found


async def ensure_credential(
    api: TwilioApi,
    list_sid: str,
    held: dict[str, CredentialRecord],
    username: str,
    password: str,
    set_password: bool,
) -> CredentialRecord:
    """The credential `username` in the list, with `password`: created when missing, its
    password set again when `set_password` (Twilio never shows a password: what it holds for
    an existing one is unknown). `held`: the list's credentials by username, kept current."""

    async def find() -> CredentialRecord | None:
        held.clear()
        held.update({c.username: c for c in await api.credentials(list_sid)})
        return held.get(username)

    credential = held.get(username)
    if credential is None:
        credential = await _create_once(
            lambda: api.create_credential(list_sid, username, password), find
        )
        held[username] = credential
    elif set_password:
        await api.update_credential_password(list_sid, credential.sid, password)
    return credential


async def ensure_ip_access(
    api: TwilioApi, tag: str, trunk_sid: str, cidrs: Sequence[str], known: str | None = None
) -> IpAccessControlListRecord | None:
    """The operator's IP access control list of the trunk holding exactly `cidrs` (none: no
    list is made; one made before, `known`, is emptied and no longer applies to the trunk)."""

    async def find() -> IpAccessControlListRecord | None:
        owned = [a for a in await api.ip_access_control_lists() if a.friendly_name == tag]
        return min(owned, key=lambda a: a.sid) if owned else None

    found = await api.ip_access_control_list(known) if known else None
    if found is not None and found.friendly_name != tag:
        found = None
    if found is None and cidrs:
        found = await find()
    if found is None and not cidrs:
        return None
    acl = found
    if acl is None:
        acl = await _create_once(lambda: api.create_ip_access_control_list(tag), find)
    wanted = {_cidr(c) for c in cidrs}
    addresses = await api.ip_addresses(acl.sid)
    have = {(a.ip_address, a.cidr_prefix_length): a for a in addresses}
    for (ip, prefix), address in have.items():
        if (ip, prefix) not in wanted:
            await api.delete_ip_address(acl.sid, address.sid)
    for ip, prefix in sorted(wanted - set(have)):
        await _add_address(api, acl.sid, f"{tag} {ip}/{prefix}", ip, prefix)
    attached = acl.sid in await api.trunk_ip_access_control_lists(trunk_sid)
    if wanted and not attached:
        await api.associate_ip_access_control_list(trunk_sid, acl.sid)
    if not wanted and attached:
        await api.dissociate_ip_access_control_list(trunk_sid, acl.sid)
    return acl


async def _add_address(api: TwilioApi, acl_sid: str, name: str, ip: str, prefix: int) -> None:
    await _create_once(
        lambda: api.create_ip_address(acl_sid, name, ip, prefix),
        lambda: _address(api, acl_sid, ip, prefix),
    )


async def _address(api: TwilioApi, acl_sid: str, ip: str, prefix: int) -> IpAddressRecord | None:
    addresses = await api.ip_addresses(acl_sid)
    return next(
        (a for a in addresses if (a.ip_address, a.cidr_prefix_length) == (ip, prefix)), None
    )


def _cidr(text: str) -> tuple[str, int]:
    network = ipaddress.ip_network(text, strict=False)
    return str(network.network_address), network.prefixlen
