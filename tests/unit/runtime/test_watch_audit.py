"""The dead-watch audit: a change the API lists and the controller never sees fails liveness."""

from trunk_operator.runtime.watch_audit import WatchAudit

A, B = ("ns", "TwilioTrunk/a"), ("ns", "TwilioTrunk/b")


def test_a_live_watch_catches_up_between_two_audits() -> None:
    audit = WatchAudit()
    assert audit.check({A: "5", B: "7"}, {A: "4", B: "7"}) == []  # A's event is on its way
    assert audit.check({A: "6", B: "7"}, {A: "6", B: "7"}) == []  # ... it arrived, and more
    assert audit.check({A: "9", B: "7"}, {A: "8", B: "7"}) == []  # moved on, not stuck
    assert audit.missed == []


def test_a_silent_watch_is_reported_at_the_second_audit() -> None:
    audit = WatchAudit()
    assert audit.check({A: "5"}, {A: "4"}) == []
    assert audit.check({A: "6"}, {A: "4"}) == [A]  # nothing arrived in a whole interval
    assert audit.missed == [A]


def test_creations_and_deletions_count_too() -> None:
    audit = WatchAudit()
    audit.check({A: "1", B: "2"}, {A: "1"})  # B created, not seen yet
    assert audit.check({A: "1", B: "2"}, {A: "1"}) == [B]
    audit = WatchAudit()
    audit.check({}, {A: "1"})  # A deleted, not seen yet
    assert audit.check({}, {A: "1"}) == [A]
    audit = WatchAudit()
    audit.check({}, {A: "1"})
    assert audit.check({}, {}) == []  # the deletion arrived
