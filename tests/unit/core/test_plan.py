from dataclasses import replace

from trunk_operator.core.plan import (
    SEGMENT,
    TRUNK,
    Inputs,
    Plan,
    RenderCache,
    Resource,
    plan_namespace,
)

SECRET = {"username": "u", "password": "p"}


def trunk(name: str, created: str = "2026-01-01T00:00:00Z", **spec: object) -> Resource:
    body = {
        "terminationHost": f"{name}.pstn.twilio.com",
        "credentials": {"secretName": "sip"},
        **spec,
    }
    return Resource("TwilioTrunk", name, created, body)


def segment(name: str, trunk_name: str, created: str, **spec: object) -> Resource:
    return Resource("DIDSegment", name, created, {"trunkRef": {"name": trunk_name}, **spec})


def reasons(plan, ref: str) -> list[str]:
    return [p.reason for p in plan.outcomes[ref].problems]


def test_valid_trunk_renders_public_and_secret_files_apart() -> None:
    plan = plan_namespace(Inputs(trunks=[trunk("acme")], secrets={"sip": SECRET}))
    outcome = plan.outcomes["TwilioTrunk/acme"]
    assert not outcome.problems
    assert set(outcome.secret) == {"pjsip.d/twiliotrunk-acme-auth.conf"}
    assert all("password" not in text for text in outcome.public.values())


def test_missing_secret_and_missing_key_are_distinct_reasons() -> None:
    plan = plan_namespace(Inputs(trunks=[trunk("acme")]))
    assert reasons(plan, "TwilioTrunk/acme") == ["SecretNotFound"]
    plan = plan_namespace(Inputs(trunks=[trunk("acme")], secrets={"sip": {"username": "u"}}))
    assert reasons(plan, "TwilioTrunk/acme") == ["SecretKeyMissing"]
    assert plan.outcomes["TwilioTrunk/acme"].blocked


def test_bad_password_is_reported_without_its_value() -> None:
    secrets = {"sip": {"username": "u", "password": "line1\nline2"}}
    plan = plan_namespace(Inputs(trunks=[trunk("acme")], secrets=secrets))
    [problem] = plan.outcomes["TwilioTrunk/acme"].problems
    assert problem.reason == "InvalidCredentials"
    assert "line1" not in problem.message


def test_later_segment_reports_did_conflict_and_routes_only_its_own() -> None:
    inputs = Inputs(
        trunks=[trunk("acme")],
        segments=[
            segment(
                "late", "acme", "2026-02-01T00:00:00Z", numbers=["+15550000001", "+15550000002"]
            ),
            segment("early", "acme", "2026-01-01T00:00:00Z", numbers=["+15550000001"]),
        ],
        secrets={"sip": SECRET},
    )
    plan = plan_namespace(inputs)
    assert reasons(plan, "DIDSegment/early") == []
    assert reasons(plan, "DIDSegment/late") == ["DIDConflict"]
    late = plan.outcomes["DIDSegment/late"]
    assert late.conflicts == ["+15550000001"] and late.did_count == 1
    text = "".join(late.public.values())
    assert "+15550000001" not in text and "+15550000002" in text
    assert text.count("exten => +1555") == 1


def test_missing_trunk_is_reported_not_fatal() -> None:
    inputs = Inputs(
        trunks=[trunk("acme")],
        segments=[segment("s", "nope", "2026-01-01T00:00:00Z", numbers=["+15550000001"])],
        secrets={"sip": SECRET},
    )
    plan = plan_namespace(inputs)
    assert reasons(plan, "DIDSegment/s") == ["TrunkNotFound"]
    assert not plan.outcomes["TwilioTrunk/acme"].problems


def test_second_ip_identified_trunk_is_held_back_as_ambiguous() -> None:
    inputs = Inputs(
        trunks=[
            trunk("b", "2026-02-01T00:00:00Z", outbound={"context": "to-b"}),
            trunk("a", "2026-01-01T00:00:00Z", outbound={"context": "to-a"}),
        ],
        secrets={"sip": SECRET},
    )
    plan = plan_namespace(inputs)
    assert reasons(plan, "TwilioTrunk/a") == []
    assert reasons(plan, "TwilioTrunk/b") == ["AmbiguousInboundIdentification"]
    assert "accountSid" in plan.outcomes["TwilioTrunk/b"].problems[0].message


def test_trunks_with_account_sids_share_pods() -> None:
    inputs = Inputs(
        trunks=[
            trunk("a", inbound={"accountSid": "AC" + "a" * 32}, outbound={"context": "to-a"}),
            trunk("b", inbound={"accountSid": "AC" + "b" * 32}, outbound={"context": "to-b"}),
        ],
        secrets={"sip": SECRET},
    )
    plan = plan_namespace(inputs)
    assert not any(o.problems for o in plan.outcomes.values())


def test_duplicate_endpoint_name_and_outbound_context_conflict() -> None:
    inputs = Inputs(
        trunks=[
            trunk("a", inbound={"accountSid": "AC" + "a" * 32}),
            trunk(
                "b",
                "2026-03-01T00:00:00Z",
                endpointName="A",
                inbound={"accountSid": "AC" + "b" * 32},
            ),
        ],
        secrets={"sip": SECRET},
    )
    plan = plan_namespace(inputs)
    assert reasons(plan, "TwilioTrunk/b") == ["EndpointNameConflict", "OutboundContextConflict"]


def test_segment_of_blocked_trunk_waits() -> None:
    inputs = Inputs(
        trunks=[trunk("acme")],
        segments=[segment("s", "acme", "2026-01-01T00:00:00Z", numbers=["+15550000001"])],
    )
    assert reasons(plan_namespace(inputs), "DIDSegment/s") == ["TrunkNotReady"]


def test_invalid_spec_is_a_condition_not_an_exception() -> None:
    inputs = Inputs(
        trunks=[Resource("TwilioTrunk", "x", "", {"terminationHost": "sip.twilio.com"})]
    )
    [problem] = plan_namespace(inputs).outcomes["TwilioTrunk/x"].problems
    assert problem.reason == "InvalidSpec"
    assert "terminationHost" in problem.message


def _many(count: int, codecs: list[str] | None = None) -> Inputs:
    inputs = Inputs(secrets={"sip": {"username": "u", "password": "p"}})
    for i in range(count):
        spec: dict = {
            "terminationHost": f"t{i}.pstn.twilio.com",
            "credentials": {"secretName": "sip"},
            "inbound": {"accountSid": f"AC{i:032x}"},
            "outbound": {"context": f"to-t{i}"},
        }
        if codecs and i == 0:
            spec["codecs"] = codecs
        inputs.trunks.append(Resource(TRUNK, f"t{i}", "2026-01-01T00:00:00Z", spec))
    inputs.segments.append(
        Resource(
            SEGMENT,
            "s",
            "2026-01-02T00:00:00Z",
            {"trunkRef": {"name": "t1"}, "numbers": ["+15550000123"]},
        )
    )
    return inputs


def _files(plan: Plan) -> dict:
    return {
        ref: (o.public, o.secret, [p.reason for p in o.problems])
        for ref, o in plan.outcomes.items()
    }


def test_a_plan_is_the_same_with_the_render_cache_and_renders_only_what_changed() -> None:
    cache = RenderCache()
    assert _files(plan_namespace(_many(5), cache)) == _files(plan_namespace(_many(5)))
    changed = _many(5, codecs=["alaw"])
    changed.secrets["sip"] = {"username": "u", "password": "rotated"}
    with_cache = plan_namespace(changed, cache)
    assert _files(with_cache) == _files(plan_namespace(changed))
    assert (
        "allow = alaw"
        in with_cache.outcomes["TwilioTrunk/t0"].public["pjsip.d/twiliotrunk-t0.conf"]
    )
    assert (
        "rotated"
        in with_cache.outcomes["TwilioTrunk/t3"].secret["pjsip.d/twiliotrunk-t3-auth.conf"]
    )
    # Unchanged inputs: the very objects of the last plan (nothing rendered again).
    again = plan_namespace(changed, cache)
    assert again.outcomes["TwilioTrunk/t2"].public is with_cache.outcomes["TwilioTrunk/t2"].public
    assert again.outcomes["DIDSegment/s"].public is with_cache.outcomes["DIDSegment/s"].public
    # And the very outcomes (what is kept by identity downstream stays); a CR that changed
    # in anything, its generation alone too, gets a new one.
    bumped = _many(5, codecs=["alaw"])
    bumped.secrets = changed.secrets
    bumped.trunks[2] = replace(bumped.trunks[2], generation=7)
    last = plan_namespace(bumped, cache)
    assert last.outcomes["TwilioTrunk/t1"] is again.outcomes["TwilioTrunk/t1"]
    assert last.outcomes["DIDSegment/s"] is again.outcomes["DIDSegment/s"]
    assert last.outcomes["TwilioTrunk/t2"] is not again.outcomes["TwilioTrunk/t2"]
    assert last.outcomes["TwilioTrunk/t2"].generation == 7
    assert _files(last) == _files(plan_namespace(bumped))


def test_the_render_cache_keeps_only_what_the_last_plan_used() -> None:
    cache = RenderCache()
    plan_namespace(_many(5), cache)
    first = len(cache._last)
    plan_namespace(_many(2), cache)
    assert 0 < len(cache._last) < first


def test_an_opted_in_trunk_takes_its_credentials_from_the_operators_secret_only() -> None:
    opted = trunk("acme", twilio={"accountRef": {"name": "main"}})
    served = {"username": "u-1", "password": "p", "generation": "1"}
    plan = plan_namespace(Inputs(trunks=[opted], secrets={"sip": SECRET}))
    assert reasons(plan, "TwilioTrunk/acme") == ["TwilioPending"]  # not the trunk's Secret
    assert "acme" in plan.twilio_specs and "acme" not in plan.trunk_specs
    foreign = Inputs(trunks=[opted], secrets={"acme-twilio-credential": served})
    assert reasons(plan_namespace(foreign), "TwilioTrunk/acme") == ["CredentialSecretTaken"]
    ours = replace(foreign, operators_secrets={"acme-twilio-credential"})
    outcome = plan_namespace(ours).outcomes["TwilioTrunk/acme"]
    assert not outcome.problems and outcome.username == "u-1"
