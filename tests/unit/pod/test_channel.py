"""The delivery script's output read into an Observation and verified (`_observation`), and
what the script reloads."""

from dataclasses import replace

from tests.unit.asterisk_samples import DETAIL, LISTS, PASSWORD_SHA, detailed, shown
from trunk_operator.core.asterisk_output import Listing, parse_listing
from trunk_operator.core.verify import Expected, ExpectedEndpoint, Observation, Probe, verify
from trunk_operator.pod.channel import MARK, _observation, sections


def test_marked_sections_split_script_output() -> None:
    out = "noise\n=====trunk-operator:a\n1\n2\n=====trunk-operator:b\n3\n"
    assert sections(out) == {"a": "1\n2\n", "b": "3\n"}


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


def test_a_run_whose_listing_was_cut_short_says_so() -> None:
    cut = {**LISTS, "list-endpoints": LISTS["list-endpoints"].split("Objects found")[0]}
    assert _observation(cut, Probe(), Expected()).cut_short == ["list-endpoints"]
    assert _observation(dict(LISTS), Probe(), Expected()).cut_short == []
    # Contexts read one by one: each read ends with its count or its no-such-context line.
    probe = Probe(contexts=frozenset({"ctx-a", "ctx-b"}))
    text = (
        "[ Context 'ctx-a' created by 'pbx_config' ]\n"
        "-= 1 extension (1 priority) in 1 context. =-\n"
    )
    assert _observation({"contexts": text}, probe, Expected()).cut_short == ["contexts"]
    gone = text + "There is no existence of 'ctx-b' context\n"
    assert _observation({"contexts": gone}, probe, Expected()).cut_short == []
