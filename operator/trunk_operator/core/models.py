"""The custom resources as pydantic models: the one source of truth for the CRD schemas.

Field descriptions become `kubectl explain` text, defaults become schema defaults, and the
`x-kubernetes-validations` extras become CEL rules in the generated CRDs (see `crdgen`).
Everything the API server cannot check (range overflow, bounds that CEL would price too high)
is checked by the validators here and reported as an `InvalidSpec` condition.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "trunks.asterisk-operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
# Asterisk object ids and dialplan context names: no whitespace, no `;`, `[`, `]`, `,`, `=`.
ASTERISK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$"
TERMINATION_HOST_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.pstn\.twilio\.com$"
CIDR_PATTERN = (
    r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
    r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(/([0-9]|[12][0-9]|3[0-2]))?$"
)
ACCOUNT_SID_PATTERN = r"^AC[0-9a-f]{32}$"
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# Extensions in a destination: digits, `+`, letters, or the `${EXTEN}` the call came in on.
EXTENSION_PATTERN = r"^([A-Za-z0-9+*#_-]{1,40}|\$\{EXTEN\})$"

MAX_DIDS_PER_SEGMENT = 100_000
MAX_NUMBERS = 10_000
MAX_RANGES = 1_000
MAX_OVERRIDES = 1_000

# Twilio's signalling source ranges; calls fail over between edges, so all must be allowed.
TWILIO_SIGNALLING_RANGES: tuple[str, ...] = (
    "54.172.60.0/30",
    "54.244.51.0/30",
    "54.171.127.192/30",
    "35.156.191.128/30",
    "54.65.63.192/30",
    "54.169.127.128/30",
    "54.252.254.64/30",
    "177.71.206.192/30",
)


def twilio_credential_secret(trunk: str) -> str:
    """The operator's Secret of the SIP credential Twilio holds for an opted-in trunk."""
    return f"{trunk}-twilio-credential"


def rule(expression: str, message: str) -> dict[str, Any]:
    return {"rule": expression, "message": message}


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=True,
    )


class Edge(StrEnum):
    """Twilio edge locations that serve Elastic SIP Trunking (`roaming` does not)."""

    ashburn = "ashburn"
    ashburn_ix = "ashburn-ix"
    umatilla = "umatilla"
    dublin = "dublin"
    frankfurt = "frankfurt"
    singapore = "singapore"
    tokyo = "tokyo"
    sao_paulo = "sao-paulo"
    sydney = "sydney"


class Codec(StrEnum):
    """Asterisk codec names Twilio can negotiate (g729 and opus only when enabled on request)."""

    ulaw = "ulaw"
    alaw = "alaw"
    g729 = "g729"
    opus = "opus"


class FailoverStatus(StrEnum):
    CHANUNAVAIL = "CHANUNAVAIL"
    CONGESTION = "CONGESTION"


class CallerIdStrategy(StrEnum):
    roundRobin = "roundRobin"
    random = "random"


class CredentialsRef(Model):
    """The Secret in the trunk's namespace that holds the credential-list username and password."""

    secret_name: Annotated[str, Field(pattern=K8S_NAME_PATTERN, max_length=253)] = Field(
        description="Name of the Secret (same namespace) with the SIP credentials."
    )
    username_key: Annotated[str, Field(pattern=SECRET_KEY_PATTERN, max_length=253)] = Field(
        default="username", description="Key of the username in the Secret's data."
    )
    password_key: Annotated[str, Field(pattern=SECRET_KEY_PATTERN, max_length=253)] = Field(
        default="password", description="Key of the password in the Secret's data."
    )


class Inbound(Model):
    """How calls from Twilio are recognised and where they land."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    # has(): the schema default {} is checked before nested defaults apply
                    "!has(self.twilioSignallingRanges) || self.twilioSignallingRanges"
                    " || (has(self.extraSourceRanges) && size(self.extraSourceRanges) > 0)"
                    " || has(self.accountSid)",
                    "inbound identification needs twilioSignallingRanges, extraSourceRanges"
                    " or accountSid",
                )
            ]
        }
    )

    context: Annotated[str, Field(pattern=ASTERISK_ID_PATTERN)] = Field(
        default="from-twilio",
        description="Dialplan context for calls to numbers no DIDSegment routes."
        " It must exist in Asterisk (the operator checks).",
    )
    twilio_signalling_ranges: bool = Field(
        default=True,
        description="Identify calls from all of Twilio's signalling ranges (every edge).",
    )
    extra_source_ranges: list[Annotated[str, Field(pattern=CIDR_PATTERN, max_length=18)]] = Field(
        default_factory=list,
        max_length=32,
        description="More IPv4 addresses or CIDRs identified as this trunk.",
    )
    account_sid: Annotated[str, Field(pattern=ACCOUNT_SID_PATTERN)] | None = Field(
        default=None,
        description="Twilio Account SID. When set, calls are identified by the"
        " X-Twilio-AccountSid header, which tells several Twilio trunks on one Asterisk apart.",
    )


class Outbound(Model):
    """The dialplan context that sends calls out through the trunk."""

    context: Annotated[str, Field(pattern=ASTERISK_ID_PATTERN)] = Field(
        default="TwilioDynamicIVR",
        description="Context the operator writes for outbound calls; dial any number in it.",
    )
    default_country_code: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,2}$")] = Field(
        default="1",
        description="Country code added to national numbers to make them E.164.",
    )
    default_caller_id: Annotated[str, Field(pattern=E164_PATTERN)] | None = Field(
        default=None,
        description="Caller ID (a Twilio or verified number) used when no caller-ID pool"
        " DIDSegment is bound to this trunk.",
    )
    dial_timeout_seconds: int = Field(
        default=60, ge=5, le=600, description="Seconds to wait for an answer per edge."
    )
    failover_on: list[FailoverStatus] = Field(
        default_factory=lambda: [FailoverStatus.CHANUNAVAIL, FailoverStatus.CONGESTION],
        max_length=2,
        description="Dial results that move the call to the next edge.",
    )


class AccountRef(Model):
    name: Annotated[str, Field(pattern=K8S_NAME_PATTERN, max_length=253)] = Field(
        description="Name of the TwilioAccount (same namespace)."
    )


class TwilioSide(Model):
    """The Twilio end of the trunk, reconciled through Twilio's REST API."""

    account_ref: AccountRef
    ip_access_control: list[Annotated[str, Field(pattern=CIDR_PATTERN, max_length=18)]] = Field(
        default_factory=list,
        max_length=100,
        description="IPv4 CIDRs Twilio also accepts outbound calls from, in an IP access"
        " control list the operator owns. Empty: credentials only.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    credential_propagation_seconds: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="How long a new credential is given to take effect at Twilio before"
        " Asterisk switches to it (Twilio documents no figure).",
    )
    rotation_grace_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="How long the previous credential stays at Twilio after every pod serves"
        " the new one.",
    )


class PodSelector(Model):
    match_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=16,
        description="Labels of the Asterisk pods (same namespace) that get this trunk.",
    )


class TwilioTrunkSpec(Model):
    """A Twilio Elastic SIP trunk, delivered into the selected Asterisk pods."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    "!has(self.secure) || !self.secure"
                    " || (has(self.transport) && self.transport != 'transport-udp')",
                    "secure trunks need a TLS transport, not transport-udp",
                ),
            ]
        }
    )

    termination_host: Annotated[str, Field(pattern=TERMINATION_HOST_PATTERN, max_length=253)] = (
        Field(
            description="The trunk's Termination SIP URI host, <name>.pstn.twilio.com."
            " (sip.twilio.com is only the digest realm.)"
        )
    )
    edges: list[Edge] = Field(
        default_factory=list,
        max_length=9,
        description="Twilio edges in failover order; each becomes <name>.pstn.<edge>.twilio.com."
        " Empty: the termination host itself.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    credentials: CredentialsRef
    endpoint_name: Annotated[str, Field(pattern=ASTERISK_ID_PATTERN, max_length=40)] | None = Field(
        default=None,
        description="PJSIP endpoint id. Default: the resource name in upper case (TWILIO).",
    )
    codecs: list[Codec] = Field(
        default_factory=lambda: [Codec.ulaw, Codec.alaw],
        min_length=1,
        max_length=4,
        description="Codecs in order of preference.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    transport: Annotated[str, Field(pattern=ASTERISK_ID_PATTERN)] = Field(
        default="transport-udp",
        description="Existing PJSIP transport of the Asterisk pods (checked before delivery).",
    )
    secure: bool = Field(
        default=False, description="TLS signalling (port 5061) and SRTP (SDES) media."
    )
    qualify_frequency_seconds: int = Field(
        default=30, ge=0, le=3600, description="OPTIONS ping interval; 0 disables reachability."
    )
    inbound: Inbound = Field(default_factory=Inbound)
    outbound: Outbound = Field(default_factory=Outbound)
    asterisk_selector: PodSelector | None = Field(
        default=None,
        description="Asterisk pods that get this trunk. Default: the operator's selector.",
    )
    twilio: TwilioSide | None = Field(
        default=None,
        description="Reconcile Twilio's end too (trunk, credential list, rotation). Absent:"
        " Twilio's end is configured by hand.",
    )

    def served_credentials(self, resource_name: str) -> CredentialsRef:
        """Where Asterisk's credentials come from: the trunk's Secret, or for a trunk whose
        Twilio side the operator reconciles, the operator's Secret of the credential Twilio
        holds (it switches to a rotated password once Twilio has it)."""
        if self.twilio is None:
            return self.credentials
        return CredentialsRef(secret_name=twilio_credential_secret(resource_name))

    def endpoint(self, resource_name: str) -> str:
        return self.endpoint_name or resource_name.upper()

    def edge_hosts(self) -> list[str]:
        """Termination hosts in failover order."""
        if not self.edges:
            return [self.termination_host]
        trunk = self.termination_host.removesuffix(".pstn.twilio.com")
        return [f"{trunk}.pstn.{edge}.twilio.com" for edge in self.edges]


class DIDRange(Model):
    start: Annotated[str, Field(pattern=E164_PATTERN)] = Field(
        description="First number of the range, E.164."
    )
    count: int = Field(ge=1, le=MAX_DIDS_PER_SEGMENT, description="How many consecutive numbers.")


class Destination(Model):
    context: Annotated[str, Field(pattern=ASTERISK_ID_PATTERN)] | None = Field(
        default=None, description="Dialplan context. Default: the trunk's inbound context."
    )
    extension: Annotated[str, Field(pattern=EXTENSION_PATTERN)] = Field(
        default="${EXTEN}", description="Extension in that context. Default: the dialled DID."
    )


class DestinationOverride(Destination):
    number: Annotated[str, Field(pattern=E164_PATTERN)] = Field(
        description="The DID (in this segment) routed differently."
    )


class CallerIdPool(Model):
    enabled: bool = Field(
        default=False, description="Use this segment's numbers as the trunk's outbound caller ID."
    )
    strategy: CallerIdStrategy = Field(
        default=CallerIdStrategy.roundRobin, description="How a caller ID is picked per call."
    )


class TrunkRef(Model):
    name: Annotated[str, Field(pattern=K8S_NAME_PATTERN, max_length=253)] = Field(
        description="Name of the TwilioTrunk (same namespace)."
    )


class DIDSegmentSpec(Model):
    """A named group of DIDs bound to a trunk: inbound routes and an outbound caller-ID pool."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                rule(
                    "(has(self.numbers) && size(self.numbers) > 0)"
                    " || (has(self.ranges) && size(self.ranges) > 0)",
                    "a segment needs numbers or ranges",
                ),
            ]
        }
    )

    trunk_ref: TrunkRef
    numbers: list[Annotated[str, Field(pattern=E164_PATTERN, max_length=16)]] = Field(
        default_factory=list,
        max_length=MAX_NUMBERS,
        description="Single DIDs in E.164 (with +).",
    )
    ranges: list[DIDRange] = Field(
        default_factory=list,
        max_length=MAX_RANGES,
        description=f"Consecutive DIDs; at most {MAX_DIDS_PER_SEGMENT} in the whole segment.",
    )
    destination: Destination = Field(
        default_factory=Destination, description="Where inbound calls to these DIDs go."
    )
    overrides: list[DestinationOverride] = Field(
        default_factory=list, max_length=MAX_OVERRIDES, description="Per-number destinations."
    )
    caller_id_pool: CallerIdPool = Field(default_factory=CallerIdPool)

    @model_validator(mode="after")
    def _ranges_are_sane(self) -> DIDSegmentSpec:
        total = len(self.numbers)
        for r in self.ranges:
            last = int(r.start[1:]) + r.count - 1
            if len(str(last)) != len(r.start) - 1:
                raise ValueError(f"range starting {r.start} with count {r.count} overflows")
            total += r.count
        if total > MAX_DIDS_PER_SEGMENT:
            raise ValueError(f"{total} DIDs: a segment holds at most {MAX_DIDS_PER_SEGMENT}")
        return self

    def dids(self) -> list[str]:
        """Every DID of the segment, sorted and without repeats."""
        found = set(self.numbers)
        for r in self.ranges:
            first = int(r.start[1:])
            found.update(f"+{n}" for n in range(first, first + r.count))
        return sorted(found)


# ---- status -----------------------------------------------------------------------------


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*$")]
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ContactStatus(Model):
    """A contact's reachability. Its qualify RTT is in the operator's /metrics, not here."""

    # (In the status, an RTT would rewrite every trunk at every qualify: an API write per
    # trunk per qualify interval.)

    uri: str
    status: str = Field(description="Avail, Unavail, Unknown, NonQual or Removed.")


class PodTrunkStatus(Model):
    pod: str
    endpoint_state: str | None = Field(default=None, description="As `pjsip show endpoint`.")
    contacts: list[ContactStatus] = Field(default_factory=list)
    delivered_hash: str | None = Field(
        default=None, description="Content hash of this resource's files as the pod has them."
    )
    last_reload_time: str | None = Field(
        default=None, description="When the pod took this resource's current version."
    )
    last_reload_result: str | None = Field(
        default=None, description="Result of the pod's last delivery (Verified, RolledBack...)."
    )


class ResourceStatus(Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    reason: str | None = Field(default=None, description="Reason of the Ready condition.")
    config_hash: str | None = Field(default=None, description="Hash of the rendered files.")


class TwilioTrunkStatus(ResourceStatus):
    endpoint: str | None = None
    endpoint_state: str | None = Field(default=None, description="Summary over the pods.")
    secret_resource_version: str | None = Field(
        default=None,
        description="resourceVersion of the credentials Secret this status describes: with"
        " Ready=True, every pod serves the credentials of that version (rotation done).",
    )
    did_count: int | None = None
    pods: list[PodTrunkStatus] = Field(default_factory=list)
    twilio: TwilioSideStatus | None = Field(
        default=None, description="Twilio's end, for a trunk with spec.twilio."
    )


class TwilioRotation(Model):
    generation: int
    username: str
    phase: str = Field(
        description="AddingAtTwilio, Propagating (waiting before Asterisk switches),"
        " or Refused (the new password breaks Twilio's rule: nothing changed)."
    )


class TwilioSideStatus(Model):
    trunk_sid: str | None = None
    credential_list_sid: str | None = None
    ip_access_control_list_sid: str | None = None
    username: str | None = Field(
        default=None, description="The credential Asterisk uses and Twilio holds."
    )
    generation: int | None = Field(default=None, description="Rotations so far, plus one.")
    rotation: TwilioRotation | None = None


class DIDSegmentStatus(ResourceStatus):
    did_count: int | None = None
    conflicts: list[str] = Field(
        default_factory=list, description="DIDs claimed earlier by another segment (first 20)."
    )
    conflict_count: int | None = None


# ---- accounts -----------------------------------------------------------------------------


class TwilioAccountSpec(Model):
    """Twilio REST API credentials for the TwilioTrunks of this namespace that name this
    account (spec.twilio.accountRef)."""

    account_sid: Annotated[str, Field(pattern=ACCOUNT_SID_PATTERN)] = Field(
        description="The account (AC...) whose trunks these are."
    )
    secret_name: Annotated[str, Field(pattern=K8S_NAME_PATTERN, max_length=253)] = Field(
        description="Secret (same namespace) with `apiKeySid` and `apiKeySecret` (an API key:"
        " recommended), or `authToken`."
    )
    region: Annotated[str, Field(pattern=r"^[a-z]{2}[0-9]$")] | None = Field(
        default=None, description="Twilio Region of the REST API (us1, ie1, au1)."
    )
    edge: Annotated[str, Field(pattern=r"^[a-z][a-z-]{1,30}$")] | None = Field(
        default=None, description="Twilio edge the REST API is reached through (e.g. dublin)."
    )
    resync_seconds: int = Field(
        default=300,
        ge=30,
        le=86400,
        description="How often each trunk's Twilio side is checked for changes made elsewhere.",
    )


class TwilioAccountStatus(ResourceStatus):
    trunks: int | None = Field(default=None, description="TwilioTrunks that use this account.")
