"""The operator's settings: read from the environment once, at start, and passed down.

The chart sets these variables (`values.yaml`); each has a default that works for a plain
`trunk-operator run` against a kubeconfig.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


def _selector(raw: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in raw.split(",") if "=" in p)


@dataclass(frozen=True)
class Settings:
    # Namespaces served (TRUNKOP_WATCH_NAMESPACES, comma-separated); empty: every namespace.
    watch_namespaces: tuple[str, ...] = ()
    # Asterisk pods a CR without its own selector is delivered to (TRUNKOP_DEFAULT_SELECTOR).
    default_selector: Mapping[str, str] = field(default_factory=lambda: {"app": "asterisk"})
    container: str = "asterisk"  # the Asterisk container in those pods (TRUNKOP_CONTAINER)
    observe_interval: float = 5.0  # seconds between reads of a pod (TRUNKOP_OBSERVE_INTERVAL)
    exec_timeout: float = 180.0
    readiness_condition: str = "trunks.asterisk-operator.dev/delivered"
    # A Lease in pod_namespace decides which replica acts (TRUNKOP_LEADER_ELECTION=true).
    leader_election: bool = False
    pod_namespace: str = "default"  # POD_NAMESPACE, from the downward API
    hostname: str = ""  # HOSTNAME: the Lease holder's name
    metrics_port: int = 0  # TRUNKOP_METRICS_PORT; 0: no /metrics
    # TRUNKOP_TWILIO_BASE_URL, for tests only: every Twilio REST URL goes there instead (the
    # stand-in of testbed/twilio_rest.py).
    twilio_base_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw_namespaces = env.get("TRUNKOP_WATCH_NAMESPACES", "")
        return cls(
            watch_namespaces=tuple(n.strip() for n in raw_namespaces.split(",") if n.strip()),
            default_selector=_selector(env.get("TRUNKOP_DEFAULT_SELECTOR", "app=asterisk")),
            container=env.get("TRUNKOP_CONTAINER", "asterisk"),
            observe_interval=float(env.get("TRUNKOP_OBSERVE_INTERVAL", "5")),
            leader_election=env.get("TRUNKOP_LEADER_ELECTION", "").lower() == "true",
            pod_namespace=env.get("POD_NAMESPACE", "default"),
            hostname=env.get("HOSTNAME", ""),
            metrics_port=int(env.get("TRUNKOP_METRICS_PORT", "0") or 0),
            twilio_base_url=env.get("TRUNKOP_TWILIO_BASE_URL") or None,
        )
