"""Configurations used by both the golden-file unit tests and the real-Asterisk e2e tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from trunk_operator.core.desired import expected_endpoint
from trunk_operator.core.models import DIDSegmentSpec, TwilioTrunkSpec
from trunk_operator.core.render import (
    Files,
    contexts_in,
    pod_files,
    render_segment,
    render_trunk,
    render_trunk_auth,
)
from trunk_operator.core.verify import Expected

PASSWORD = "pa;ss #1 [x] =>\\;"  # every character class Asterisk files treat specially
ACCOUNT_SID_A = "AC" + "a" * 32
ACCOUNT_SID_B = "AC" + "b" * 32


@dataclass
class Case:
    trunks: dict[str, TwilioTrunkSpec]
    segments: dict[str, DIDSegmentSpec] = field(default_factory=dict)

    def expected(self, files: Files, password: str = PASSWORD) -> Expected:
        """What Asterisk must show once these files are loaded (as the operator verifies)."""
        password_sha256 = hashlib.sha256(f"{password}\n".encode()).hexdigest()
        return Expected(
            tuple(
                expected_endpoint(f"TwilioTrunk/{n}", n, s, f"{n}-user", password_sha256)
                for n, s in self.trunks.items()
            ),
            {context: "case" for context in contexts_in(files)},
            {s.transport: (f"TwilioTrunk/{n}",) for n, s in self.trunks.items()},
        )

    def parts(self, password: str = PASSWORD) -> list[tuple[str, Files]]:
        """Each CR's rendered files, as the operator keeps them in the API."""
        out = [
            (
                f"TwilioTrunk/{name}",
                render_trunk(name, spec) | render_trunk_auth(name, spec, f"{name}-user", password),
            )
            for name, spec in self.trunks.items()
        ]
        for name, seg in self.segments.items():
            trunk = seg.trunk_ref.name
            out.append((f"DIDSegment/{name}", render_segment(name, seg, trunk, self.trunks[trunk])))
        return out

    def files(self, password: str = PASSWORD) -> Files:
        """Every CR's files, by their names in the API."""
        return {path: text for _, files in self.parts(password) for path, text in files.items()}

    def pod_files(self, password: str = PASSWORD) -> Files:
        """What a pod with all of them receives."""
        return pod_files(sorted(self.parts(password)))


def trunk(host: str, **extra: object) -> TwilioTrunkSpec:
    return TwilioTrunkSpec.model_validate(
        {"terminationHost": host, "credentials": {"secretName": "sip"}, **extra}
    )


def segment(trunk_name: str, **extra: object) -> DIDSegmentSpec:
    return DIDSegmentSpec.model_validate({"trunkRef": {"name": trunk_name}, **extra})


def cases() -> dict[str, Case]:
    return {
        "single-trunk": Case(
            trunks={"acme": trunk("acme.pstn.twilio.com", qualifyFrequencySeconds=5)},
            segments={
                "acme-main": segment(
                    "acme",
                    numbers=["+15551230001", "+15551230002"],
                    overrides=[{"number": "+15551230002", "context": "sales", "extension": "100"}],
                    callerIdPool={"enabled": True},
                )
            },
        ),
        "two-trunks": Case(
            trunks={
                "acme": trunk(
                    "acme.pstn.twilio.com",
                    edges=["ashburn", "umatilla"],
                    inbound={"accountSid": ACCOUNT_SID_A},
                    outbound={"context": "to-acme"},
                ),
                "globex": trunk(
                    "globex.pstn.twilio.com",
                    endpointName="GLOBEX",
                    codecs=["alaw"],
                    inbound={"accountSid": ACCOUNT_SID_B, "context": "from-globex"},
                    outbound={"context": "to-globex", "defaultCountryCode": "44"},
                ),
            },
        ),
        "secure-trunk": Case(
            trunks={
                "secure": trunk(
                    "secure.pstn.twilio.com",
                    secure=True,
                    transport="transport-tls",
                    outbound={"defaultCallerId": "+15550001111"},
                )
            },
        ),
    }


def large_case(count: int = 100_000) -> Case:
    return Case(
        # 127.0.0.32: the inbound-call test's Twilio stand-in (a source the trunk accepts).
        trunks={
            "bulk": trunk("bulk.pstn.twilio.com", inbound={"extraSourceRanges": ["127.0.0.32/32"]})
        },
        segments={
            "bulk-all": segment(
                "bulk",
                ranges=[{"start": "+15550000000", "count": count}],
                callerIdPool={"enabled": True, "strategy": "random"},
            )
        },
    )
