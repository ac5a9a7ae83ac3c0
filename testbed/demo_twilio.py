"""Twilio's stand-ins for `make demo`, run as their own process (testbed/twilio_process.py) and
used the way a user uses Twilio: its official SDK for the trunk made by hand, and the stand-in's
admin API for what Twilio's SIP side decided about each call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twilio.rest import Client

from testbed.twilio_rest import StandInHttpClient


@dataclass
class Twilio:
    pid: int
    url: str
    account_sid: str
    auth_token: str

    @classmethod
    def start(cls, workdir: Path, rest: str, sip_ip: str) -> Twilio:
        ready = workdir / "twilio-ready.json"
        ready.unlink(missing_ok=True)
        (workdir / "sipp").mkdir(parents=True, exist_ok=True)
        with open(workdir / "twilio.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "testbed.twilio_process", "--rest", rest,
                 "--sip", sip_ip, "--ready", str(ready), "--workdir", str(workdir / "sipp")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `make demo`; `make demo-down` stops it
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"Twilio's stand-ins did not start: {workdir / 'twilio.log'}")
            time.sleep(0.2)
        info = json.loads(ready.read_text())
        return cls(proc.pid, info["url"], info["account_sid"], info["auth_token"])

    def sdk(self) -> Client:
        return Client(self.account_sid, self.auth_token, http_client=StandInHttpClient(self.url))

    def trunk_by_hand(self, domain: str, username: str, password: str) -> None:
        """What a user set up in Twilio's console before the operator: the trunk, a credential
        list holding Asterisk's credential, attached to it."""
        sdk = self.sdk()
        trunk = sdk.trunking.v1.trunks.create(friendly_name="acme (by hand)", domain_name=domain)
        made = sdk.api.v2010.account.sip.credential_lists.create(friendly_name="acme (by hand)")
        made.credentials.create(username=username, password=password)
        sdk.trunking.v1.trunks(trunk.sid).credentials_lists.create(credential_list_sid=made.sid)

    def usernames(self, list_sid: str) -> list[str]:
        listed = self.sdk().api.v2010.account.sip.credential_lists(list_sid).credentials.list()
        return sorted(c.username for c in listed)

    def decisions(self) -> list[dict[str, Any]]:
        """Twilio's SIP side's verdict on each INVITE with credentials, in order."""
        with urllib.request.urlopen(f"{self.url}/__standin/sip-decisions", timeout=10) as answer:
            return list(json.loads(answer.read()))
