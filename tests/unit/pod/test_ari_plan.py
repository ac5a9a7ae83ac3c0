"""The steps of an ARI delivery, computed from the operator's copy of a pod's record
(pod/ari_plan.py); the executor that runs them is tested in test_ari_push.py."""

from __future__ import annotations

import hashlib

import pytest

from trunk_operator.pod.ari_plan import (
    NO_RECORD,
    UNKNOWN,
    PushRecord,
    pjsip_objects,
    push_ops,
    record_of,
)

FILE = """; TwilioTrunk acme
[acme]
type = endpoint
aors = acme-aor
set_var = NOTE=a\\;b

[acme-aor]
type = aor
contact = sip:acme.pstn.twilio.com
"""


def test_an_objects_digest_is_its_sections_lines_as_records_have_always_held_them() -> None:
    """A pod's record written by an earlier operator stays valid: no object is pushed again
    after an upgrade."""
    objects = pjsip_objects(FILE)
    assert list(objects) == [("endpoint", "acme"), ("aor", "acme-aor")]
    section = "[acme-aor]\ntype = aor\ncontact = sip:acme.pstn.twilio.com\n"
    assert objects["aor", "acme-aor"].digest == hashlib.md5(section.encode()).hexdigest()
    assert objects["endpoint", "acme"].body() == (
        '{"fields":[{"attribute":"aors","value":"acme-aor"},'
        '{"attribute":"set_var","value":"NOTE=a;b"}]}'
    )


def test_a_section_that_is_no_trunk_object_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[t\] is not a trunk object"):
        pjsip_objects("[t]\ntype = transport\n")
    bad = pjsip_objects("[t]\ntype = aor\nno value here\n")["aor", "t"]
    with pytest.raises(ValueError, match="cannot read line"):
        bad.body()


def steps(wanted: str, had: dict[tuple[str, str], str]) -> list[str]:
    return [f"{op.verb} {op.kind} {op.id}".strip() for op in push_ops(pjsip_objects(wanted), had)]


def test_deletions_go_first_referring_objects_first_and_creations_in_the_other_order() -> None:
    objects = pjsip_objects(FILE)
    had = {("identify", "old"): "d1", ("auth", "old-auth"): "d2"}
    assert steps(FILE, had) == [
        "delete identify old",
        "delete auth old-auth",
        "create aor acme-aor",
        "settle aor",
        "create endpoint acme",
    ]
    same = {key: obj.digest for key, obj in objects.items()}
    assert steps(FILE, same) == []


def test_a_replaced_endpoint_is_cleared_awaited_then_refilled_and_unknown_means_changed() -> None:
    had = {("endpoint", "acme"): "old", ("aor", "acme-aor"): UNKNOWN}
    assert steps(FILE, had) == [
        "clear endpoint acme",
        "await endpoint",
        "replace aor acme-aor",
        "settle aor",
        "refill endpoint acme",
    ]


def test_the_record_follows_each_step_but_those_left_unknown() -> None:
    objects = pjsip_objects(FILE)
    record = PushRecord("boot 1000 3", {("identify", "old"): "d1", ("endpoint", "acme"): "x"})
    ops = push_ops(objects, record.objects)
    after = record.after(ops, [("aor", "acme-aor")], "boot 1000 9", FILE, "")
    assert after.objects == {("endpoint", "acme"): objects["endpoint", "acme"].digest,
                             ("aor", "acme-aor"): UNKNOWN}  # fmt: skip
    assert after.lines == 9 and after.given == FILE


def test_a_pods_record_is_read_back_as_the_executor_wrote_it() -> None:
    dump = "boot 1000\nauth\ta\t-\nauth\ta\td1\naor\tb\td2\naor\tb\tgone\n"
    record = record_of(dump, FILE, "")
    assert record.token == "boot 1000 5" and record.objects == {("auth", "a"): "d1"}
    assert record.given == FILE and record.previous == ""
    assert record_of("", FILE, FILE).token == NO_RECORD  # of another Asterisk process
