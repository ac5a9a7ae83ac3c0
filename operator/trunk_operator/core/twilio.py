"""The Twilio end of a trunk, as values: what the operator owns there and how it names it,
Twilio's password rule, and the credential a rotation moves to.

Twilio has no idempotency keys and no unique names but a trunk's domain: what the operator
creates carries an owner tag in its FriendlyName (`owner_tag`), and is found again by listing.
A trunk is found by its domain; one whose FriendlyName is another CR's tag is not ours.

A rotation never changes a password in place (Twilio documents neither how fast a change takes
effect nor which of two passwords of one username wins): the new password goes in under a new
username (`credential_username`), Asterisk switches once Twilio has had it for the
propagation time, and the previous one goes once every pod serves the new one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

TAG_PREFIX = "trunkop:"
MAX_FRIENDLY_NAME = 64  # trunks and credential lists
MAX_USERNAME = 32
MIN_PASSWORD = 12


def owner_tag(namespace: str, trunk: str) -> str:
    """The FriendlyName of what the operator creates for a trunk: `trunkop:<ns>/<name>`, or
    when that is too long, its start and a hash of the whole."""
    tag = f"{TAG_PREFIX}{namespace}/{trunk}"
    if len(tag) <= MAX_FRIENDLY_NAME:
        return tag
    digest = hashlib.sha256(tag.encode()).hexdigest()[:16]
    return f"{tag[: MAX_FRIENDLY_NAME - 17]}~{digest}"


def is_owner_tag(friendly_name: str) -> bool:
    return friendly_name.startswith(TAG_PREFIX)


def password_problem(password: str) -> str | None:
    """Why Twilio would refuse this SIP credential password (its documented rule: at least 12
    characters, a digit, an upper and a lower case letter), or None."""
    missing = [
        what
        for what, pattern in (
            ("a digit", r"[0-9]"),
            ("an upper case letter", r"[A-Z]"),
            ("a lower case letter", r"[a-z]"),
        )
        if not re.search(pattern, password)
    ]
    if len(password) < MIN_PASSWORD:
        missing.insert(0, f"at least {MIN_PASSWORD} characters")
    if not missing:
        return None
    return "Twilio refuses SIP passwords without " + ", ".join(missing)


def credential_username(base: str, generation: int) -> str:
    """The username of a credential generation: the Secret's username, `-<generation>`."""
    suffix = f"-{generation}"
    return base[: MAX_USERNAME - len(suffix)] + suffix


@dataclass(frozen=True)
class ActiveCredential:
    """The credential Asterisk uses, which Twilio holds (the operator's Secret of it), and a
    rotation under way to the next one."""

    username: str
    password: str
    generation: int
    next_password: str | None = None  # the rotation's, once its credential is at Twilio
    next_since: float | None = None  # when Twilio took it (epoch seconds)

    def __repr__(self) -> str:
        return f"ActiveCredential({self.username!r}, generation {self.generation})"

    def as_secret(self) -> dict[str, str]:
        data = {
            "username": self.username,
            "password": self.password,
            "generation": str(self.generation),
        }
        if self.next_password is not None and self.next_since is not None:
            data["nextPassword"] = self.next_password
            data["nextSince"] = f"{self.next_since:.3f}"
        return data

    @classmethod
    def from_secret(cls, data: dict[str, str]) -> ActiveCredential | None:
        try:
            next_since = float(data["nextSince"]) if data.get("nextSince") else None
            return cls(
                data["username"],
                data["password"],
                int(data["generation"]),
                data.get("nextPassword") or None,
                next_since,
            )
        except (KeyError, ValueError):
            return None
