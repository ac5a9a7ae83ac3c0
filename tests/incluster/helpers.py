"""Helpers the incluster tests share (fixtures, builders, waits)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import yaml

from tests.conftest import wait_for
from trunk_operator.runtime.settings import Settings

HOST = "acme.pstn.twilio.com"
GATE = Settings().readiness_condition


def kubectl_json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def asterisk_rx(cluster: Any, namespace: str, command: str, check: bool = True) -> str:
    out = cluster.kubectl("exec", "-n", namespace, "asterisk-0", "-c", "asterisk", "--",
                          "asterisk", "-rx", command, check=check)  # fmt: skip
    return str(out.stdout)


def deploy_asterisk(cluster: Any, namespace: str, objects: list[dict[str, Any]]) -> None:
    """kubectl apply of the Asterisk example's objects, then until asterisk-0 answers."""
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input="\n---\n".join(yaml.safe_dump(o) for o in objects))  # fmt: skip
    wait_for(
        lambda: "Asterisk" in asterisk_rx(cluster, namespace, "core show version", check=False),
        timeout=120,
        what="Asterisk answering in asterisk-0",
    )


def gate(cluster: Any, namespace: str) -> dict[str, Any]:
    """asterisk-0's readiness-gate condition, as the operator last wrote it."""
    pod = kubectl_json(cluster, "get", "pod", "asterisk-0", "-n", namespace)
    return next((c for c in pod["status"].get("conditions") or [] if c["type"] == GATE), {})


def restart_asterisk(cluster: Any, namespace: str) -> None:
    """`core stop now` in asterisk-0 (kubelet restarts the container), then until the
    operator has written the gate True again after it."""
    restarted = datetime.now(UTC).replace(microsecond=0)
    asterisk_rx(cluster, namespace, "core stop now", check=False)
    wait_for(
        lambda: (
            (g := gate(cluster, namespace)).get("status") == "True"
            and datetime.fromisoformat(g["lastTransitionTime"]) >= restarted
        ),
        timeout=120,
        what="the gate written again after the container restarted",
    )


def pjsip_reloads(cluster: Any, namespace: str) -> int:
    logs = cluster.kubectl("logs", "-n", namespace, "asterisk-0", "-c", "asterisk").stdout
    return str(logs).count("Reloading module 'res_pjsip.so'")


def trunk_status(cluster: Any, namespace: str) -> dict[str, Any]:
    obj = kubectl_json(cluster, "get", "twiliotrunk", "acme", "-n", namespace)
    return {"generation": obj["metadata"]["generation"], **(obj.get("status") or {})}


def ready(status: dict[str, Any]) -> bool:
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    return (
        conditions.get("Ready", {}).get("status") == "True"
        and status.get("observedGeneration") == status["generation"]
    )
