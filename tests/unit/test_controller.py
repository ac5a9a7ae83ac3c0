"""The controller's pure decisions: what each pod must get and what Asterisk must show."""

from trunk_operator.controller import expected_for, files_of
from trunk_operator.plan import Inputs, Resource, plan_namespace


def plan_with_two_trunks():  # type: ignore[no-untyped-def]
    def trunk(name: str, sid: str) -> Resource:
        spec = {
            "terminationHost": f"{name}.pstn.twilio.com",
            "credentials": {"secretName": "sip"},
            "inbound": {"accountSid": "AC" + sid * 32},
            "outbound": {"context": f"to-{name}"},
        }
        return Resource("TwilioTrunk", name, "2026-01-01T00:00:00Z", spec)

    segment = Resource(
        "DIDSegment",
        "s",
        "2026-01-02T00:00:00Z",
        {"trunkRef": {"name": "b"}, "numbers": ["+15550000123"]},
    )
    inputs = Inputs(
        trunks=[trunk("a", "a"), trunk("b", "b")],
        segments=[segment],
        secrets={"sip": {"username": "u", "password": "p"}},
    )
    return plan_namespace(inputs)


def test_expected_objects_carry_their_owner() -> None:
    expected = expected_for(plan_with_two_trunks().outcomes)
    assert [(e.owner, e.name, e.auth) for e in expected.endpoints] == [
        ("TwilioTrunk/a", "A", "A-auth"),
        ("TwilioTrunk/b", "B", "B-auth"),
    ]
    assert expected.transports == {"transport-udp": ("TwilioTrunk/a", "TwilioTrunk/b")}
    assert expected.contexts["trunkop-in-B-123"] == "DIDSegment/s"
    assert expected.contexts["to-a"] == "TwilioTrunk/a"


def test_files_of_is_the_union_including_the_auth_sections() -> None:
    files = files_of(plan_with_two_trunks().outcomes)
    assert "pjsip.d/twiliotrunk-a-auth.conf" in files
    assert "extensions.d/didsegment-s.conf" in files
    assert len(files) == 7
