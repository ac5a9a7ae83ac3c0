"""Both Twilio stand-ins as one process of their own, for `make demo`: the REST API
(testbed/twilio_rest.py, on an address the operator's pod reaches) and the SIP side (sipp
behind the gate of testbed/sip_gate.py, which checks digests against that REST state).

    python -m testbed.twilio_process --rest 10.0.0.5:8910 --sip 127.0.0.40 --ready FILE

Once both answer it writes FILE (JSON: the REST base URL, the account SID and auth token), then
serves until SIGTERM, when it stops sipp. Its admin API (`/__standin/`, on the REST address)
seeds, edits and reads it from outside: `POST console/...`, `GET sip-decisions`.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from testbed.sip_gate import TwilioSipSide
from testbed.twilio_rest import TwilioRestStandIn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rest", required=True, help="host:port of the REST API")
    parser.add_argument("--sip", required=True, help="the SIP side's address (port 5060)")
    parser.add_argument("--ready", required=True, type=Path, help="written once serving")
    parser.add_argument("--workdir", type=Path, help="sipp's files")
    parser.add_argument("--credential-delay", type=float, default=2.0)
    args = parser.parse_args(argv)
    host, _, port = args.rest.rpartition(":")
    rest = TwilioRestStandIn()
    rest.account.rules.credential_delay = args.credential_delay
    url = rest.serve(host, int(port))
    sip = TwilioSipSide(rest.account, args.sip, workdir=args.workdir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sip.start()
    try:
        ready = {
            "url": url,
            "account_sid": rest.account.account_sid,
            "auth_token": rest.account.auth_token,
            "sipp_pid": sip.sipp.pid,
        }
        args.ready.write_text(json.dumps(ready))
        stop.wait()
    finally:
        sip.cleanup()
        rest.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
