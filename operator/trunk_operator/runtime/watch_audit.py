"""Whether Kopf's watches still deliver: what the API lists against what the controller saw.

Kopf reconnects a watch the API server closes, and `settings.watching.client_timeout` ends one
that hangs; what neither shows is a watch that is connected and silent while objects change
(a proxy that keeps the connection and drops the stream, a stuck reconnect loop). Liveness
should fail then, so kubelet restarts the operator and its watches.

The audit lists the CRs every AUDIT_SECONDS and keeps, for each one whose resourceVersion
differs from the one the controller holds (or that only one side has), what the controller
held at that moment. A live watch delivers that change, or a later one, long before the next
audit; if the controller still holds exactly the same at the next audit, the watch missed it.
Comparing versions for equality only, never for order (resourceVersions are opaque).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from trunk_operator.core.plan import PLURALS, SEGMENT, TRUNK
from trunk_operator.kube.api import Kube
from trunk_operator.kube.client import describe

log = logging.getLogger(__name__)

AUDIT_SECONDS = 300.0  # as settings.watching.server_timeout: every watch restarted meanwhile

Versions = Mapping[tuple[str, str], str]  # (namespace, "Kind/name") -> resourceVersion
ABSENT = ""


@dataclass
class WatchAudit:
    pending: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    missed: list[tuple[str, str]] = field(default_factory=list)  # set by the last check

    def check(self, listed: Versions, known: Versions) -> list[tuple[str, str]]:
        """Compare one listing with what the controller holds now; returns the CRs whose
        change the controller has not seen since the previous check (empty when alive)."""
        self.missed = [
            key
            for key, (_, held) in sorted(self.pending.items())
            if known.get(key, ABSENT) == held and listed.get(key, ABSENT) != held
        ]
        self.pending = {
            key: (listed.get(key, ABSENT), known.get(key, ABSENT))
            for key in set(listed) | set(known)
            if listed.get(key, ABSENT) != known.get(key, ABSENT)
        }
        return self.missed


def listed_versions(kube: Kube) -> dict[tuple[str, str], str]:
    """The resourceVersion of every CR the API lists (a blocking call)."""
    return {
        (body["metadata"]["namespace"], f"{kind}/{body['metadata']['name']}"): body["metadata"].get(
            "resourceVersion", ""
        )
        for kind in (TRUNK, SEGMENT)
        for body in kube.list_custom(PLURALS[kind])
    }


async def audit_forever(
    audit: WatchAudit, listed: Callable[[], Awaitable[Versions]], known: Callable[[], Versions]
) -> None:
    """Check every AUDIT_SECONDS; `listed`: the API's versions, `known`: the controller's."""
    while True:
        await asyncio.sleep(AUDIT_SECONDS)
        try:
            versions = await listed()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the API is down: that is not the watch's fault
            log.info("watch audit: listing failed: %s", describe(error))
            continue
        if missed := audit.check(versions, known()):
            log.error("the watches missed changes of %d CRs: %s", len(missed), missed[:5])
