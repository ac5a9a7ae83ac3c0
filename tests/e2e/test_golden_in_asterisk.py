"""The golden configurations, loaded into a real Asterisk 22 with the operator's own delivery.

No cluster here: the exec channel goes straight into the container, so a failure points at the
configuration or the delivery script, not at the platform.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from testbed.asterisk import AsteriskContainer
from testbed.sipp import SipMessage, TwilioCaller, TwilioStandIn
from tests.cases import ACCOUNT_SID_B, PASSWORD, Case, cases, large_case, trunk
from tests.conftest import STANDIN_IP
from tests.e2e.conftest import podman_exec
from trunk_operator.core import asterisk_output, verify
from trunk_operator.core.render import POD_FILES, aors, contexts_in
from trunk_operator.pod import channel

pytestmark = pytest.mark.e2e


def hosts_of(case: Case) -> dict[str, str]:
    return {h: STANDIN_IP for spec in case.trunks.values() for h in spec.edge_hosts()}


def with_a_broken_trunk(good: Case) -> Case:
    """`good` and a trunk Asterisk loads without a word though its transport does not exist:
    only the verification notices, and the delivery is rolled back."""
    broken = trunk(
        "broken.pstn.twilio.com",
        transport="transport-missing",
        inbound={"accountSid": ACCOUNT_SID_B},
        outbound={"context": "to-broken"},
    )
    return Case(trunks={**good.trunks, "broken": broken}, segments=good.segments)


def deliver(pbx: AsteriskContainer, case: Case) -> channel.DeliveryResult:
    """Verified in depth (codecs, encryption, context, username, password) for every trunk."""
    files = case.pod_files()
    expected = case.expected(files)
    probe = verify.Probe(
        frozenset(e.name for e in expected.endpoints), frozenset(expected.contexts)
    )
    return channel.deliver(podman_exec(pbx.name), files, expected, probe=probe)


@pytest.mark.parametrize("name", ["single-trunk", "two-trunks", "secure-trunk"])
def test_golden_config_loads_exactly_as_rendered(
    name: str, start_asterisk: Callable[..., AsteriskContainer]
) -> None:
    case = cases()[name]
    pbx = start_asterisk(f"golden-{name}", "127.0.10.21", hosts_of(case))
    result = deliver(pbx, case)
    assert result.ok, result.problems
    endpoints = asterisk_output.parse_endpoints(pbx.rx("pjsip show endpoints"))
    assert set(endpoints) == {spec.endpoint(n) for n, spec in case.trunks.items()}
    for trunk_name, spec in case.trunks.items():
        loaded = endpoints[spec.endpoint(trunk_name)]
        assert loaded.out_auths == [f"{spec.endpoint(trunk_name)}-auth"]
        assert loaded.aors == [a.id for a in aors(trunk_name, spec)]
        expected_contacts = {a.id: a.contact for a in aors(trunk_name, spec)}
        assert sorted(c.aor for c in loaded.contacts) == sorted(expected_contacts)
        assert all(
            asterisk_output.contact_matches(c, expected_contacts[c.aor]) for c in loaded.contacts
        )
        assert loaded.transport == spec.transport
        assert loaded.identifies == [f"{spec.endpoint(trunk_name)}-identify"]
        if spec.inbound.account_sid:
            assert loaded.matches == [f"X-Twilio-AccountSid: {spec.inbound.account_sid}"]
        else:
            assert len(loaded.matches) == 8
    contexts = asterisk_output.parse_contexts(pbx.rx("dialplan show"))
    assert contexts_in(case.files()) <= contexts


def test_call_authenticates_with_the_secrets_password_and_pool_caller_id(
    start_asterisk: Callable[..., AsteriskContainer],
    start_standin: Callable[..., TwilioStandIn],
) -> None:
    case = cases()["single-trunk"]
    standin = start_standin("acme-user", PASSWORD)
    pbx = start_asterisk("golden-call", "127.0.10.22", hosts_of(case))
    assert deliver(pbx, case).ok
    pbx.rx("channel originate Local/5551234567@TwilioDynamicIVR application Wait 1")
    standin.wait_for(lambda msgs: [m for m in msgs if m.method == "BYE"], timeout=30)
    first, second = standin.invites()[0], standin.invites()[-1]
    assert first.uri == "sip:+15551234567@acme.pstn.twilio.com"  # E.164 with +
    assert second.authorization and second.authorization["username"] == "acme-user"
    assert standin.verify_digest(PASSWORD), "the escaped password did not authenticate"
    assert 200 in [r.status for r in standin.responses(second.call_id)]
    assert first.from_user in {"+15551230001", "+15551230002"}  # from the caller-ID pool


def test_broken_trunk_is_rolled_back_and_the_previous_set_keeps_serving(
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    good = cases()["single-trunk"]
    pbx = start_asterisk("golden-rollback", "127.0.10.23", hosts_of(good))
    assert deliver(pbx, good).ok
    result = deliver(pbx, with_a_broken_trunk(good))
    assert not result.ok and result.rolled_back
    [refused] = [p for p in result.problems if "transport-missing does not exist" in p.message]
    assert refused.owners == ("TwilioTrunk/broken",)
    endpoints = asterisk_output.parse_endpoints(pbx.rx("pjsip show endpoints"))
    assert set(endpoints) == {"ACME"}


def test_files_the_operator_does_not_own_are_left_alone(
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    case = cases()["single-trunk"]
    pbx = start_asterisk("golden-owned", "127.0.10.24", hosts_of(case))
    pbx.write_file("/etc/asterisk/extensions.d/local.conf", "[local-ctx]\nexten => 1,1,Hangup()\n")
    assert deliver(pbx, case).ok
    assert "local-ctx" in asterisk_output.parse_contexts(pbx.rx("dialplan show"))
    assert pbx.read_file("/etc/asterisk/extensions.d/local.conf").startswith("[local-ctx]")


def test_large_segment_loads_in_smallcontexts_in(
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    case = large_case(100_000)
    pbx = start_asterisk("golden-large", "127.0.10.25", hosts_of(case))
    started = time.monotonic()
    result = deliver(pbx, case)
    took = time.monotonic() - started
    assert result.ok, result.problems
    print(f"100,000-DID segment: render+deliver+reload+verify {took:.1f} s")
    shown = pbx.rx("dialplan show +15550012345@trunkop-in-BULK-345")
    assert "+15550012345" in shown

    # A call to its last DID, as Twilio places it, is answered by the trunk's inbound context.
    pbx.write_file(
        "/etc/asterisk/extensions.d/local.conf",
        "[from-twilio]\nexten => _+X.,1,Set(DB(calls/last)=${EXTEN})\n same => n,Answer()\n"
        " same => n,Wait(5)\n",
    )
    pbx.rx("dialplan reload")
    call = TwilioCaller("127.0.0.32", "AC" + "0" * 32).call(
        pbx.bind, "+15550099999", "+15551110000"
    )
    assert call.status == 200
    assert "+15550099999" in pbx.rx("database get calls last")
    invite, answer = (
        next(m for m in call.messages if m.direction == "sent" and m.method == "INVITE"),
        next(m for m in call.messages if m.direction == "received" and m.status == 200),
    )
    print(f"100,000 DIDs loaded: INVITE -> 200 OK {_seconds(answer) - _seconds(invite):.3f} s")


def _seconds(message: SipMessage) -> float:
    """sipp's trace timestamp, `YYYY-MM-DD HH:MM:SS.ffffff`, as seconds of the day."""
    clock = message.timestamp.split()[-1]
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def test_an_endpoint_asterisk_keeps_at_its_old_version_is_caught_and_rolled_back(
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    """Asterisk retains the previous version of an object it cannot create ("Retaining
    existing configuration"), and the listing looks the same: only the endpoint's own
    options (`pjsip show endpoint`) tell that the new codecs were not taken."""
    good = cases()["single-trunk"]
    pbx = start_asterisk("golden-retained", "127.0.10.26", hosts_of(good))
    first = deliver(pbx, good)
    assert first.ok and first.observation is not None
    # New to this Asterisk: loaded as rendered or missing, so the listings suffice.
    assert first.observation.shown == {}
    changed = Case(
        trunks={"acme": good.trunks["acme"].model_copy(update={"codecs": ["alaw"]})},
        segments=good.segments,
    )
    files = changed.pod_files()
    path = POD_FILES[0]
    assert "dtmf_mode = rfc4733" in files[path]
    files[path] = files[path].replace("dtmf_mode = rfc4733", "dtmf_mode = rfc2833")  # refused
    expected = changed.expected(files)
    probe = verify.Probe(frozenset({"ACME"}))
    result = channel.deliver(podman_exec(pbx.name), files, expected, probe=probe)
    assert not result.ok and result.rolled_back
    assert any("codecs ('ulaw', 'alaw'), not ('alaw',)" in p.message for p in result.problems)
    # Without the in-depth check the same delivery passes: the listing alone cannot tell.
    assert result.observation is not None
    assert not verify.verify(expected, replace(result.observation, shown={}, details={}))


def test_one_script_at_a_time_in_a_pod(
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    """A delivery whose exec timed out keeps running in the pod: the next one waits for it
    (up to half its own timeout), then says why it cannot go on, rather than stage, reload
    or push beside it."""
    case = cases()["single-trunk"]
    pbx = start_asterisk("golden-lock", "127.0.10.25", hosts_of(case))
    files, expected = case.pod_files(), case.expected(case.pod_files())
    hold = f"mkdir -p {channel.STATE_DIR}; exec 9> {channel.LOCK}; flock 9; exec sleep"
    pbx.exec("sh", "-c", f"({hold} 3) > /dev/null 2>&1 &")  # a script still at work
    time.sleep(0.5)
    started = time.monotonic()
    assert channel.deliver(podman_exec(pbx.name), files, expected, timeout=20).ok
    assert time.monotonic() - started > 2  # it waited for the other one
    pbx.exec("sh", "-c", f"({hold} 15) > /dev/null 2>&1 &")
    time.sleep(0.5)
    with pytest.raises(channel.ExecError, match="another delivery still runs in this pod"):
        channel.deliver(podman_exec(pbx.name), files, expected, timeout=6)


def test_a_delivery_reads_at_most_fifty_changed_endpoints_in_depth(
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    """Sixty trunks changed at once: fifty read in depth, every object's presence from the
    listings (the observer audits the rest in depth over its rounds)."""
    sids = [f"AC{i:032d}" for i in range(60)]
    before = Case(
        {f"t{i:02d}": trunk("many.pstn.twilio.com", inbound={"accountSid": sid})
         for i, sid in enumerate(sids)}
    )  # fmt: skip
    after = Case(
        {name: spec.model_copy(update={"codecs": ["alaw"]}) for name, spec in before.trunks.items()}
    )
    pbx = start_asterisk("golden-many", "127.0.10.26", {"many.pstn.twilio.com": STANDIN_IP})
    pod_exec = podman_exec(pbx.name)
    assert channel.deliver(pod_exec, before.pod_files(), before.expected(before.pod_files())).ok
    files, expected = after.pod_files(), after.expected(after.pod_files())
    every = verify.Probe(frozenset(e.name for e in expected.endpoints))
    result = channel.deliver(pod_exec, files, expected, probe=every)
    assert result.ok and result.observation is not None, result.problems
    assert len(result.observation.shown) == channel.DETAILS_AT_MOST
    assert {"endpoints", "aors", "auths", "identifies"} <= result.observation.listing.read


# `asterisk -rx` behind `reader` for the first N runs of one command (N in /tmp/stalled-reads).
# `sleep 3; cat`: a reader that stalls (a loaded node); Asterisk gives each piece of output
# 100 ms, then drops it.
STALLED_READER = """#!/bin/sh
left=$(cat /tmp/stalled-reads 2>/dev/null || echo 0)
if [ "$*" = "-rx {command}" ] && [ "$left" -gt 0 ]; then
    echo $((left - 1)) > /tmp/stalled-reads
    /usr/sbin/asterisk "$@" | ({reader})
    exit
fi
exec /usr/sbin/asterisk "$@"
"""


def test_output_the_cli_cut_short_is_read_again_not_taken_for_missing_objects(
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    """The CI failure of 2026-11-27: on a loaded node `dialplan show` lost lines, the new
    trunks' contexts were reported missing, and 35 good trunks were rolled back."""
    sids = [f"AC{i:032d}" for i in range(200)]
    before = Case({"t000": trunk("many.pstn.twilio.com", inbound={"accountSid": sids[0]})})
    after = Case(
        {f"t{i:03d}": trunk("many.pstn.twilio.com", inbound={"accountSid": sid})
         for i, sid in enumerate(sids)}
    )  # fmt: skip
    pbx = start_asterisk("golden-cut", "127.0.10.27", {"many.pstn.twilio.com": STANDIN_IP})
    pod_exec = podman_exec(pbx.name)
    assert channel.deliver(pod_exec, before.pod_files(), before.expected(before.pod_files())).ok
    stalled = STALLED_READER.format(command="dialplan show", reader="sleep 3; cat")
    pbx.write_file("/usr/local/sbin/asterisk", stalled, "0755")
    files, expected = after.pod_files(), after.expected(after.pod_files())
    new_contexts = verify.Probe(contexts=frozenset(expected.contexts))  # > 40: one full listing

    pbx.write_file("/tmp/stalled-reads", "1\n")  # the delivery's own read is cut: read again
    result = channel.deliver(pod_exec, files, expected, probe=new_contexts)
    assert result.ok, [p.message for p in result.problems[:3]]
    assert result.observation is not None and not result.observation.cut_short
    assert result.read_again == ["contexts"]  # the operator logs it

    # What the stall does to a read: contexts missing from it (and it exits 0).
    pbx.write_file("/tmp/stalled-reads", "1\n")
    cut = pbx.exec("sh", "-c", "asterisk -rx 'dialplan show' | grep -c '^\\[ Context'")
    whole = pbx.exec("sh", "-c", "asterisk -rx 'dialplan show' | grep -c '^\\[ Context'")
    assert int(cut.stdout) < int(whole.stdout), (cut.stdout, whole.stdout)

    # Cut every time (the listing's tail lost): no verdict on the trunks; the verified set goes
    # back, and it is an error.
    cut_tail = STALLED_READER.format(command="pjsip list endpoints", reader="head -n -3")
    pbx.write_file("/usr/local/sbin/asterisk", cut_tail, "0755")
    fewer = Case(dict(list(after.trunks.items())[:100]))
    files, expected = fewer.pod_files(), fewer.expected(fewer.pod_files())
    pbx.write_file("/tmp/stalled-reads", "9\n")
    with pytest.raises(channel.ExecError, match=r"cut short its output \(list-endpoints\)"):
        channel.deliver(pod_exec, files, expected)
    pbx.write_file("/tmp/stalled-reads", "0\n")
    assert len(asterisk_output.parse_endpoints(pbx.rx("pjsip show endpoints"))) == 200


def test_the_trunk_files_never_go_missing_during_a_delivery_or_a_rollback(
    start_asterisk: Callable[..., AsteriskContainer],
) -> None:
    """A reload by anyone at any moment (a person's `core reload`, another tool) must find the
    old set or the new one: the files are renamed into place, never moved out and copied in."""
    good = cases()["single-trunk"]
    pbx = start_asterisk("golden-atomic", "127.0.10.28", hosts_of(good))
    assert deliver(pbx, good).ok
    files = " ".join(f"/etc/asterisk/{path}" for path in POD_FILES)
    watch = (
        "rm -f /tmp/gaps; touch /tmp/watching; while [ -e /tmp/watching ]; do"
        f" for f in {files}; do [ -e $f ] || echo $f >> /tmp/gaps; done; done"
    )
    pbx.exec("sh", "-c", f"({watch}) > /dev/null 2>&1 &")
    try:
        changed = Case(
            {"acme": good.trunks["acme"].model_copy(update={"codecs": ["alaw"]})}, good.segments
        )
        for case in (changed, good, changed, good):
            assert deliver(pbx, case).ok
        for _ in range(2):  # refused, and put back
            assert deliver(pbx, with_a_broken_trunk(good)).rolled_back
    finally:
        pbx.exec("rm", "-f", "/tmp/watching")
    gaps = pbx.exec("sh", "-c", "cat /tmp/gaps 2>/dev/null; true").stdout
    assert gaps == "", f"a trunk file was missing for a moment: {sorted(set(gaps.split()))}"
