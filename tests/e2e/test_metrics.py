"""/metrics (prometheus_client) moves with real work: plans, deliveries, conditions collected
at scrape time, qualify reachability and RTT, a password rotation served."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from testbed.asterisk import AsteriskContainer
from testbed.sipp import TwilioStandIn
from tests.conftest import wait_for
from tests.e2e.helpers import ACME_IP, HOSTS, PASSWORD, credentials, trunk, wait_ready

pytestmark = pytest.mark.e2e

PREFIX = "asterisk_trunk_operator"


def scrape(operator: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = operator.env["TRUNKOP_METRICS_PORT"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, metric: str, **labels: str) -> float:
    """The sum over the series of `metric` whose labels include `labels`."""
    return sum(
        v for (n, found), v in samples.items() if n == metric and set(labels.items()) <= set(found)
    )


def test_metrics_follow_the_work(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    apply: Callable[[dict[str, Any]], None],
    start_asterisk_pod: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    def answering() -> dict | None:
        try:
            return scrape(operator)
        except OSError:  # the operator is still starting
            return None

    before = wait_for(answering, what="/metrics answering")
    assert value(before, f"{PREFIX}_build_info") == 1
    start_standin("acme-user", PASSWORD, ip=ACME_IP)
    start_asterisk_pod("asterisk-0", "127.0.10.43", HOSTS)
    core.create_namespaced_secret(namespace, credentials(namespace, "acme"))
    apply(trunk("acme"))
    wait_ready(custom, namespace, "acme")

    after = scrape(operator)
    assert value(after, f"{PREFIX}_reconcile_total", result="success") > value(
        before, f"{PREFIX}_reconcile_total", result="success"
    )
    verified = f"{PREFIX}_deliveries_total"
    assert value(after, verified, result="Verified") > value(before, verified, result="Verified")
    assert value(after, f"{PREFIX}_delivery_duration_seconds_count") > value(
        before, f"{PREFIX}_delivery_duration_seconds_count"
    )
    ready = {"namespace": namespace, "name": "acme", "type": "Ready"}
    # The operator records a status once its PATCH returned: a scrape right after the API
    # shows Ready may come a moment before that.
    after = wait_for(
        lambda: (
            (s := scrape(operator))
            and value(s, f"{PREFIX}_resource_condition", status="True", **ready) == 1
            and s
        ),
        timeout=10,
        what="Ready in /metrics",
    )
    assert value(after, f"{PREFIX}_resource_condition", status="False", **ready) == 0

    samples = wait_for(
        lambda: (
            (s := scrape(operator))
            and value(s, f"{PREFIX}_contact_reachable", namespace=namespace, endpoint="ACME") == 1
            and s
        ),
        what="the contact reachable in /metrics",
    )
    assert value(samples, f"{PREFIX}_contact_rtt_seconds", namespace=namespace) > 0

    rotations = value(samples, f"{PREFIX}_secret_rotations_total")
    core.replace_namespaced_secret(
        "acme-sip", namespace, credentials(namespace, "acme", "rotated;pw")
    )
    wait_for(
        lambda: value(scrape(operator), f"{PREFIX}_secret_rotations_total") == rotations + 1,
        what="the rotation counted once served",
    )
    custom.delete_namespaced_custom_object(
        "trunks.asterisk-operator.dev", "v1alpha1", namespace, "twiliotrunks", "acme"
    )
    wait_for(
        lambda: value(scrape(operator), f"{PREFIX}_resource_condition", **ready) == 0,
        what="the deleted trunk's series gone",
    )
