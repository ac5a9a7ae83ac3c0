"""The stand-in for Twilio's REST API (testbed/twilio_rest.py) as Twilio's own Python SDK sees it:
every operation the operator will use, paging over two pages on both APIs, the rules the specs
only state in prose, and faults on demand. Every exchange is validated against the vendored
specs inside the stand-in; each test ends with no violation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from testbed.twilio_rest import SPECS, StandInHttpClient, TwilioRestStandIn

# testbed/twilio-api/README.md: the vendored files, as they were checked in.
SPEC_DIGESTS = {
    "twilio_trunking_v1.yaml": "43b1e0f770cd49abb991ba2ff897d2480fc19fd72cbd286f9e7ae83b08fc4920",
    "twilio_api_v2010.subset.yaml": (
        "c914f8329d5059342dfe33a1ae6dc8f713f55e71b1ac46b99c6ca0ade97fb29b"
    ),
}
STRONG = "Rotated-Passw0rd-1"


@pytest.fixture
def standin() -> Iterator[TwilioRestStandIn]:
    twilio = TwilioRestStandIn()
    yield twilio
    twilio.close()
    assert twilio.violations == []


@pytest.fixture
def client(standin: TwilioRestStandIn) -> Client:
    base = standin.serve()
    return Client(
        standin.account.account_sid, standin.account.auth_token, http_client=StandInHttpClient(base)
    )


def test_the_vendored_specs_are_the_ones_checked_in() -> None:
    for name, digest in SPEC_DIGESTS.items():
        assert hashlib.sha256((SPECS / name).read_bytes()).hexdigest() == digest


def test_a_trunk_with_its_credential_list_as_the_operator_builds_it(
    standin: TwilioRestStandIn, client: Client
) -> None:
    trunk = client.trunking.v1.trunks.create(
        friendly_name="trunkop:telephony/acme", domain_name="acme.pstn.twilio.com", secure=False
    )
    assert trunk.sid.startswith("TK") and trunk.auth_type == ""
    account = client.api.v2010.account
    creds = account.sip.credential_lists.create(friendly_name="trunkop:telephony/acme")
    cred = creds.credentials.create(username="acme-1", password=STRONG)
    assert cred.username == "acme-1" and not hasattr(cred, "password")
    client.trunking.v1.trunks(trunk.sid).credentials_lists.create(credential_list_sid=creds.sid)
    assert client.trunking.v1.trunks(trunk.sid).fetch().auth_type == "CREDENTIAL_LIST"
    # What the SIP side will accept for the trunk's domain.
    assert standin.account.credentials_of_domain("acme.pstn.twilio.com") == {"acme-1": STRONG}
    creds.credentials(cred.sid).update(password="An0ther-Password")
    assert standin.account.credentials_of_domain("acme.pstn.twilio.com") == {
        "acme-1": "An0ther-Password"
    }
    url = client.trunking.v1.trunks(trunk.sid).origination_urls.create(
        weight=10,
        priority=10,
        enabled=True,
        friendly_name="asterisk-0",
        sip_url="sip:192.0.2.1:5060",
    )
    assert url.sip_url == "sip:192.0.2.1:5060"
    client.trunking.v1.trunks(trunk.sid).origination_urls(url.sid).update(enabled=False)
    assert client.trunking.v1.trunks(trunk.sid).origination_urls(url.sid).fetch().enabled is False


def test_paging_follows_twilios_urls_on_both_apis(
    standin: TwilioRestStandIn, client: Client
) -> None:
    for i in range(7):
        client.trunking.v1.trunks.create(domain_name=f"t{i}.pstn.twilio.com")
    assert len(client.trunking.v1.trunks.list(page_size=3)) == 7
    numbers = [standin.account.seed_number(f"+1555000{i:04d}") for i in range(5)]
    listed = client.api.v2010.account.incoming_phone_numbers.list(page_size=2)
    assert sorted(n.sid for n in listed) == sorted(numbers)
    # The filter is a partial match, as Twilio documents: compare exactly.
    found = client.api.v2010.account.incoming_phone_numbers.list(phone_number="0001")
    assert [n.phone_number for n in found] == ["+15550000001"]
    # Each page a request of its own: 7 trunks by 3, 5 numbers by 2, then the filtered list.
    lists = [op for op, *_ in standin.requests if op.startswith("List")]
    assert lists.count("ListTrunk") == 3 and lists.count("ListIncomingPhoneNumber") == 4


def test_numbers_ride_one_trunk_and_are_never_bought_or_released(
    standin: TwilioRestStandIn, client: Client
) -> None:
    first = client.trunking.v1.trunks.create(domain_name="a.pstn.twilio.com")
    second = client.trunking.v1.trunks.create(domain_name="b.pstn.twilio.com")
    number = standin.account.seed_number("+15551230001")
    client.trunking.v1.trunks(first.sid).phone_numbers.create(phone_number_sid=number)
    assert client.api.v2010.account.incoming_phone_numbers(number).fetch().trunk_sid == first.sid
    with pytest.raises(TwilioRestException) as refused:
        client.trunking.v1.trunks(second.sid).phone_numbers.create(phone_number_sid=number)
    assert refused.value.status == 400
    client.trunking.v1.trunks(first.sid).phone_numbers(number).delete()
    assert client.api.v2010.account.incoming_phone_numbers(number).fetch().trunk_sid is None
    with pytest.raises(TwilioRestException):
        client.api.v2010.account.incoming_phone_numbers.create(phone_number="+15559999999")
    with pytest.raises(TwilioRestException):
        client.api.v2010.account.incoming_phone_numbers(number).delete()
    assert standin.account.forbidden == ["buy +15559999999", "release +15551230001"]


def test_what_the_specs_only_say_in_prose_is_refused(client: Client) -> None:
    creds = client.api.v2010.account.sip.credential_lists.create(friendly_name="x")
    for weak in ("short1A", "alllowercase12", "ALLUPPERCASE12", "NoDigitsAtAllHere"):
        with pytest.raises(TwilioRestException) as refused:
            creds.credentials.create(username="u", password=weak)
        assert refused.value.status == 400
    with pytest.raises(TwilioRestException):
        creds.credentials.create(username="u" * 33, password=STRONG)
    client.trunking.v1.trunks.create(domain_name="taken.pstn.twilio.com")
    with pytest.raises(TwilioRestException) as taken:
        client.trunking.v1.trunks.create(domain_name="taken.pstn.twilio.com")
    assert taken.value.status == 409
    trunk = client.trunking.v1.trunks.create(domain_name="other.pstn.twilio.com")
    with pytest.raises(TwilioRestException):
        client.trunking.v1.trunks(trunk.sid).origination_urls.create(
            weight=1, priority=1, enabled=True, friendly_name="x", sip_url="sips:192.0.2.1"
        )
    # A list a trunk still uses is not deleted (the stricter reading of an unconfirmed rule).
    client.trunking.v1.trunks(trunk.sid).credentials_lists.create(credential_list_sid=creds.sid)
    with pytest.raises(TwilioRestException):
        creds.delete()


def test_wrong_credentials_and_api_keys(standin: TwilioRestStandIn, client: Client) -> None:
    base = standin.serve()
    wrong = Client(
        standin.account.account_sid, "not-the-token", http_client=StandInHttpClient(base)
    )
    # A list's failed page is a bare TwilioException in the SDK; the body is Twilio's.
    with pytest.raises(TwilioException, match='"code": 20003'):
        wrong.trunking.v1.trunks.list()
    with pytest.raises(TwilioRestException) as refused:
        wrong.trunking.v1.trunks.create(domain_name="x.pstn.twilio.com")
    assert (refused.value.status, refused.value.code) == (401, 20003)
    key, secret = standin.account.add_api_key()
    keyed = Client(key, secret, standin.account.account_sid, http_client=StandInHttpClient(base))
    assert keyed.trunking.v1.trunks.list() == []


def test_faults_on_demand(standin: TwilioRestStandIn, client: Client) -> None:
    standin.faults.fail("CreateTrunk", status=500, applied=True)
    with pytest.raises(TwilioRestException) as failed:
        client.trunking.v1.trunks.create(domain_name="ambiguous.pstn.twilio.com")
    assert failed.value.status == 500
    # The create happened: a client that re-lists before trying again finds it.
    assert [t.domain_name for t in client.trunking.v1.trunks.list()] == [
        "ambiguous.pstn.twilio.com"
    ]
    standin.faults.concurrency_limit = 0
    with pytest.raises(TwilioRestException) as limited:
        client.trunking.v1.trunks.create(domain_name="limited.pstn.twilio.com")
    assert (limited.value.status, limited.value.code) == (429, 20429)
    standin.faults.concurrency_limit = None
    trunk = standin.account.find("Trunk")[0]
    standin.account.console_update("Trunk", trunk["sid"], secure=True)  # an edit in the console
    assert client.trunking.v1.trunks(trunk["sid"]).fetch().secure is True


def test_a_request_that_breaks_the_spec_is_refused_and_kept(standin: TwilioRestStandIn) -> None:
    """What an operator's own client would get wrong: a missing required parameter."""
    http = StandInHttpClient(standin.serve())
    created = http.request(
        "POST",
        "https://trunking.twilio.com/v1/Trunks",
        data={"DomainName": "spec.pstn.twilio.com"},
        auth=(standin.account.account_sid, standin.account.auth_token),
    )
    sid = json.loads(created.text)["sid"]
    refused = http.request(
        "POST",
        f"https://trunking.twilio.com/v1/Trunks/{sid}/OriginationUrls",
        data={"SipUrl": "sip:192.0.2.1", "FriendlyName": "x", "Priority": "1", "Enabled": "true"},
        auth=(standin.account.account_sid, standin.account.auth_token),
    )
    assert refused.status_code == 400
    assert len(standin.violations) == 1 and "CreateOriginationUrl request" in standin.violations[0]
    standin.violations.clear()  # seen: the fixture checks that nothing else broke the spec
