"""The CLI parsers, against output captured from Asterisk 22.10.1."""

from tests.unit.asterisk_samples import ENDPOINTS, LISTS
from trunk_operator.asterisk_output import (
    parse_contexts,
    parse_endpoints,
    parse_listing,
    parse_transports,
)


def test_endpoints_states_contacts_and_identify_are_parsed() -> None:
    endpoints = parse_endpoints(ENDPOINTS)
    assert set(endpoints) == {"ACME", "GLOBEX"}
    acme = endpoints["ACME"]
    assert acme.state == "Not in use"
    assert acme.out_auths == ["ACME-auth"]
    assert acme.aors == ["ACME-ashburn", "ACME-umatilla"]
    assert [(c.aor, c.status, c.rtt_ms) for c in acme.contacts] == [
        ("ACME-ashburn", "Avail", 6.645),
        ("ACME-umatilla", "NonQual", None),
    ]
    assert acme.transport == "transport-udp"
    assert acme.matches == ["X-Twilio-AccountSid: AC" + "a" * 32]
    assert endpoints["GLOBEX"].state == "Unavailable"
    assert endpoints["GLOBEX"].matches == ["54.172.60.0/30"]


def test_contexts_and_transports() -> None:
    dialplan = (
        "[ Context 'trunkop-out-ACME' created by 'pbx_config' ]\n"
        "  's' =>            1. NoOp(x) [twiliotrunk-acme.conf:45]\n"
        "[ Context 'default' created by 'pbx_config' ]\n"
        "-= 1 extension (4 priorities) in 2 contexts. =-\n"
    )
    assert parse_contexts(dialplan) == {"trunkop-out-ACME", "default"}
    transports = (
        "Transport:  <TransportId........>  <Type>  <cos>  <tos>  <BindAddress....>\n"
        "==========================================================================\n"
        "Transport:  transport-tls             tls      0      0  127.0.10.1:5061\n"
        "Transport:  transport-udp             udp      0      0  127.0.10.1:5060\n"
    )
    assert parse_transports(transports) == {"transport-tls": "tls", "transport-udp": "udp"}


def test_contacts_are_looked_up_by_aor_not_scanned_per_endpoint() -> None:
    listing = parse_listing(LISTS)
    assert [c.uri for c in listing.contacts_of("GLOBEX-aor")] == ["sip:globex.pstn.twilio.com"]
    assert listing.contacts_of("NOPE-aor") == []
