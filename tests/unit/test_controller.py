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


class FakeKube:
    """Records the controller's API calls; no cluster. (The real calls are exercised by the
    integration tier.)"""

    def __init__(self, secret: dict[str, str]) -> None:
        self.secret = secret
        self.reads = 0
        self.during_read = lambda: None
        self.statuses: dict[str, dict] = {}
        self.finalizers: dict[str, list[str]] = {}

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads += 1
        self.during_read()
        return dict(self.secret)

    def write_rendered(self, owner, public, secret) -> None:  # type: ignore[no-untyped-def]
        pass

    def patch_status(self, plural: str, namespace: str, name: str, status: dict) -> None:
        self.statuses[name] = status

    def event(self, *args: object) -> None:
        pass

    def set_finalizers(self, plural: str, namespace: str, name: str, finalizers, rv) -> None:  # type: ignore[no-untyped-def]
        self.finalizers[name] = finalizers


def trunk_body(name: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name, "generation": 1},
        "spec": {
            "terminationHost": f"{name}.pstn.twilio.com",
            "credentials": {"secretName": "sip"},
        },
    }


def test_a_secret_event_during_the_read_neither_loses_nor_caches_it() -> None:
    import asyncio

    from trunk_operator.controller import Controller

    async def scenario() -> None:
        kube = FakeKube({"username": "u", "password": "p"})
        controller = Controller(kube)  # type: ignore[arg-type]
        controller.upsert("TwilioTrunk", trunk_body("acme"))
        kube.during_read = lambda: controller.secret_changed("ns", "sip")  # rotation mid-read
        await controller.reconcile_namespace("ns")
        assert not controller.plans["ns"].outcomes["TwilioTrunk/acme"].problems
        assert ("ns", "sip") not in controller.secrets  # may be stale: read again next time
        kube.during_read = lambda: None
        await controller.reconcile_namespace("ns")
        await controller.reconcile_namespace("ns")
        assert kube.reads == 2  # cached after a clean read
        ready = kube.statuses["acme"]["conditions"][0]
        assert (ready["type"], ready["reason"]) == ("Ready", "NoAsteriskPods")
        assert kube.finalizers["acme"] == ["trunks.asterisk-operator.dev/delivered"]

    asyncio.run(scenario())
