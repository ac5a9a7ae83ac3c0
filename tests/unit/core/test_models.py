import pytest
from pydantic import ValidationError

from trunk_operator.core.models import (
    TWILIO_SIGNALLING_RANGES,
    DIDSegmentSpec,
    TwilioTrunkSpec,
)

MINIMAL = {"terminationHost": "acme.pstn.twilio.com", "credentials": {"secretName": "acme-sip"}}


def test_minimal_trunk_gets_twilio_defaults() -> None:
    spec = TwilioTrunkSpec.model_validate(MINIMAL)
    assert spec.codecs == ["ulaw", "alaw"]
    assert spec.transport == "transport-udp"
    assert spec.inbound.context == "from-twilio"
    assert spec.outbound.context == "TwilioDynamicIVR"
    assert spec.credentials.username_key == "username"
    assert spec.endpoint("acme") == "ACME"
    assert spec.edge_hosts() == ["acme.pstn.twilio.com"]


def test_edges_localize_the_termination_host_in_order() -> None:
    spec = TwilioTrunkSpec.model_validate({**MINIMAL, "edges": ["umatilla", "ashburn"]})
    assert spec.edge_hosts() == [
        "acme.pstn.umatilla.twilio.com",
        "acme.pstn.ashburn.twilio.com",
    ]


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"terminationHost": "sip.twilio.com"}, "terminationHost"),
        ({"terminationHost": "acme.sip.twilio.com"}, "terminationHost"),
        ({"codecs": ["gsm"]}, "codecs"),
        ({"edges": ["roaming"]}, "edges"),
        ({"endpointName": "bad name"}, "endpointName"),
        ({"transport": "udp;#exec"}, "transport"),
        ({"inbound": {"accountSid": "AC123"}}, "accountSid"),
        ({"inbound": {"extraSourceRanges": ["10.0.0.0/33"]}}, "extraSourceRanges"),
        ({"outbound": {"defaultCallerId": "5551234567"}}, "defaultCallerId"),
        ({"unknownField": 1}, "unknownField"),
    ],
)
def test_bad_trunk_fields_are_rejected_by_name(patch: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as error:
        TwilioTrunkSpec.model_validate({**MINIMAL, **patch})
    assert needle in str(error.value)


def test_segment_dids_expand_ranges_sorted_and_unique() -> None:
    spec = DIDSegmentSpec.model_validate(
        {
            "trunkRef": {"name": "acme"},
            "numbers": ["+15551230002", "+15551230001"],
            "ranges": [{"start": "+15551230001", "count": 3}],
        }
    )
    assert spec.dids() == ["+15551230001", "+15551230002", "+15551230003"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"numbers": ["5551230001"]}, "numbers"),
        ({"numbers": ["+0551230001"]}, "numbers"),
        ({"ranges": [{"start": "+999999999999999", "count": 2}]}, "overflows"),
        ({"ranges": [{"start": "+15550000000", "count": 60000}] * 2}, "at most 100000"),
    ],
)
def test_bad_segments_are_rejected(body: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as error:
        DIDSegmentSpec.model_validate({"trunkRef": {"name": "acme"}, **body})
    assert needle in str(error.value)


def test_signalling_ranges_are_all_eight_twilio_slash_30s() -> None:
    assert len(TWILIO_SIGNALLING_RANGES) == 8
    assert all(r.endswith("/30") for r in TWILIO_SIGNALLING_RANGES)
