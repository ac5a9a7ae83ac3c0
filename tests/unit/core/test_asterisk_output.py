"""The CLI parsers, against output captured from Asterisk 22.10.1."""

from tests.unit.asterisk_samples import ENDPOINTS, LISTS
from trunk_operator.core.asterisk_output import (
    contexts_complete,
    parse_contexts,
    parse_endpoints,
    parse_listing,
    parse_transports,
    table_complete,
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


def test_a_table_is_complete_only_with_as_many_objects_as_its_count() -> None:
    """Asterisk drops CLI output a slow reader does not take within 100 ms, and exits 0."""
    for name, text in LISTS.items():
        kind = name.removeprefix("list-")
        assert table_complete(text, kind), name
        assert not table_complete(text.split("Objects found")[0], kind), name  # tail lost
        lines = text.splitlines(keepends=True)
        lost = [
            line
            for line in lines
            if not line.strip().startswith(
                (
                    "Endpoint:  ACME",
                    "Aor:  ACME",
                    "Auth:  ACME",
                    "Contact:  ACME",
                    "Identify:  ACME",
                )
            )
        ]
        assert not table_complete("".join(lost), kind), name  # a line in the middle lost
    assert table_complete("No objects found.\n\n", "endpoints")
    assert not table_complete("", "endpoints")  # not even connected


def test_dialplan_reads_are_complete_when_their_counts_match() -> None:
    whole = (
        "[ Context 'trunkop-out-ACME' created by 'pbx_config' ]\n"
        "[ Context 'default' created by 'pbx_config' ]\n"
        "-= 1 extension (4 priorities) in 2 contexts. =-\n"
    )
    assert contexts_complete(whole, 1)
    assert not contexts_complete(whole.split("\n", 1)[1], 1)  # a header lost
    assert not contexts_complete(whole.rsplit("-=", 1)[0], 1)  # the count lost
    one_each = (
        "[ Context 'trunkop-out-ACME' created by 'pbx_config' ]\n"
        "-= 1 extension (4 priorities) in 1 context. =-\n"
        "There is no existence of 'trunkop-in-ACME' context\n"
    )
    assert contexts_complete(one_each, 2)
    assert not contexts_complete(one_each, 3)  # one read printed nothing
    assert contexts_complete("", 0)
