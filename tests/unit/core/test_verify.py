"""Verification: what Asterisk shows against what was rendered, each difference with its CR."""

from tests.unit.asterisk_samples import ENDPOINTS, detailed, shown
from trunk_operator.core.asterisk_output import Endpoint, Listing, parse_endpoints
from trunk_operator.core.verify import Expected, ExpectedEndpoint, Observation, verify


def test_cut_contact_uris_still_verify_but_wrong_ones_do_not() -> None:
    want = ExpectedEndpoint(
        "TwilioTrunk/acme",
        "ACME",
        "ACME-auth",
        {
            "ACME-ashburn": "sip:acme.pstn.ashburn.twilio.com",
            "ACME-umatilla": "sip:acme.pstn.umatilla.twilio.com",
        },
        "ACME-identify",
        frozenset({"X-Twilio-AccountSid: AC" + "a" * 32}),
    )
    loaded = shown(parse_endpoints(ENDPOINTS))
    assert verify(Expected((want,)), loaded) == []
    other = ExpectedEndpoint(
        "TwilioTrunk/acme",
        "ACME",
        "ACME-auth",
        {"ACME-ashburn": "sip:x.pstn.twilio.com"},
        "ACME-identify",
        frozenset(),
    )
    problems = [p.message for p in verify(Expected((other,)), loaded)]
    assert any("AORs" in p for p in problems)
    assert any("no contact sip:x.pstn.twilio.com" in p for p in problems)


def test_every_mismatch_names_the_resource_it_belongs_to() -> None:
    want = ExpectedEndpoint("TwilioTrunk/new", "NEW", "NEW-auth", {}, "NEW-identify", frozenset())
    expected = Expected(
        (want,),
        {"ctx-a": "DIDSegment/a", "ctx-b": "DIDSegment/b"},
        {"transport-x": ("TwilioTrunk/new",)},
    )
    observation = Observation(
        Listing(endpoints={"OLD": "Unavailable"}),
        contexts={"ctx-a"},
        contexts_checked=frozenset({"ctx-a", "ctx-b"}),
    )
    problems = verify(expected, observation, {})
    assert [(p.owners, p.message) for p in problems] == [
        (
            ("TwilioTrunk/new",),
            "transport transport-x does not exist in Asterisk (adding one needs a restart)",
        ),
        (("TwilioTrunk/new",), "endpoint NEW is not loaded"),
        (("DIDSegment/b",), "1 dialplan contexts are not loaded (ctx-b)"),
    ]
    loaded = shown({"NEW": Endpoint("NEW", "Unavailable", aors=[])})
    messages = [p.message for p in verify(Expected((want,)), loaded)]
    assert "endpoint NEW has no outbound auth NEW-auth" in messages
    assert "identify NEW-identify is not loaded" in messages


def test_a_secure_trunk_on_a_transport_that_is_not_tls_is_refused() -> None:
    secure = detailed(transport="transport-udp-alt", media_encryption="sdes")
    listed = Observation(
        Listing(
            endpoints={"ACME": "Not in use"},
            auths={"ACME-auth": "acme-user"},
            identifies={"ACME-identify": "ACME"},
        )
    )
    found = verify(Expected((secure,)), listed, {"transport-udp-alt": "udp"})
    assert [p.message for p in found] == [
        "transport transport-udp-alt is udp: a secure trunk needs a TLS transport"
    ]
    assert verify(Expected((secure,)), listed, {"transport-udp-alt": "tls"}) == []


def test_a_read_without_listings_keeps_the_last_ones_and_takes_what_it_showed() -> None:
    """A push over ARI that only replaced objects reads those in depth and no listing: the
    other endpoints are as the last read found them (the same objects, not rebuilt)."""
    listing = Listing(endpoints={"A": "Not in use", "B": "Unavailable"})
    before = Observation(listing).attach(Expected())
    replaced = Endpoint("A", "In use")
    light = Observation(Listing(read=set()), shown={"A": replaced}).carry(before)
    assert light.listing is listing
    assert light.endpoints == {"A": replaced, "B": before.endpoints["B"]}
    assert light.endpoints["B"] is before.endpoints["B"]
    assert before.endpoints["A"].state == "Not in use"  # the last read's own is unchanged
    # A read with listings, or nothing to carry from: as read.
    full = Observation(listing, shown={"A": replaced})
    assert full.carry(before) is full and full.endpoints == {}
    first = Observation(Listing(read=set()))
    assert first.carry(None) is first
