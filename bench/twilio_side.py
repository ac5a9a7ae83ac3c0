"""Measurement 11: the Twilio end of trunks, through the operator process.

One Asterisk container with its exec pod, the operator as a subprocess, and Twilio's REST API
as the stand-in built from its specs (testbed/twilio_rest.py, TRUNKOP_TWILIO_BASE_URL):
- a password rotation: the trunk's Secret changed -> Twilio holds the new password (under the
  next username) and Asterisk serves it, for a trunk with spec.twilio; beside it, the floor:
  the same Secret change of a trunk without spec.twilio (Asterisk's end alone). The opted-in
  trunk waits `credentialPropagationSeconds` on purpose (the argument, default 1 s here; 30 s
  by default): the figure shows it, and what the rotation costs beyond it;
- at steady state, the Twilio API requests per trunk per hour (resyncs only), from the
  stand-in's own log over a window of several resyncs.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from rig import Rig, log, percentile, trunk_spec

from testbed.twilio_rest import TwilioRestStandIn
from trunk_operator.core.models import GROUP, VERSION


def served_password(rig: Rig, endpoint: str) -> str:
    for line in rig.pods[0].rx(f"pjsip show auth {endpoint}-auth").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "password":
            return value.strip()
    return ""


def put_secret(rig: Rig, name: str, password: str) -> None:
    body = {"stringData": {"username": f"{name}-user", "password": password}}
    rig.core.patch_namespaced_secret(name, rig.namespace, body)


def password() -> str:
    return f"Bench-{uuid.uuid4().hex}"  # Twilio's rule: length, a digit, both cases


def wait(check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the rotation did not land")
        time.sleep(0.05)


def account(rig: Rig, standin: TwilioRestStandIn, resync: int) -> None:
    rig.core.create_namespaced_secret(
        rig.namespace,
        {
            "metadata": {"name": "twilio-api"},
            "stringData": {"authToken": standin.account.auth_token},
        },
    )
    rig.custom.create_namespaced_custom_object(
        GROUP, VERSION, rig.namespace, "twilioaccounts",
        {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TwilioAccount",
            "metadata": {"name": "main"},
            "spec": {
                "accountSid": standin.account.account_sid, "secretName": "twilio-api",
                "resyncSeconds": resync,
            },
        },
    )  # fmt: skip


def trunks(rig: Rig, count: int, propagation: int) -> list[str]:
    """`plain` (no spec.twilio) and `count` opted-in trunks tw-N, each with its Secret."""
    names = ["plain", *(f"tw-{i}" for i in range(count))]
    for index, name in enumerate(names):
        rig.core.create_namespaced_secret(
            rig.namespace,
            {
                "metadata": {"name": f"{name}-sip"},
                "stringData": {"username": f"{name}-sip-user", "password": password()},
            },
        )
        spec = trunk_spec(index, name, f"{name}-sip")
        spec["terminationHost"] = f"{name}.pstn.twilio.com"
        if name != "plain":
            spec["twilio"] = {
                "accountRef": {"name": "main"},
                "credentialPropagationSeconds": propagation,
                "rotationGraceSeconds": 0,
            }
        rig.create("twiliotrunks", "TwilioTrunk", name, spec)
    return names


def rotation(rig: Rig, standin: TwilioRestStandIn, name: str, endpoint: str) -> float:
    """Seconds from the Secret's change until both ends serve the new password (Twilio: only
    for an opted-in trunk)."""
    new = password()
    started = time.monotonic()
    put_secret(rig, f"{name}-sip", new)
    domain = f"{name}.pstn.twilio.com"
    opted = name != "plain"
    wait(
        lambda: (
            (not opted or new in standin.account.credentials_of_domain(domain).values())
            and served_password(rig, endpoint) == new
        )
    )
    return time.monotonic() - started


def run(args: Any, workdir: Any, section: Any) -> None:
    standin = TwilioRestStandIn()
    standin.serve()
    try:
        with Rig("twilio", workdir, args.observe_interval) as rig:
            rig.add_pods(1, {})
            rig.start_operator(env={"TRUNKOP_TWILIO_BASE_URL": standin.url})
            account(rig, standin, args.twilio_resync)
            names = trunks(rig, args.twilio_trunks, args.twilio_propagation)
            endpoints = {n: n.upper() for n in names}
            for name in names:
                wait(lambda n=name: served_password(rig, endpoints[n]) != "", timeout=300)
            log("[twilio] every trunk served; rotations")
            _rotations(args, rig, standin, endpoints, section)
            _steady(args, standin, len(names) - 1, section)
    finally:
        standin.close()
    if standin.violations:
        section.notes.append(f"spec violations: {standin.violations[:3]}")


def _rotations(
    args: Any, rig: Rig, standin: TwilioRestStandIn, endpoints: dict[str, str], section: Any
) -> None:
    floor, opted = [], []
    for _ in range(args.twilio_rotations):  # interleaved: both meet the same conditions
        floor.append(rotation(rig, standin, "plain", endpoints["plain"]))
        opted.append(rotation(rig, standin, "tw-0", endpoints["tw-0"]))
    n = len(opted)
    for label, values in (("floor: a trunk without spec.twilio (Asterisk only)", floor),
                          ("spec.twilio: Twilio, then Asterisk", opted)):  # fmt: skip
        section.add(f"{label}: p50 (n={n})", percentile(values, 50), "s")
        section.add(f"{label}: p95 (n={n})", percentile(values, 95), "s")
    beyond = statistics.median(opted) - args.twilio_propagation
    section.add(
        "spec.twilio beyond its propagation wait, p50", beyond, "s",
        note=f"ratio to the floor {beyond / statistics.median(floor):.2f}",
    )  # fmt: skip


def _steady(args: Any, standin: TwilioRestStandIn, opted: int, section: Any) -> None:
    time.sleep(args.twilio_resync)  # the rotations' follow-up syncs are over
    before = len(standin.requests)
    window = args.twilio_resync * args.twilio_resyncs
    time.sleep(window)
    requests = len(standin.requests) - before
    per_hour = requests / opted * 3600 / window
    section.add(
        f"Twilio API requests per trunk per hour (resyncSeconds {args.twilio_resync})",
        per_hour, "",
        note=f"{requests} requests for {opted} trunks in {window} s;"
        f" at the default resyncSeconds 300: {per_hour * args.twilio_resync / 300:.0f}",
    )  # fmt: skip
