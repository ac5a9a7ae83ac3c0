"""External Secrets Operator itself feeding a trunk: ESO's controller (v0.16.2, built from its
Go module, testbed/external_secrets.py) against the test cluster, its `fake` provider standing
in for the vault, and the ExternalSecret users copy from examples/vault (only its refresh
interval shortened). What ESO really does to the Secret, and how the trunk follows: the Secret
it creates (owned by the ExternalSecret, with our label), refreshes that rewrite nothing, a
rotation at the vault reaching Asterisk, a key removed at the vault, the ExternalSecret
deleted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from testbed.external_secrets import ExternalSecretsOperator
from tests.conftest import ROOT, wait_for
from tests.e2e.helpers import (
    HOSTS,
    condition,
    reloads,
    served_password,
    status,
    trunk,
    vault_store,
    wait_ready,
)

pytestmark = pytest.mark.e2e


def secret_version(core: client.CoreV1Api, namespace: str) -> str:
    try:
        return str(core.read_namespaced_secret("acme-sip", namespace).metadata.resource_version)
    except client.ApiException as error:
        if error.status == 404:
            return ""
        raise


def external_ready(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(
        "external-secrets.io", "v1", namespace, "externalsecrets", "acme-sip"
    )
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def test_external_secrets_operator_feeds_a_trunk(
    cluster: Any,
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    external_secrets: ExternalSecretsOperator,
) -> None:
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.46", HOSTS)
    cluster.apply(vault_store({"username": "acme-user", "password": "first;pw"}))
    external = yaml.safe_load((ROOT / "examples" / "vault" / "externalsecret.yaml").read_text())
    external["spec"]["refreshInterval"] = "1s"
    apply(external)
    apply(trunk("acme", qualifyFrequencySeconds=0))
    st = wait_ready(custom, namespace, "acme", timeout=90)
    assert served_password(pbx) == "first;pw"
    secret = core.read_namespaced_secret("acme-sip", namespace)
    assert secret.metadata.labels["trunks.asterisk-operator.dev/credentials"] == "true"
    assert [o.kind for o in secret.metadata.owner_references] == ["ExternalSecret"]
    assert st["secretResourceVersion"] == secret.metadata.resource_version

    # ESO refreshes every second; unchanged data rewrites nothing and reloads nothing.
    before, version = reloads(pbx), secret.metadata.resource_version
    time.sleep(5)
    assert core.read_namespaced_secret("acme-sip", namespace).metadata.resource_version == version
    assert reloads(pbx) == before

    # A rotation at the vault: ESO rewrites the Secret, the operator delivers it.
    rotated = time.monotonic()
    cluster.apply(vault_store({"username": "acme-user", "password": "second;pw"}))
    wait_for(lambda: served_password(pbx) == "second;pw", timeout=60, what="the rotated password")
    print(f"\nvault rotation -> served in Asterisk: {time.monotonic() - rotated:.1f} s")
    st = wait_ready(custom, namespace, "acme")
    current = core.read_namespaced_secret("acme-sip", namespace).metadata.resource_version
    assert st["secretResourceVersion"] == current

    # The Secret deleted by hand: ESO writes it again at once (it watches what it owns).
    core.delete_namespaced_secret("acme-sip", namespace)
    deleted = time.monotonic()
    wait_for(
        lambda: secret_version(core, namespace) not in ("", current),
        what="ESO writing the Secret again",
    )
    print(f"Secret deleted -> ESO wrote it again: {time.monotonic() - deleted:.1f} s")

    # ESO may write the recreated Secret twice (seen: 561, then 569): Ready must follow the last.
    def ready_on_current_secret() -> bool:
        st = wait_ready(custom, namespace, "acme")
        return bool(st["secretResourceVersion"] == secret_version(core, namespace))

    wait_for(ready_on_current_secret, timeout=60, what="Ready on the rewritten Secret")
    current = secret_version(core, namespace)
    assert served_password(pbx) == "second;pw"

    # The password removed at the vault: ESO v0.16 keeps the Secret as it was and reports the
    # ExternalSecret failed (a `data` entry it cannot read). The trunk keeps serving.
    cluster.apply(vault_store({"username": "acme-user"}))
    synced = wait_for(
        lambda: (c := external_ready(custom, namespace)).get("status") == "False" and c,
        what="the ExternalSecret failing",
    )
    print(f"password gone from the vault -> ExternalSecret: {synced.get('reason')}")
    assert secret_version(core, namespace) == current
    assert condition(status(custom, namespace, "acme"), "Ready")["status"] == "True"
    assert served_password(pbx) == "second;pw"

    # The ExternalSecret deleted: its Secret goes with it (creationPolicy Owner, garbage
    # collection); the trunk says so and Asterisk keeps the last good password.
    custom.delete_namespaced_custom_object(
        "external-secrets.io", "v1", namespace, "externalsecrets", "acme-sip"
    )
    wait_for(
        lambda: (
            condition(status(custom, namespace, "acme"), "Ready").get("reason") == "SecretNotFound"
        ),
        timeout=60,
        what="SecretNotFound after the ExternalSecret was deleted",
    )
    assert served_password(pbx) == "second;pw"
