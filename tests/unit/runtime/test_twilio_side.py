"""The Twilio side of opted-in trunks (runtime/twilio_side.py) against the REST stand-in built
from Twilio's specs (testbed/twilio_rest.py), with the Kubernetes side faked and the clock
driven by the test: creation, adoption, rotation in its order, restart, drift, faults."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.twilio_rest import TwilioRestStandIn
from trunk_operator.core.models import TwilioTrunkSpec, twilio_credential_secret
from trunk_operator.core.plan import TRUNK, Plan, Resource, Tracked
from trunk_operator.core.status import TwilioView
from trunk_operator.kube.api import NotOurs, Owner, SecretRead
from trunk_operator.runtime.blocking import BlockingCalls
from trunk_operator.runtime.store import Store
from trunk_operator.runtime.twilio_side import TwilioSide

NS, NAME, DOMAIN = "telephony", "acme", "acme.pstn.twilio.com"
PASSWORD, ROTATED = "Initial-Passw0rd", "Rotated-Passw0rd"
KEY = (NS, NAME)


class FakeKube:
    """Secrets by name, with resourceVersions; Events and status PATCHes recorded."""

    def __init__(self) -> None:
        self.secrets: dict[str, SecretRead] = {}
        self.version = 0
        self.events: list[tuple[str, str]] = []
        self.foreign: set[str] = set()  # Secrets of someone else

    def put(self, name: str, data: dict[str, str]) -> None:
        self.version += 1
        self.secrets[name] = SecretRead(dict(data), str(self.version))

    def read_secret(self, namespace: str, name: str) -> SecretRead | None:
        return self.secrets.get(name)

    def write_credential_secret(self, owner: Owner, name: str, data: dict[str, str]) -> None:
        if name in self.foreign:
            raise NotOurs(f"Secret {name} exists and is not the operator's: rename it")
        self.put(name, data)

    def event(self, owner: Owner, kind: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    def patch_status(self, plural: str, namespace: str, name: str, status: Any) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.written: list[str] = []
        self.served: str | None = None
        self.status: dict[str, Any] = {}  # the trunk's status.twilio as written

    async def twilio_changed(self, namespace: str) -> None:
        pass

    def credential_written(self, namespace: str, secret: str) -> None:
        self.written.append(secret)

    def served_secret(self, namespace: str, trunk: str) -> str | None:
        return self.served

    def twilio_status(self, namespace: str, trunk: str) -> dict[str, Any]:
        return self.status


class Rig:
    def __init__(self, standin: TwilioRestStandIn, base: str) -> None:
        self.standin, self.base = standin, base
        self.kube, self.events, self.now = FakeKube(), Events(), 1000.0
        self.store = Store()
        self.loop = asyncio.new_event_loop()  # the one the clients' sessions live in
        self.kube.put("twilio-api", {"authToken": standin.account.auth_token})
        self.kube.put("acme-sip", {"username": "acme-user", "password": PASSWORD})
        self.spec(propagation=10, grace=60)
        self.side = self.new_side()

    def new_side(self) -> TwilioSide:
        """The operator (again, after a restart: nothing kept in memory)."""
        if hasattr(self, "side"):
            self.loop.run_until_complete(self.side.stop())
        side = TwilioSide(
            self.kube,  # type: ignore[arg-type]
            BlockingCalls(),
            self.store,
            self.events,
            self.base,
            clock=lambda: self.now,
        )
        side.upsert_account(
            {
                "metadata": {"namespace": NS, "name": "main", "generation": 1},
                "spec": {
                    "accountSid": self.standin.account.account_sid,
                    "secretName": "twilio-api",
                },
            }
        )
        return side

    def spec(self, propagation: int, grace: int, **twilio: Any) -> None:
        spec = TwilioTrunkSpec.model_validate(
            {
                "terminationHost": DOMAIN,
                "credentials": {"secretName": "acme-sip"},
                "twilio": {
                    "accountRef": {"name": "main"},
                    "credentialPropagationSeconds": propagation,
                    "rotationGraceSeconds": grace,
                    **twilio,
                },
            }
        )
        self.store.plans[NS] = Plan({}, {}, {NAME: spec})
        self.store.crs[NS][f"{TRUNK}/{NAME}"] = Tracked(Resource(TRUNK, NAME, "", {}), "uid-1")

    def sync(self, after: float = 0.0) -> TwilioView:
        self.now += after
        self.loop.run_until_complete(self.side._run(KEY))
        return self.store.twilio[KEY]

    def close(self) -> None:
        self.loop.run_until_complete(self.side.stop())
        self.loop.close()

    def active(self) -> dict[str, str]:
        return self.kube.secrets[twilio_credential_secret(NAME)].data

    def usernames(self) -> list[str]:
        return sorted(c["username"] for c in self.standin.account.find("SipCredential"))


@pytest.fixture
def rig() -> Iterator[Rig]:
    standin = TwilioRestStandIn()
    rig = Rig(standin, standin.serve())
    yield rig
    rig.close()
    standin.close()
    assert standin.violations == []


def test_an_opted_in_trunk_gets_its_twilio_end_and_asterisk_waits_for_the_credential(
    rig: Rig,
) -> None:
    view = rig.sync()
    assert (view.synced, view.reason, view.serves) == (True, "Rotating", False)
    (trunk,) = rig.standin.account.find("Trunk")
    assert (trunk["domain_name"], trunk["friendly_name"]) == (DOMAIN, f"trunkop:{NS}/{NAME}")
    (owned,) = rig.standin.account.find("SipCredentialList")
    assert (
        rig.standin.account.find("CredentialList", trunk_sid=trunk["sid"])[0]["sid"] == owned["sid"]
    )
    assert rig.standin.account.credentials_of_domain(DOMAIN) == {"acme-user-1": PASSWORD}
    assert twilio_credential_secret(NAME) not in rig.kube.secrets  # not before propagation
    view = rig.sync(after=10)
    assert rig.active() == {"username": "acme-user-1", "password": PASSWORD, "generation": "1"}
    assert rig.events.written == [twilio_credential_secret(NAME)]
    view = rig.sync(after=1)
    assert (view.synced, view.reason, view.serves) == (True, "Synced", True)
    assert view.fields["trunkSid"] == trunk["sid"] and view.fields["generation"] == 1
    assert PASSWORD not in repr(view) and all(PASSWORD not in m for _, m in rig.kube.events)


def test_a_rotation_reaches_twilio_first_then_asterisk_and_the_old_credential_goes_last(
    rig: Rig,
) -> None:
    rig.sync()
    rig.sync(after=10)
    rig.sync(after=1)
    rig.kube.put("acme-sip", {"username": "acme-user", "password": ROTATED})
    view = rig.sync(after=1)
    assert view.reason == "Rotating" and not view.serves
    assert rig.standin.account.credentials_of_domain(DOMAIN) == {
        "acme-user-1": PASSWORD,
        "acme-user-2": ROTATED,
    }
    assert rig.active()["username"] == "acme-user-1"  # Asterisk keeps the one Twilio had
    rig.sync(after=5)
    assert rig.active()["username"] == "acme-user-1"
    rig.sync(after=5)
    assert rig.active() == {"username": "acme-user-2", "password": ROTATED, "generation": "2"}
    view = rig.sync(after=1)
    assert view.serves and rig.usernames() == ["acme-user-1", "acme-user-2"]  # not served yet
    assert "rotation" in view.fields and view.fields["rotation"] is None  # cleared, not left
    rig.events.served = rig.kube.secrets[twilio_credential_secret(NAME)].resource_version
    rig.sync(after=1)
    assert rig.usernames() == ["acme-user-1", "acme-user-2"]  # served: the grace starts
    rig.sync(after=59)
    assert rig.usernames() == ["acme-user-1", "acme-user-2"]
    rig.sync(after=1)
    assert rig.usernames() == ["acme-user-2"]
    reasons = [reason for reason, _ in rig.kube.events]
    assert reasons[-3:] == [
        "TwilioCredentialAdded",
        "TwilioCredentialSwitched",
        "TwilioCredentialRemoved",
    ]


def test_a_weak_password_changes_neither_side(rig: Rig) -> None:
    rig.sync()
    rig.sync(after=10)
    rig.kube.put("acme-sip", {"username": "acme-user", "password": "short1A"})
    view = rig.sync(after=1)
    assert (view.synced, view.reason, view.serves) == (False, "WeakPassword", False)
    assert "at least 12 characters" in view.message and "short1A" not in view.message
    assert rig.usernames() == ["acme-user-1"] and rig.active()["password"] == PASSWORD


def test_an_operator_restarted_mid_rotation_finishes_it_without_a_second_credential(
    rig: Rig,
) -> None:
    rig.sync()
    rig.sync(after=10)
    rig.kube.put("acme-sip", {"username": "acme-user", "password": ROTATED})
    rig.sync(after=1)  # acme-user-2 is at Twilio; then the operator dies
    rig.side = rig.new_side()
    view = rig.sync(after=1)
    assert view.reason == "Rotating" and rig.active()["username"] == "acme-user-1"
    # Its password is set again (what it holds is unknown), and the wait counts from then.
    assert rig.usernames() == ["acme-user-1", "acme-user-2"]
    rig.sync(after=9)
    assert rig.active()["username"] == "acme-user-1"
    rig.sync(after=1)
    assert rig.active()["username"] == "acme-user-2"


def test_a_credential_deleted_in_the_console_is_put_back(rig: Rig) -> None:
    rig.sync()
    rig.sync(after=10)
    (credential,) = rig.standin.account.find("SipCredential")
    rig.standin.account.console_delete("SipCredential", credential["sid"])
    rig.sync(after=1)
    assert rig.standin.account.credentials_of_domain(DOMAIN) == {"acme-user-1": PASSWORD}
    assert "TwilioCredentialRestored" in [reason for reason, _ in rig.kube.events]


def test_a_trunk_made_by_hand_is_adopted_and_one_of_another_resource_is_left_alone(
    rig: Rig,
) -> None:
    account = rig.standin.account
    with account.lock:
        sid = account.create("Trunk", {"domain_name": DOMAIN, "friendly_name": "by hand"}, {})
    rig.sync()
    assert [t["sid"] for t in account.find("Trunk")] == [sid]
    assert account.find("Trunk")[0]["friendly_name"] == f"trunkop:{NS}/{NAME}"
    account.console_update("Trunk", sid, friendly_name="trunkop:other/acme")
    view = rig.sync(after=1)
    assert (view.synced, view.reason) == (False, "TwilioTrunkOwnedElsewhere")
    assert account.find("Trunk")[0]["friendly_name"] == "trunkop:other/acme"


def test_creates_answered_500_after_they_were_applied_leave_no_duplicate(rig: Rig) -> None:
    for operation in ("CreateTrunk", "CreateSipCredentialList", "CreateSipCredential"):
        rig.standin.faults.fail(operation, 500, applied=True)
    view = rig.sync()
    assert view.synced, view.message
    assert len(rig.standin.account.find("Trunk")) == 1
    assert len(rig.standin.account.find("SipCredentialList")) == 1
    assert rig.usernames() == ["acme-user-1"]


def test_refused_api_credentials_leave_asterisk_as_it_is(rig: Rig) -> None:
    rig.sync()
    rig.sync(after=10)
    assert rig.sync(after=1).serves
    rig.kube.put("twilio-api", {"authToken": "not-the-token"})
    view = rig.sync(after=1)
    assert (view.synced, view.reason, view.serves) == (False, "TwilioCredentialsRefused", True)
    assert rig.active()["username"] == "acme-user-1"


def many(rig: Rig, count: int) -> list[tuple[str, str]]:
    """`count` opted-in trunks t00.. with their Secrets, in the plan."""
    base = rig.store.plans[NS].twilio_specs[NAME]
    specs = {}
    for i in range(count):
        name = f"t{i:02d}"
        rig.kube.put(f"{name}-sip", {"username": f"{name}-user", "password": PASSWORD})
        specs[name] = base.model_copy(
            update={
                "termination_host": f"{name}.pstn.twilio.com",
                "credentials": base.credentials.model_copy(update={"secret_name": f"{name}-sip"}),
            }
        )
        rig.store.crs[NS][f"{TRUNK}/{name}"] = Tracked(Resource(TRUNK, name, "", {}), name)
    rig.store.plans[NS] = Plan({}, {}, specs)
    return [(NS, name) for name in specs]


def sync_all(rig: Rig, keys: list[tuple[str, str]]) -> list[TwilioView]:
    async def run() -> None:
        for key in keys:
            rig.side.touch(*key)
        await asyncio.gather(*(rig.side._run(key) for key in keys))

    rig.loop.run_until_complete(run())
    return [rig.store.twilio[key] for key in keys]


def test_fifty_creates_answered_500_after_they_were_applied_leave_no_duplicate(rig: Rig) -> None:
    keys = many(rig, 50)
    rig.standin.faults.fail("CreateTrunk", 500, applied=True, times=50)
    rig.standin.faults.fail("CreateSipCredentialList", 500, applied=True, times=50)
    views = sync_all(rig, keys)
    assert all(v.synced for v in views), [v.message for v in views if not v.synced][:3]
    assert not rig.standin.faults.scripted.get("CreateTrunk")  # every create met its fault
    domains = [t["domain_name"] for t in rig.standin.account.find("Trunk")]
    assert len(domains) == len(set(domains)) == 50
    tags = [c["friendly_name"] for c in rig.standin.account.find("SipCredentialList")]
    assert len(tags) == len(set(tags)) == 50


def test_a_429_storm_converges(rig: Rig) -> None:
    keys = many(rig, 20)
    rig.standin.faults.concurrency_limit = 1
    views = sync_all(rig, keys)
    assert all(v.synced for v in views), [v.message for v in views if not v.synced][:3]
    assert any(status == 429 for _, _, status in rig.standin.requests)
    assert len(rig.standin.account.find("Trunk")) == 20


def test_a_resync_looks_at_its_own_objects_only(rig: Rig) -> None:
    """Four requests per trunk, whatever the account holds: a listing of the account's trunks
    and lists would grow with every other trunk."""
    rig.sync()
    rig.sync(after=10)
    view = rig.sync(after=1)
    rig.standin.requests.clear()
    assert rig.sync(after=300).serves
    assert sorted(op for op, _, _ in rig.standin.requests) == [
        "FetchSipCredentialList",
        "FetchTrunk",
        "ListCredentialList",
        "ListSipCredential",
    ]
    # After a restart, the SIDs come from the status the trunk was last written with.
    rig.events.status = dict(view.fields)
    rig.side = rig.new_side()
    rig.store.twilio.clear()  # what the operator knew died with it
    rig.standin.requests.clear()
    assert rig.sync(after=1).serves
    assert "ListTrunk" not in [op for op, _, _ in rig.standin.requests]


def test_a_secret_of_someone_else_under_the_credentials_name_is_left_alone(rig: Rig) -> None:
    rig.kube.foreign.add(twilio_credential_secret(NAME))
    rig.sync()
    view = rig.sync(after=10)
    assert (view.synced, view.reason) == (False, "CredentialSecretTaken")
    assert twilio_credential_secret(NAME) not in rig.kube.secrets


def test_the_ip_access_list_holds_exactly_the_specs_cidrs(rig: Rig) -> None:
    account = rig.standin.account

    def addresses() -> set[tuple[str, int]]:
        return {(a["ip_address"], a["cidr_prefix_length"]) for a in account.find("SipIpAddress")}

    rig.spec(10, 60, ipAccessControl=["203.0.113.0/28", "198.51.100.7"])
    view = rig.sync()
    (acl,) = account.find("SipIpAccessControlList")
    assert acl["friendly_name"] == f"trunkop:{NS}/{NAME}"
    assert view.fields["ipAccessControlListSid"] == acl["sid"]
    (trunk,) = account.find("Trunk")
    assert [a["sid"] for a in account.find("IpAccessControlList", trunk_sid=trunk["sid"])] == [
        acl["sid"]
    ]
    assert addresses() == {("203.0.113.0", 28), ("198.51.100.7", 32)}
    rig.spec(10, 60, ipAccessControl=["198.51.100.7/32"])
    rig.sync(after=1)
    assert addresses() == {("198.51.100.7", 32)}
    rig.spec(10, 60)  # none: the list it made is emptied and no longer on the trunk
    rig.sync(after=1)
    assert addresses() == set() and len(account.find("SipIpAccessControlList")) == 1
    assert account.find("IpAccessControlList", trunk_sid=trunk["sid"]) == []


def test_twilio_unreachable_leaves_asterisk_serving_and_converges_after(rig: Rig) -> None:
    rig.sync()
    rig.sync(after=10)
    assert rig.sync(after=1).serves
    rig.standin.faults.unreachable = True
    rig.kube.put("acme-sip", {"username": "acme-user", "password": ROTATED})
    for _ in range(3):  # minutes of it: each sync retried later, with backoff
        view = rig.sync(after=60)
        assert (view.synced, view.reason, view.serves) == (False, "TwilioUnreachable", True)
    assert rig.active()["username"] == "acme-user-1"  # Asterisk keeps what Twilio holds
    rig.standin.faults.unreachable = False
    rig.sync(after=1)
    rig.sync(after=10)
    assert rig.active() == {"username": "acme-user-2", "password": ROTATED, "generation": "2"}
    assert rig.standin.account.credentials_of_domain(DOMAIN)["acme-user-2"] == ROTATED


def test_a_trunk_and_a_list_deleted_or_detached_in_the_console_are_put_back(rig: Rig) -> None:
    account = rig.standin.account
    rig.sync()
    rig.sync(after=10)
    (trunk,) = account.find("Trunk")
    (association,) = account.find("CredentialList", trunk_sid=trunk["sid"])
    detached = f"{trunk['sid']}/{association['sid']}"  # the stand-in's key of an association
    account.console_delete("CredentialList", detached)  # the list detached from the trunk
    assert account.credentials_of_domain(DOMAIN) == {}
    assert rig.sync(after=1).serves
    assert account.credentials_of_domain(DOMAIN) == {"acme-user-1": PASSWORD}
    account.console_delete("Trunk", trunk["sid"])
    view = rig.sync(after=1)
    (again,) = account.find("Trunk")
    assert again["sid"] != trunk["sid"] and view.fields["trunkSid"] == again["sid"]
    assert account.credentials_of_domain(DOMAIN) == {"acme-user-1": PASSWORD}
    assert "TwilioObjectReplaced" in [reason for reason, _ in rig.kube.events]
