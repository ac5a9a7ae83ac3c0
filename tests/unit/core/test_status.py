from dataclasses import replace

from trunk_operator.core.asterisk_output import Contact, Endpoint, Listing
from trunk_operator.core.models import DIDSegmentStatus, TwilioTrunkStatus
from trunk_operator.core.plan import Outcome, Problem
from trunk_operator.core.status import CRView, PodDelivery, reduce_status, with_transition_times
from trunk_operator.core.verify import Observation

TRUNK = CRView("TwilioTrunk/acme", 3, "h", "ACME", frozenset({"from-twilio"}), True)
MISSING_TRANSPORT = Problem("TransportNotFound", "transport transport-x does not exist in Asterisk")
REFUSED = Problem("AsteriskRejected", "endpoint ACME is not loaded")


def conditions(status: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def pod(
    delivered: str | None = "h", contact: str = "Avail", contexts=("from-twilio",), rtt: float = 5.0
) -> PodDelivery:
    endpoint = Endpoint("ACME", "Not in use", contacts=[Contact("ACME-aor", "sip:x", contact, rtt)])
    return PodDelivery(
        "asterisk-0",
        desired={TRUNK.ref: "h"},
        delivered={TRUNK.ref: delivered} if delivered else {},
        observation=Observation(
            Listing(),
            delivered,
            endpoints={"ACME": endpoint},
            contexts=set(contexts),
            contexts_checked=frozenset({"from-twilio"}),
        ),
    )


def test_delivered_everywhere_and_reachable_is_ready() -> None:
    status = reduce_status(TRUNK, Outcome(), [pod()])
    assert conditions(status) == {
        "Ready": ("True", "Ready"),
        "Rendered": ("True", "Rendered"),
        "Delivered": ("True", "Delivered"),
        "Reachable": ("True", "ContactAvailable"),
        "Degraded": ("False", "AsExpected"),
        "Reconciling": ("False", "Settled"),
        "Stalled": ("False", "NotStalled"),
    }
    assert status["observedGeneration"] == 3
    assert status["endpointState"] == "Not in use"
    assert status["pods"][0]["contacts"] == [{"uri": "sip:x", "status": "Avail"}]


def test_a_new_qualify_rtt_alone_does_not_change_the_status() -> None:
    """Each status change is an API write: RTTs change at every qualify of every trunk."""
    assert reduce_status(TRUNK, Outcome(), [pod(rtt=5.0)]) == reduce_status(
        TRUNK, Outcome(), [pod(rtt=7.5)]
    )


def test_blocking_problem_wins_the_ready_reason_and_keeps_last_good_config() -> None:
    outcome = Outcome(problems=[Problem("SecretNotFound", "Secret acme-sip does not exist")])
    status = reduce_status(TRUNK, outcome, [pod()])
    assert conditions(status)["Ready"] == ("False", "SecretNotFound")
    assert conditions(status)["Degraded"] == ("True", "SecretNotFound")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "last good configuration" in degraded["message"]
    # A Secret may still appear (External Secrets Operator creates it later): not stalled.
    assert conditions(status)["Stalled"] == ("False", "NotStalled")
    assert conditions(status)["Reconciling"] == ("False", "Settled")


def test_another_resources_change_does_not_make_this_one_pending() -> None:
    busy = pod()
    # The pod's set changes, this trunk's does not.
    busy = replace(busy, desired={**busy.desired, "TwilioTrunk/other": "new"})
    assert conditions(reduce_status(TRUNK, Outcome(), [busy]))["Ready"] == ("True", "Ready")


def test_a_version_the_pod_has_is_pending_while_a_delivery_brings_another() -> None:
    """The invariant test's m3 (CI, 2026-11-28): codecs ulaw (generation 1), ulaw,alaw (2),
    ulaw again (3) while 2 was being delivered. Generation 3's files are generation 1's, which
    the pod had: "Ready for 3" was written while Asterisk took generation 2."""
    changing = pod()
    changing = replace(changing, delivering={TRUNK.ref: "generation-2"})
    assert conditions(reduce_status(TRUNK, Outcome(), [changing]))["Ready"] == (
        "False",
        "Delivering",
    )
    # A delivery that brings the same version of this trunk.
    changing = replace(changing, delivering={TRUNK.ref: "h", "TwilioTrunk/other": "new"})
    assert conditions(reduce_status(TRUNK, Outcome(), [changing]))["Ready"] == ("True", "Ready")


def test_pending_failed_and_podless_deliveries() -> None:
    assert conditions(reduce_status(TRUNK, Outcome(), []))["Ready"] == ("False", "NoAsteriskPods")
    assert conditions(reduce_status(TRUNK, Outcome(), [pod(delivered=None)]))["Ready"] == (
        "False",
        "Delivering",
    )
    failed = pod()
    failed = replace(failed, problems={"TwilioTrunk/acme": [REFUSED, MISSING_TRANSPORT]})
    assert conditions(reduce_status(TRUNK, Outcome(), [failed]))["Delivered"] == (
        "False",
        "TransportNotFound",
    )


def test_unreachable_and_missing_context_degrade_but_do_not_unready() -> None:
    status = reduce_status(TRUNK, Outcome(), [pod(contact="Unavail", contexts=())])
    got = conditions(status)
    assert got["Ready"] == ("True", "Ready")
    assert got["Reachable"] == ("False", "EndpointUnavailable")
    assert got["Degraded"] == ("True", "ContextMissing")


def test_transition_time_only_moves_when_status_changes() -> None:
    old = {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t0"}]}
    same = with_transition_times({"conditions": [{"type": "Ready", "status": "True"}]}, old, "t1")
    flipped = with_transition_times(
        {"conditions": [{"type": "Ready", "status": "False"}]}, old, "t1"
    )
    assert same["conditions"][0]["lastTransitionTime"] == "t0"
    assert flipped["conditions"][0]["lastTransitionTime"] == "t1"


def test_kstatus_reconciling_while_delivering_and_stalled_on_what_needs_a_change() -> None:
    delivering = reduce_status(TRUNK, Outcome(), [pod(delivered="old")])
    assert conditions(delivering)["Reconciling"] == ("True", "Delivering")
    assert conditions(delivering)["Stalled"] == ("False", "NotStalled")

    conflict = Outcome(problems=[Problem("EndpointNameConflict", "endpoint name 'ACME' is used")])
    stalled = reduce_status(TRUNK, conflict, [pod()])
    assert conditions(stalled)["Stalled"] == ("True", "EndpointNameConflict")
    assert conditions(stalled)["Reconciling"] == ("False", "Settled")

    rejected = pod()
    rejected = replace(rejected, problems={TRUNK.ref: [MISSING_TRANSPORT]})
    refused = reduce_status(TRUNK, Outcome(), [rejected])
    assert conditions(refused)["Stalled"] == ("True", "TransportNotFound")


def test_another_resources_delivery_leaves_this_status_as_it_was() -> None:
    before, after = pod(), pod()
    after = replace(after, delivered={**after.delivered, "TwilioTrunk/other": "new"})
    assert reduce_status(TRUNK, Outcome(), [before]) == reduce_status(TRUNK, Outcome(), [after])
    assert reduce_status(TRUNK, Outcome(), [after])["pods"][0]["deliveredHash"] == "h"


def test_every_status_the_reducer_builds_is_one_the_crd_takes() -> None:
    """The reducer builds plain values; the CRD's status schema comes from the models. A field
    or a reason the models do not allow fails here (extra fields are forbidden there)."""
    segment = CRView("DIDSegment/main", 2, "s", None, frozenset({"did-main"}), False)
    blocked = Outcome(problems=[Problem("SecretNotFound", "Secret acme-sip does not exist")])
    conflicted = Outcome(
        problems=[Problem("DIDConflict", "1 DIDs are already routed", blocking=False)],
        conflicts=["+15550000001"],
        conflict_count=1,
    )
    refused = replace(pod(), problems={TRUNK.ref: [MISSING_TRANSPORT]})
    trunk_cases = [
        (Outcome(secret_version="42"), [pod()]),
        (blocked, [pod(contact="Unavail", contexts=())]),
        (Outcome(), []),
        (Outcome(), [refused, pod(delivered=None)]),
    ]
    for outcome, pods in trunk_cases:
        status = with_transition_times(reduce_status(TRUNK, outcome, pods, 3), None, "t")
        TwilioTrunkStatus.model_validate(status)
    for outcome in (Outcome(), conflicted, blocked):
        status = with_transition_times(reduce_status(segment, outcome, [pod()], 3), None, "t")
        DIDSegmentStatus.model_validate(status)
