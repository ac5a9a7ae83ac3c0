"""Helpers the packaging tests share (fixtures, builders, waits)."""

from __future__ import annotations

Permission = tuple[str, str, str]  # (API group, resource, verb)


# What the operator may do, in every watched namespace (or cluster-wide when it watches all).
# Documented in charts/asterisk-trunk-operator/README.md; change both together. Nothing
# cluster-scoped: Kopf's scanning is off (handlers.py), so it never reads CRDs or namespaces.
PERMISSIONS: set[Permission] = {
    *(
        ("trunks.asterisk-operator.dev", resource, verb)
        for resource in ("twiliotrunks", "didsegments")
        for verb in ("list", "watch", "patch")
    ),
    ("trunks.asterisk-operator.dev", "twiliotrunks/status", "patch"),
    ("trunks.asterisk-operator.dev", "didsegments/status", "patch"),
    ("trunks.asterisk-operator.dev", "twilioaccounts", "list"),
    ("trunks.asterisk-operator.dev", "twilioaccounts", "watch"),
    ("trunks.asterisk-operator.dev", "twilioaccounts/status", "patch"),
    *(("", "secrets", verb) for verb in ("get", "list", "watch", "create", "update")),
    *(("", "configmaps", verb) for verb in ("get", "list", "create", "update", "delete")),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods/status", "patch"),
    ("", "pods/exec", "create"),
    ("", "pods/exec", "get"),
    ("", "events", "create"),
}
