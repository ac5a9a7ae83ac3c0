"""Every Twilio operation the operator's client can call (`OPERATIONS` in
trunk_operator/twilio/client.py) is one of the vendored specs' and is exercised, answered with
success, by the client's unit tests against the REST stand-in; and those tests reach no other.

The unit tests run in a pytest of their own with this module as a plugin (`-p`): it records
every request each stand-in served to a file named by RECORD_ENV."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.twilio_rest import TwilioRestStandIn, load_specs, operations
from trunk_operator.twilio.client import OPERATIONS

ROOT = Path(__file__).resolve().parents[2]
UNIT_TESTS = "tests/unit/twilio"
RECORD_ENV = "TWILIO_CLIENT_COVERAGE_RECORD"
PLUGIN = "tests.platform.test_twilio_client_coverage"  # this module, by a name -p imports
_standins: list[TwilioRestStandIn] = []


def pytest_configure(config: pytest.Config) -> None:
    """As a plugin (in the inner pytest only): keep every stand-in the tests make."""
    if not os.environ.get(RECORD_ENV):
        return
    made = TwilioRestStandIn.__init__

    def keep(self: TwilioRestStandIn, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        _standins.append(self)

    TwilioRestStandIn.__init__ = keep  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    record = os.environ.get(RECORD_ENV)
    if record:
        served = [list(r) for s in _standins for r in s.requests]
        Path(record).write_text(json.dumps(served))


def test_the_clients_operations_are_the_specs_and_all_exercised(tmp_path: Path) -> None:
    record = tmp_path / "served.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            PLUGIN,
            UNIT_TESTS,
        ],
        cwd=ROOT,
        env={**os.environ, RECORD_ENV: str(record)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    served = json.loads(record.read_text())
    assert served, "the plugin saw no stand-in"
    in_specs = {op.operation_id for op in operations(load_specs())}
    assert not OPERATIONS - in_specs, sorted(OPERATIONS - in_specs)
    answered = {op for op, _, status in served if 200 <= status < 300}
    assert answered == OPERATIONS, (
        f"declared, never answered with success: {sorted(OPERATIONS - answered)}; "
        f"reached, not declared: {sorted(answered - OPERATIONS)}"
    )
    assert {op for op, *_ in served} <= OPERATIONS  # not even a failed call outside the list
