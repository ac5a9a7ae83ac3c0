"""Prometheus metrics (prometheus_client), served on /metrics when TRUNKOP_METRICS_PORT is set.

Counters and histograms are updated where the work happens (the controller); the state of
every CR and endpoint is collected at scrape time from what the controller holds, so series
of deleted CRs and pods disappear with them. Names follow controller-runtime's where they
mean the same (reconcile totals and durations), prefixed `asterisk_trunk_operator_`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

PREFIX = "asterisk_trunk_operator"

RECONCILES = Counter(f"{PREFIX}_reconcile_total", "Namespace plans, by result.", ["result"])
RECONCILE_SECONDS = Histogram(
    f"{PREFIX}_reconcile_duration_seconds", "Time to plan a namespace and write its state."
)
DELIVERIES = Counter(
    f"{PREFIX}_deliveries_total",
    "Delivery rounds into Asterisk pods, by result (Verified, RolledBack, Failed, Error).",
    ["result"],
)
DELIVERY_SECONDS = Histogram(
    f"{PREFIX}_delivery_duration_seconds",
    "One delivery round: upload, Asterisk reload and verification.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
ROTATIONS = Counter(
    f"{PREFIX}_secret_rotations_total",
    "Credentials changes of a trunk delivered and verified in every selected pod.",
)
LEADER = Gauge(f"{PREFIX}_leader", "1 when this replica holds the Lease and does the work.")
BUILD = Info(f"{PREFIX}_build", "The operator's version.")


@dataclass(frozen=True)
class ConditionState:
    namespace: str
    kind: str
    name: str
    type: str
    status: str


@dataclass(frozen=True)
class ContactState:
    namespace: str
    pod: str
    endpoint: str
    uri: str
    status: str
    rtt_ms: float | None


class StateSource(Protocol):
    """What the scrape-time collector reads (the controller provides it)."""

    def condition_states(self) -> Iterable[ConditionState]: ...

    def contact_states(self) -> Iterable[ContactState]: ...


class StateCollector(Collector):
    """Per-CR conditions (one-hot over True/False/Unknown, like cert-manager's) and per-contact
    reachability and qualify RTT, read at scrape time."""

    def __init__(self, source: StateSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        conditions = GaugeMetricFamily(
            f"{PREFIX}_resource_condition",
            "Condition of a TwilioTrunk or DIDSegment (1 for its current status).",
            labels=["namespace", "kind", "name", "type", "status"],
        )
        for c in self.source.condition_states():
            for status in ("True", "False", "Unknown"):
                conditions.add_metric(
                    [c.namespace, c.kind, c.name, c.type, status],
                    1.0 if c.status == status else 0.0,
                )
        yield conditions
        reachable = GaugeMetricFamily(
            f"{PREFIX}_contact_reachable",
            "1 when Twilio answers qualify OPTIONS on this contact (Avail).",
            labels=["namespace", "pod", "endpoint", "uri"],
        )
        rtt = GaugeMetricFamily(
            f"{PREFIX}_contact_rtt_seconds",
            "Qualify round-trip time of an available contact.",
            labels=["namespace", "pod", "endpoint", "uri"],
        )
        for contact in self.source.contact_states():
            labels = [contact.namespace, contact.pod, contact.endpoint, contact.uri]
            reachable.add_metric(labels, 1.0 if contact.status == "Avail" else 0.0)
            if contact.rtt_ms is not None:
                rtt.add_metric(labels, contact.rtt_ms / 1000)
        yield reachable
        yield rtt


def serve(port: int, source: StateSource, registry: Any = REGISTRY) -> None:
    """Start /metrics on `port` (a daemon thread) with the state collector registered."""
    try:
        BUILD.info({"version": version("asterisk-trunk-operator")})
    except PackageNotFoundError:
        BUILD.info({"version": "unknown"})
    registry.register(StateCollector(source))
    start_http_server(port, registry=registry)


def conditions_of(status: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for condition in status.get("conditions", []):
        yield str(condition.get("type", "")), str(condition.get("status", "Unknown"))
