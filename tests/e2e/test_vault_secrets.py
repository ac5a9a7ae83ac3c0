"""What vault-fed Secrets go through, played on the Secret itself: a key removed (ESO with
`dataFrom` drops a key removed at the provider and stays synced, external-secrets#1049), the
Secret deleted and recreated later, the same data written again (tools that rewrite on every sync),
and a burst of rotations (a vault rotating fast). The last good password keeps serving, a
problem is reported, nothing reloads for nothing, and bursts coalesce. External Secrets
Operator itself runs in test_external_secrets.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from tests.conftest import wait_for
from tests.e2e.helpers import (
    HOSTS,
    condition,
    credentials,
    reloads,
    served_password,
    status,
    trunk,
    wait_ready,
)

pytestmark = pytest.mark.e2e


def test_vault_fed_secret_changes(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.44", HOSTS)
    core.create_namespaced_secret(namespace, credentials(namespace, "acme", "first;pw"))
    apply(trunk("acme", qualifyFrequencySeconds=0))
    wait_ready(custom, namespace, "acme")
    assert served_password(pbx) == "first;pw"

    # The same data written again (a tool rewriting on every sync): a new resourceVersion, no
    # reload.
    before = reloads(pbx)
    core.replace_namespaced_secret(
        "acme-sip", namespace, credentials(namespace, "acme", "first;pw")
    )
    time.sleep(5)  # a plan and two observation rounds
    assert reloads(pbx) == before
    assert condition(status(custom, namespace, "acme"), "Ready")["status"] == "True"

    # A key removed at the provider (ESO's `dataFrom`). The last good password keeps serving.
    core.replace_namespaced_secret(
        "acme-sip",
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="acme-sip"), string_data={"username": "acme-user"}
        ),
    )
    st = wait_for(
        lambda: (
            (s := status(custom, namespace, "acme"))
            and condition(s, "Ready").get("reason") == "SecretKeyMissing"
            and s
        ),
        what="SecretKeyMissing",
    )
    assert "password" in condition(st, "Ready")["message"]
    assert served_password(pbx) == "first;pw"  # never an empty password

    # Deleted, then recreated later with a new password.
    core.delete_namespaced_secret("acme-sip", namespace)
    wait_for(
        lambda: (
            condition(status(custom, namespace, "acme"), "Ready").get("reason") == "SecretNotFound"
        ),
        what="SecretNotFound",
    )
    assert served_password(pbx) == "first;pw"
    core.create_namespaced_secret(namespace, credentials(namespace, "acme", "second;pw"))
    wait_for(lambda: served_password(pbx) == "second;pw", what="the recreated Secret served")
    wait_ready(custom, namespace, "acme")

    # Fifty rotations as fast as the API takes them: coalesced, the last one wins.
    before = reloads(pbx)
    started = time.monotonic()
    for index in range(50):
        core.replace_namespaced_secret(
            "acme-sip", namespace, credentials(namespace, "acme", f"burst;{index}")
        )
    took = time.monotonic() - started
    wait_for(lambda: served_password(pbx) == "burst;49", timeout=60, what="the last rotation")
    st = wait_ready(custom, namespace, "acme")
    version = core.read_namespaced_secret("acme-sip", namespace).metadata.resource_version
    assert st["secretResourceVersion"] == version
    burst_reloads = reloads(pbx) - before
    print(f"\n50 rotations in {took:.1f} s: {burst_reloads} PJSIP reloads")
    assert 1 <= burst_reloads < 25, burst_reloads
