"""The operator keeps working, with no restart, when its bearer token is replaced and the old
one is invalidated: what kubelet does to a projected ServiceAccount token.

The operator runs as a ServiceAccount with the chart's own RBAC, from a kubeconfig whose user
has only a `tokenFile`. Its connections to the API server go through a TCP relay in this test:
after the rotation the relay drops them, as a restarted API server or a load balancer would,
so Kopf's watches reconnect and present their token again (otherwise they would keep their
already authenticated streams for minutes, and Kopf's login handler would never be tested).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from testbed.cluster import pid_alive
from testbed.operator_process import OperatorProcess
from tests.conftest import wait_for
from tests.integration.helpers import (
    TRUNK,
    Relay,
    admin_cluster_entry,
    generations,
    secret,
    trunk,
    with_spec,
)
from tools.chartgen import CHART, GenerationError
from tools.chartgen import helm as run_helm
from trunk_operator.core.models import GROUP, VERSION

pytestmark = pytest.mark.integration


def ssl_context(entry: dict[str, Any]) -> ssl.SSLContext:
    if entry.get("insecure-skip-tls-verify"):
        return ssl._create_unverified_context()
    if data := entry.get("certificate-authority-data"):
        return ssl.create_default_context(cadata=base64.b64decode(data).decode())
    return ssl.create_default_context(cafile=entry.get("certificate-authority"))


def api_status(entry: dict[str, Any], token: str) -> int:
    """HTTP status of GET /api with this bearer token, straight to the API server."""
    request = urllib.request.Request(
        entry["server"].rstrip("/") + "/api", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, context=ssl_context(entry), timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def chart_rbac(release: str, namespace: str) -> list[dict[str, Any]]:
    """The chart's ServiceAccount, ClusterRole and ClusterRoleBinding (default values)."""
    try:
        rendered = run_helm(
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ).stdout
    except GenerationError as error:  # `make test` builds helm; a bare pytest run may not have
        pytest.fail(str(error), pytrace=False)
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    return docs


def create_token(cluster: Any, namespace: str, account: str, bound_secret: str) -> str:
    """A token bound to a Secret: deleting the Secret invalidates it, as deleting a pod does."""
    return str(
        cluster.kubectl(
            "create",
            "token",
            account,
            "-n",
            namespace,
            "--bound-object-kind",
            "Secret",
            "--bound-object-name",
            bound_secret,
            "--duration",
            "10m",
        ).stdout.strip()
    )


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a partial one (kubelet swaps a symlink)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def conditions(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    status = trunk(custom, namespace, name).get("status", {})
    return {c["type"]: c for c in status.get("conditions", [])}


def test_operator_keeps_working_when_its_token_rotates(
    cluster: Any,
    crds: None,
    no_host_operator: None,  # the session's operator (admin, every namespace) would hide a failure
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[..., Any],
    tmp_path: Path,
) -> None:
    release = f"tokrot-{uuid.uuid4().hex[:6]}"
    rbac = chart_rbac(release, namespace)
    (account,) = [d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"]
    cluster_scoped = [
        f"{d['kind'].lower()}/{d['metadata']['name']}"
        for d in rbac
        if d["kind"] != "ServiceAccount"
    ]
    entry = admin_cluster_entry(cluster.kubeconfig)
    upstream = urlsplit(entry["server"])
    relay = Relay(upstream.hostname or "127.0.0.1", upstream.port or 443)
    token_file = tmp_path / "token"
    tokens: dict[int, str] = {}
    op: OperatorProcess | None = None

    def rotate(old: int, new: int) -> None:
        """A new token in the file, then the old one invalidated (its bound Secret deleted)."""
        core.create_namespaced_secret(
            namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=f"token-{new}"))
        )
        token = create_token(cluster, namespace, account, f"token-{new}")
        write_atomically(token_file, token)
        core.delete_namespaced_secret(f"token-{old}", namespace)
        wait_for(  # the API server caches token reviews for about 10 s
            lambda: api_status(entry, tokens[old]) == 401,
            timeout=40,
            interval=0.5,
            what=f"token {old} to be refused",
        )
        assert api_status(entry, token) == 200
        tokens[new] = token

    try:
        cluster.apply(*rbac)
        core.create_namespaced_secret(
            namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="token-1"))
        )
        tokens[1] = create_token(cluster, namespace, account, "token-1")
        assert api_status(entry, tokens[1]) == 200
        write_atomically(token_file, tokens[1])
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "relay",
                            "cluster": {**entry, "server": f"https://127.0.0.1:{relay.port}"},
                        }
                    ],
                    "users": [{"name": account, "user": {"tokenFile": str(token_file)}}],
                    "contexts": [{"name": "op", "context": {"cluster": "relay", "user": account}}],
                    "current-context": "op",
                }
            )
        )
        op = OperatorProcess(
            str(kubeconfig), tmp_path / "operator.log", env={"TRUNKOP_OBSERVE_INTERVAL": "2"}
        )
        op.start()
        pid = op.pid

        core.create_namespaced_secret(namespace, secret(namespace))
        apply(TRUNK)
        first = wait_for(
            lambda: (c := conditions(custom, namespace, "acme")).get("Ready") and c,
            timeout=45,
            what="the first trunk's status, before any rotation",
        )
        assert first["Ready"]["reason"] == "NoAsteriskPods", first
        wait_for(
            lambda: _exists(core.read_namespaced_config_map, "twiliotrunk-acme", namespace),
            what="the first trunk's rendered ConfigMap",
        )

        # Rotation 1, Kopf first: its watches reconnect, are refused, and Kopf logs in again
        # (our login handler must read the file: our own client has not needed the new token
        # yet). A new trunk then proves the watches and our client work with the new token.
        mark = len(op.log())
        rotate(1, 2)
        assert relay.drop() > 0, "no connection to cut: the operator does not use the relay"
        second_trunk = with_spec(  # next to the first: its own context and identification
            TRUNK, outbound={"context": "acme-two-out"}, inbound={"accountSid": "AC" + "0" * 32}
        )
        apply({**second_trunk, "metadata": {"name": "acme-two"}})
        second = wait_for(
            lambda: (c := conditions(custom, namespace, "acme-two")).get("Ready") and c,
            timeout=30,
            what="the second trunk's status, after rotation 1",
        )
        assert second["Ready"]["reason"] == "NoAsteriskPods", second
        wait_for(
            lambda: _exists(core.read_namespaced_config_map, "twiliotrunk-acme-two", namespace),
            what="the second trunk's rendered ConfigMap",
        )
        after = op.log()[mark:]
        assert "Re-authentication has finished" in after, (
            "Kopf did not log in again: its login handler was not exercised\n" + after[-4000:]
        )

        # Rotation 2, our client first: Kopf's watches keep their authenticated streams, so
        # the first call refused is ours, and it must read the file again (after a 401).
        mark = len(op.log())
        rotate(2, 3)
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "twiliotrunks", "acme", {"spec": {"codecs": ["alaw"]}}
        )
        generation, _ = generations(custom, namespace, "acme")
        wait_for(
            lambda: generations(custom, namespace, "acme")[1] == generation,
            timeout=30,
            what=f"status.observedGeneration {generation} after rotation 2",
        )
        rendered = core.read_namespaced_config_map("twiliotrunk-acme", namespace).data or {}
        assert "ulaw" not in rendered["pjsip.d_twiliotrunk-acme.conf"]
        after = op.log()[mark:]
        refused = [line for line in after.splitlines() if re.search(r'HTTP/1\.1" 401 ', line)]
        assert refused, "our client was never refused: its 401 path was not exercised"
        print(f"\nafter rotation 2, {len(refused)} call(s) refused, then retried: {refused[0]}")

        # The same process did all of it, and it never broke.
        assert op.pid == pid and op.proc is not None and op.proc.poll() is None
        assert pid is not None and pid_alive(pid)
        assert "Traceback" not in op.log(), op.log()[-4000:]
    except BaseException:
        if op is not None:
            print(f"\n---- operator log (tail) ----\n{op.log()[-8000:]}")
        raise
    finally:
        if op is not None:
            op.stop()
        relay.close()
        # Our operator's finalizers would hold the namespace's deletion: release them.
        cluster.kubectl("delete", "twiliotrunks", "--all", "-n", namespace, "--wait=false")
        for name in ("acme", "acme-two"):
            with contextlib.suppress(client.ApiException):
                custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    "twiliotrunks",
                    name,
                    {"metadata": {"finalizers": None}},
                )
        cluster.kubectl("delete", *cluster_scoped, "--ignore-not-found", check=False)


def _exists(read: Callable[..., Any], name: str, namespace: str) -> Any:
    try:
        return read(name, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
