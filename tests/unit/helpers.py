"""Helpers the unit tests share (fixtures, builders, waits)."""

import asyncio
from collections.abc import Callable
from typing import Any

from trunk_operator.core.plan import Inputs, Resource, plan_namespace
from trunk_operator.kube.api import SecretRead
from trunk_operator.kube.client import KubeError
from trunk_operator.runtime.controller import Controller
from trunk_operator.runtime.pod_workers import PodWorker


def plan_with_two_trunks():
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


class FakeKube:
    """Records the controller's API calls; no cluster. (The real calls are exercised by the
    integration tier.)"""

    def __init__(self, secret: dict[str, str]) -> None:
        self.secret = secret
        self.reads = 0
        self.during_read = lambda: None
        self.during_write = lambda: None
        self.statuses: dict[str, dict] = {}
        self.finalizers: dict[str, list[str]] = {}
        self.events: list[str] = []
        self.refuse_writes: set[str] = set()
        self.during_status = lambda name: None

    def read_secret(self, namespace: str, name: str) -> SecretRead | None:
        self.reads += 1
        self.during_read()
        return SecretRead(dict(self.secret), str(self.reads))

    def write_rendered(self, owner, public, secret, written=None) -> None:
        self.during_write()
        if owner.name in self.refuse_writes:
            raise KubeError("POST /api/v1/namespaces/ns/configmaps: API error 422", 422)

    def patch_status(self, plural: str, namespace: str, name: str, status: dict) -> None:
        self.statuses[name] = status
        self.during_status(name)

    def event(self, owner: object, event_type: str, reason: str, message: str) -> None:
        self.events.append(reason)

    def set_finalizers(self, plural: str, namespace: str, name: str, finalizers, rv) -> None:
        self.finalizers[name] = finalizers


def trunk_body(name: str, generation: int = 1, **spec: Any) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name, "generation": generation},
        "spec": {
            "terminationHost": f"{name}.pstn.twilio.com",
            "credentials": {"secretName": "sip"},
            **spec,
        },
    }


class NoDelivery(Controller):
    """Pod workers that never run: the test plays the deliveries itself."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)

        async def idle(namespace: str, worker: PodWorker) -> None:
            await asyncio.Event().wait()

        self.pods._deliver_loop = idle  # type: ignore[method-assign]


def pod_body(name: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": {"app": "asterisk"}},
        "spec": {"containers": [{"name": "asterisk"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "asterisk", "ready": True, "containerID": f"containerd://{name}"}
            ],
        },
    }


def ready(status: dict) -> tuple[str, str, int]:
    condition = status["conditions"][0]
    return condition["status"], condition["reason"], status["observedGeneration"]


class GateKube(FakeKube):
    """Also records the pods' readiness-gate PATCHes."""

    def __init__(self) -> None:
        super().__init__({"username": "u", "password": "p"})
        self.gates: list[tuple[str, str]] = []

    def set_pod_condition(self, namespace: str, pod: str, condition: dict[str, Any]) -> None:
        self.gates.append((pod, condition["status"]))

    def pod_exec(self, namespace: str, pod: str, container: str) -> object:
        return object()


def one_pod(during_status: Callable[[str], None] = lambda name: None) -> tuple[GateKube, Any]:
    """A GateKube calling `during_status` with the name of each status written, and a
    controller with one pod on it."""
    kube = GateKube()
    kube.during_status = during_status
    ctl = NoDelivery(kube)
    ctl.upsert_pod(pod_body("asterisk-0"))
    return kube, ctl


def recording(writes: list[str]) -> Any:
    """A controller with one pod whose status writes append their Ready reason to `writes`."""
    kube, ctl = one_pod(lambda name: writes.append(ready(kube.statuses[name])[1]))
    return ctl
