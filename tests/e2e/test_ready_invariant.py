"""Ready means Asterisk serves that generation: the invariant scenario at a small size.

The large sizes (300 and 1,000 trunks) run in `bench/run.py --only 6`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.asterisk import AsteriskContainer
from tests.e2e.ready_invariant import ReadyInvariant

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("INVARIANT_SEED", "7"))


def test_ready_is_only_reported_for_what_asterisk_serves_and_events_follow_transitions(
    operator: Any,
    namespace: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    start_asterisk_pod: Callable[..., AsteriskContainer],
) -> None:
    pbx = start_asterisk_pod("asterisk-0", "127.0.10.37", {"bench.pstn.twilio.com": "127.0.0.21"})
    scenario = ReadyInvariant(
        core, custom, namespace, pbx, seed=SEED, trunks=120, hot=4, actions=16
    )
    report = scenario.run()
    print(
        f"seed {SEED}: {len(report.actions)} changes, {report.checks} checks in Asterisk,"
        f" {report.seconds:.0f} s"
    )
    assert report.checks >= len(report.actions) // 2, report.actions
    assert not report.violations, "\n".join([*report.violations, "actions:", *report.actions])
    assert not report.event_problems, "\n".join(report.event_problems[:20])
