"""What each pod must get (core.desired): one file per directory with every CR's parts, and
the objects Asterisk must show, each with its owner."""

import pytest

from tests.unit.helpers import (
    plan_with_two_trunks,
)
from trunk_operator.core.desired import (
    expected_for,
    files_of,
)

pytestmark = pytest.mark.usefixtures("delivering_written_at_once")


def test_expected_objects_carry_their_owner() -> None:
    expected = expected_for(plan_with_two_trunks().outcomes)
    assert [(e.owner, e.name, e.auth) for e in expected.endpoints] == [
        ("TwilioTrunk/a", "A", "A-auth"),
        ("TwilioTrunk/b", "B", "B-auth"),
    ]
    assert expected.transports == {"transport-udp": ("TwilioTrunk/a", "TwilioTrunk/b")}
    assert expected.contexts["trunkop-in-B-123"] == "DIDSegment/s"
    assert expected.contexts["to-a"] == "TwilioTrunk/a"


def test_files_of_joins_every_cr_into_one_file_per_directory() -> None:
    outcomes = plan_with_two_trunks().outcomes
    files = files_of(outcomes)
    # One file per directory, every CR's files in it under a comment naming them.
    assert set(files) == {"pjsip.d/trunk-operator.conf", "extensions.d/trunk-operator.conf"}
    for ref, outcome in outcomes.items():
        for path, text in (outcome.public | outcome.secret).items():
            part = f"; ==== {ref}: {path}\n{text}"
            assert part in files[path.split("/")[0] + "/trunk-operator.conf"]
    assert "[A-auth]" in files["pjsip.d/trunk-operator.conf"]
