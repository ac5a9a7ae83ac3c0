"""CLI output captured from Asterisk 22.10.1, and a trunk as verification expects it, shared
by the tests of the parsers, of verification and of the delivery script."""

import hashlib

from trunk_operator.core.asterisk_output import Endpoint, Listing
from trunk_operator.core.verify import ExpectedEndpoint, Observation


def shown(endpoints: dict[str, Endpoint], **details: dict[str, str]) -> Observation:
    """An observation that showed these endpoints in depth (`pjsip show endpoint X`)."""
    return Observation(Listing(), shown=endpoints, details=dict(details))


ENDPOINTS = """
 Endpoint:  <Endpoint/CID.....................................>  <State.....>  <Channels.>
    I/OAuth:  <AuthId/UserName...........................................................>
        Aor:  <Aor............................................>  <MaxContact>
      Contact:  <Aor/ContactUri..........................> <Hash....> <Status> <RTT(ms)..>
  Transport:  <TransportId........>  <Type>  <cos>  <tos>  <BindAddress..................>
   Identify:  <Identify/Endpoint.........................................................>
        Match:  <criteria.........................>
==========================================================================================

 Endpoint:  ACME                                                 Not in use    0 of inf
    OutAuth:  ACME-auth/acme-user
        Aor:  ACME-ashburn                                       0
      Contact:  ACME-ashburn/sip:acme.pstn.ashburn.twilio. e2542f824d Avail         6.645
        Aor:  ACME-umatilla                                      0
      Contact:  ACME-umatilla/sip:acme.pstn.umatilla.twili fd60fcf2f3 NonQual        -nan
  Transport:  transport-udp             udp      0      0  127.0.10.29:5060
   Identify:  ACME-identify/ACME
       Header: X-Twilio-AccountSid: ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa

 Endpoint:  GLOBEX                                               Unavailable   0 of inf
    OutAuth:  GLOBEX-auth/globex-user
        Aor:  GLOBEX-aor                                         0
      Contact:  GLOBEX-aor/sip:globex.pstn.twilio.com      44cde233f9 Unavail        -nan
  Transport:  transport-udp             udp      0      0  127.0.10.29:5060
   Identify:  GLOBEX-identify/GLOBEX
        Match: 54.172.60.0/30


Objects found: 2
"""


# `pjsip show endpoint ACME` (cut) and the auth section hash, as the delivery script prints
# them, from Asterisk 22.10.1.
DETAIL = """
 Endpoint:  ACME                                                 Not in use    0 of inf
    OutAuth:  ACME-auth/acme-user
  Transport:  transport-udp             udp      0      0  127.0.10.99:5060
   Identify:  ACME-identify/ACME
       Header: X-Twilio-AccountSid: ACaaaa


 ParameterName                      : ParameterValue
 ===================================================================================================
 100rel                             : yes
 acl                                : deny/permit
 allow                              : (alaw|ulaw)
 context                            : trunkop-in-ACME
 from_user                          :
 media_encryption                   : no
 outbound_auth                      : ACME-auth
 transport                          : transport-udp
"""


PASSWORD_SHA = hashlib.sha256(b"se;cret\n").hexdigest()


def detailed(**overrides: object) -> ExpectedEndpoint:
    fields: dict = dict(
        owner="TwilioTrunk/acme",
        name="ACME",
        auth="ACME-auth",
        aors={},
        identify="ACME-identify",
        matches=frozenset({"X-Twilio-AccountSid: ACaaaa"}),
        username="acme-user",
        transport="transport-udp",
        codecs=("alaw", "ulaw"),
        media_encryption="no",
        context="trunkop-in-ACME",
        password_sha256=PASSWORD_SHA,
    )
    return ExpectedEndpoint(**{**fields, **overrides})


# `pjsip list ...` as Asterisk 22.10.1 prints them (a delivery's `list-*` sections).
LISTS = {
    "list-endpoints": """
 Endpoint:  <Endpoint/CID.....................................>  <State.....>  <Channels.>
==========================================================================================

 Endpoint:  ACME                                                 Not in use    0 of inf
 Endpoint:  GLOBEX                                               Unavailable   0 of inf

Objects found: 2
""",
    "list-aors": """
      Aor:  <Aor..............................................>  <MaxContact>
==========================================================================================

      Aor:  ACME-ashburn                                         0
      Aor:  GLOBEX-aor                                           0

Objects found: 2
""",
    "list-auths": """
  I/OAuth:  <AuthId/UserName.............................................................>
==========================================================================================

     Auth:  ACME-auth/acme-user
     Auth:  GLOBEX-auth/globex-user

Objects found: 2
""",
    "list-contacts": """
  Contact:  <Aor/ContactUri..............................> <Hash....> <Status> <RTT(ms)..>
==========================================================================================

  Contact:  ACME-ashburn/sip:acme.pstn.ashburn.twilio. e2542f824d Avail         6.645
  Contact:  GLOBEX-aor/sip:globex.pstn.twilio.com      44cde233f9 NonQual        -nan

Objects found: 2
""",
    "list-identifies": """
 Identify:  <Identify/Endpoint...........................................................>
==========================================================================================

 Identify:  ACME-identify/ACME
 Identify:  GLOBEX-identify/GLOBEX

Objects found: 2
""",
}
