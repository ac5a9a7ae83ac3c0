"""Parsers and the delivery script, against CLI output captured from Asterisk 22.10.1."""

import hashlib
import re
from dataclasses import replace

from trunk_operator.asterisk import (
    MARK,
    Endpoint,
    Expected,
    ExpectedEndpoint,
    Listing,
    Observation,
    Probe,
    _observation,
    parse_contexts,
    parse_endpoints,
    parse_listing,
    parse_transports,
    sections,
    verify,
)


def shown(endpoints: dict[str, Endpoint], **details: dict[str, str]) -> Observation:
    """An observation that showed these endpoints in depth (`pjsip show endpoint X`)."""
    return Observation(Listing(), shown=endpoints, details=dict(details))


ENDPOINTS = """
 Endpoint:  <Endpoint/CID.....................................>  <State.....>  <Channels.>
    I/OAuth:  <AuthId/UserName...........................................................>
        Aor:  <Aor............................................>  <MaxContact>
      Contact:  <Aor/ContactUri..........................> <Hash....> <Status> <RTT(ms)..>
  Transport:  <TransportId........>  <Type>  <cos>  <tos>  <BindAddress..................>
   Identify:  <Identify/Endpoint.........................................................>
        Match:  <criteria.........................>
==========================================================================================

 Endpoint:  ACME                                                 Not in use    0 of inf
    OutAuth:  ACME-auth/acme-user
        Aor:  ACME-ashburn                                       0
      Contact:  ACME-ashburn/sip:acme.pstn.ashburn.twilio. e2542f824d Avail         6.645
        Aor:  ACME-umatilla                                      0
      Contact:  ACME-umatilla/sip:acme.pstn.umatilla.twili fd60fcf2f3 NonQual        -nan
  Transport:  transport-udp             udp      0      0  127.0.10.29:5060
   Identify:  ACME-identify/ACME
       Header: X-Twilio-AccountSid: ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa

 Endpoint:  GLOBEX                                               Unavailable   0 of inf
    OutAuth:  GLOBEX-auth/globex-user
        Aor:  GLOBEX-aor                                         0
      Contact:  GLOBEX-aor/sip:globex.pstn.twilio.com      44cde233f9 Unavail        -nan
  Transport:  transport-udp             udp      0      0  127.0.10.29:5060
   Identify:  GLOBEX-identify/GLOBEX
        Match: 54.172.60.0/30


Objects found: 2
"""


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


def test_marked_sections_split_script_output() -> None:
    out = "noise\n=====trunk-operator:a\n1\n2\n=====trunk-operator:b\n3\n"
    assert sections(out) == {"a": "1\n2\n", "b": "3\n"}


# `pjsip show endpoint ACME` (cut) and the auth section hash, as the delivery script prints
# them, from Asterisk 22.10.1.
DETAIL = """
 Endpoint:  ACME                                                 Not in use    0 of inf
    OutAuth:  ACME-auth/acme-user
  Transport:  transport-udp             udp      0      0  127.0.10.99:5060
   Identify:  ACME-identify/ACME
       Header: X-Twilio-AccountSid: ACaaaa


 ParameterName                      : ParameterValue
 ===================================================================================================
 100rel                             : yes
 acl                                : deny/permit
 allow                              : (alaw|ulaw)
 context                            : trunkop-in-ACME
 from_user                          :
 media_encryption                   : no
 outbound_auth                      : ACME-auth
 transport                          : transport-udp
"""
PASSWORD_SHA = hashlib.sha256(b"se;cret\n").hexdigest()


def detailed(**overrides: object) -> ExpectedEndpoint:
    fields: dict = dict(
        owner="TwilioTrunk/acme",
        name="ACME",
        auth="ACME-auth",
        aors={},
        identify="ACME-identify",
        matches=frozenset({"X-Twilio-AccountSid: ACaaaa"}),
        username="acme-user",
        transport="transport-udp",
        codecs=("alaw", "ulaw"),
        media_encryption="no",
        context="trunkop-in-ACME",
        password_sha256=PASSWORD_SHA,
    )
    return ExpectedEndpoint(**{**fields, **overrides})


def test_endpoint_detail_is_checked_field_by_field() -> None:
    stdout = f"{MARK}endpoint:ACME\n{DETAIL}{MARK}auth:ACME\n{PASSWORD_SHA}  -\n"
    observation = _observation(sections(stdout), Probe(frozenset({"ACME"})), Expected())
    assert observation.details["ACME"]["allow"] == "(alaw|ulaw)"
    assert observation.details["ACME"]["from_user"] == ""
    assert observation.shown["ACME"].auth_users == {"ACME-auth": "acme-user"}

    def problems(want: ExpectedEndpoint) -> list[str]:
        return [p.message for p in verify(Expected((want,)), observation)]

    assert problems(detailed()) == []
    assert problems(detailed(codecs=("ulaw",))) == [
        "endpoint ACME has codecs ('alaw', 'ulaw'), not ('ulaw',) (Asterisk kept another version)"
    ]
    assert "media_encryption" in problems(detailed(media_encryption="sdes"))[0]
    assert "context" in problems(detailed(context="elsewhere"))[0]
    assert "another username" in problems(detailed(username="someone"))[0]
    assert "another password" in problems(detailed(password_sha256="0" * 64))[0]
    assert "lacks matches" in problems(detailed(matches=frozenset({"X-Twilio-AccountSid: ACb"})))[0]
    no_acl = {**observation.details["ACME"], "acl": ""}
    found = verify(Expected((detailed(),)), shown(observation.shown, ACME=no_acl))
    assert [p.message for p in found] == [
        "endpoint ACME has acl '', not 'deny/permit' (Asterisk kept another version)"
    ]
    # Not shown in depth: only the listings are checked (the endpoint did not change).
    listed = Observation(
        Listing(
            endpoints={"ACME": "Not in use"},
            auths={"ACME-auth": "acme-user"},
            identifies={"ACME-identify": "ACME"},
        )
    )
    assert verify(Expected((detailed(codecs=("ulaw",)),)), listed) == []


# `pjsip list ...` as Asterisk 22.10.1 prints them (a delivery's `list-*` sections).
LISTS = {
    "list-endpoints": """
 Endpoint:  <Endpoint/CID.....................................>  <State.....>  <Channels.>
==========================================================================================

 Endpoint:  ACME                                                 Not in use    0 of inf
 Endpoint:  GLOBEX                                               Unavailable   0 of inf

Objects found: 2
""",
    "list-aors": """
      Aor:  <Aor..............................................>  <MaxContact>
==========================================================================================

      Aor:  ACME-ashburn                                         0
      Aor:  GLOBEX-aor                                           0
""",
    "list-auths": """
  I/OAuth:  <AuthId/UserName.............................................................>
==========================================================================================

     Auth:  ACME-auth/acme-user
     Auth:  GLOBEX-auth/globex-user
""",
    "list-contacts": """
  Contact:  <Aor/ContactUri..............................> <Hash....> <Status> <RTT(ms)..>
==========================================================================================

  Contact:  ACME-ashburn/sip:acme.pstn.ashburn.twilio. e2542f824d Avail         6.645
  Contact:  GLOBEX-aor/sip:globex.pstn.twilio.com      44cde233f9 NonQual        -nan
""",
    "list-identifies": """
 Identify:  <Identify/Endpoint...........................................................>
==========================================================================================

 Identify:  ACME-identify/ACME
 Identify:  GLOBEX-identify/GLOBEX
""",
}


def test_listings_give_every_object_and_contacts_by_expected_aor() -> None:
    listing = parse_listing(LISTS)
    assert listing.endpoints == {"ACME": "Not in use", "GLOBEX": "Unavailable"}
    assert listing.aors == {"ACME-ashburn", "GLOBEX-aor"}
    assert listing.auths == {"ACME-auth": "acme-user", "GLOBEX-auth": "globex-user"}
    assert listing.identifies == {"ACME-identify": "ACME", "GLOBEX-identify": "GLOBEX"}
    acme = ExpectedEndpoint(
        "TwilioTrunk/acme",
        "ACME",
        "ACME-auth",
        {"ACME-ashburn": "sip:acme.pstn.ashburn.twilio.com"},
        "ACME-identify",
        frozenset(),
        username="acme-user",
    )
    observation = _observation(LISTS, Probe(), Expected((acme,)))
    assert [(c.status, c.rtt_ms) for c in observation.endpoints["ACME"].contacts] == [
        ("Avail", 6.645)
    ]
    assert observation.endpoints["GLOBEX"].contacts == []  # not expected: not linked
    assert verify(Expected((acme,)), observation) == []


def test_listed_endpoints_are_checked_for_every_object() -> None:
    observation = _observation(LISTS, Probe(), Expected())

    def problems(**overrides: object) -> list[str]:
        fields: dict = dict(
            owner="TwilioTrunk/globex",
            name="GLOBEX",
            auth="GLOBEX-auth",
            aors={"GLOBEX-aor": "sip:globex.pstn.twilio.com"},
            identify="GLOBEX-identify",
            matches=frozenset(),
            username="globex-user",
        )
        want = ExpectedEndpoint(**{**fields, **overrides})
        return [p.message for p in verify(Expected((want,)), observation)]

    assert problems() == []
    assert problems(name="NEW") == ["endpoint NEW is not loaded"]
    assert problems(auth="X-auth") == ["endpoint GLOBEX has no outbound auth X-auth"]
    assert problems(username="other") == ["auth GLOBEX-auth has another username than the Secret's"]
    assert problems(aors={"GLOBEX-b": "sip:b"}) == ["endpoint GLOBEX lacks AORs ['GLOBEX-b']"]
    assert "has no contact sip:elsewhere" in problems(aors={"GLOBEX-aor": "sip:elsewhere"})[0]
    assert problems(identify="ACME-identify") == ["identify ACME-identify is not loaded"]


def test_contexts_are_verified_as_far_as_they_were_checked() -> None:
    expected = Expected(contexts={"ctx-a": "DIDSegment/a", "ctx-b": "DIDSegment/b"})
    text = "[ Context 'ctx-a' created by 'pbx_config' ]\n"
    unchecked = _observation({"contexts": text}, Probe(), expected)
    assert verify(expected, unchecked) == []
    checked = _observation(
        {"contexts": text}, Probe(contexts=frozenset({"ctx-a", "ctx-b"})), expected
    )
    assert [p.owners for p in verify(expected, checked)] == [("DIDSegment/b",)]


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


def test_deliveries_reload_only_the_trunk_modules_never_transports() -> None:
    from trunk_operator.asterisk import deliver_script, rollback_script

    def reloads(script: str) -> set[str]:
        return set(re.findall(r"asterisk -rx '([^']*reload[^']*)'", script))

    assert reloads(rollback_script()) == {"module reload res_pjsip.so", "dialplan reload"}
    assert reloads(deliver_script(1, "h")) == {"module reload res_pjsip.so", "dialplan reload"}
    assert reloads(deliver_script(1, "h", reload=["pjsip.d"])) == {"module reload res_pjsip.so"}
    assert reloads(deliver_script(1, "h", reload=())) == set()


def test_without_added_endpoints_only_states_and_contacts_are_listed() -> None:
    parts = {k: v for k, v in LISTS.items() if k in ("list-endpoints", "list-contacts")}
    observation = _observation(parts, Probe(), Expected())
    assert observation.listing.read == {"endpoints", "contacts"}
    unchanged = ExpectedEndpoint(
        "TwilioTrunk/globex",
        "GLOBEX",
        "GLOBEX-auth",
        {"GLOBEX-aor": "sip:globex.pstn.twilio.com"},
        "GLOBEX-identify",
        frozenset(),
        username="someone-else",  # not listed: not checked
    )
    assert verify(Expected((unchanged,)), observation) == []
    moved = replace(unchanged, aors={"GLOBEX-aor": "sip:elsewhere"})
    assert [p.message for p in verify(Expected((moved,)), observation)] == [
        "AOR GLOBEX-aor has no contact sip:elsewhere (does the host resolve?)"
    ]


def test_contacts_are_looked_up_by_aor_not_scanned_per_endpoint() -> None:
    listing = parse_listing(LISTS)
    assert [c.uri for c in listing.contacts_of("GLOBEX-aor")] == ["sip:globex.pstn.twilio.com"]
    assert listing.contacts_of("NOPE-aor") == []
