"""Twilio's SIP side tied to its REST side: a digest gate in front of the sipp UAS (stdlib only).

    account = TwilioRestStandIn().account          # the REST stand-in's state
    with TwilioSipSide(account, "127.0.0.201") as twilio:
        ...  # Asterisk calls PJSIP/+15551234567@acme (acme.pstn.twilio.com -> 127.0.0.201)
        assert twilio.gate.failures() == []

sipp cannot check a digest against credentials that change while it runs: its ``verifyauth``
reads only ``Authorization`` (never ``Proxy-Authorization``, the header Twilio's 407 asks for)
and takes one username/password fixed when the scenario starts; injection files are read once,
and its remote-control commands change rates and traces only. So :class:`SipAuthGate` listens
on Twilio's address (UDP) and relays to the sipp UAS on another port and back. Each INVITE
carrying ``Proxy-Authorization`` (or ``Authorization``) is checked when it arrives against
``TwilioAccount.accepted_credentials(domain)``: what the trunk whose ``domain_name`` is the
Request-URI's host holds at that moment, with the account's ``rules.credential_delay``. A
failed digest is answered ``403 Forbidden`` by the gate and never reaches sipp (its ACK is
absorbed too); every verdict is a :class:`GateDecision` in ``gate.decisions`` and in the
account's ``sip_decisions``.

The checks, stricter where Twilio documents nothing: realm ``sip.twilio.com``, MD5 only, a nonce
the stand-in issued (seen in a challenge it relayed), the qop that challenge offered (``auth``
with nc and cnonce, or none), a digest ``uri`` equal to the Request-URI, a username held with
one password only. Every message between the client and the gate is kept (``gate.messages``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import selectors
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from testbed.sipp import REALM, SipMessage, TwilioStandIn, _udp_bound, digest_response, parse_digest
from testbed.twilio_rest import TwilioAccount

Address = tuple[str, int]


@dataclass(frozen=True)
class GateDecision:
    """The verdict on one INVITE that carried credentials."""

    at: float  # the account's clock (time.time()) when the INVITE arrived
    call_id: str | None
    cseq: int | None
    username: str | None
    domain: str
    accepted: bool
    reason: str  # why it was refused ("" when accepted)
    source: str  # "ip:port" of the sender


def parse_message(data: bytes, direction: str) -> SipMessage:
    """One SIP message as it went over UDP."""
    text = data.decode("utf-8", errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            headers[-1] = (headers[-1][0], headers[-1][1] + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")  # as sipp's -trace_msg writes it
    return SipMessage(direction, stamp, lines[0].strip(), headers, body, text)


def uri_host(uri: str) -> str:
    """sip:user@host:port;params -> host (lower case)."""
    m = re.match(r"\s*<?sips?:(?:[^@;>]*@)?(\[[^\]]+\]|[^:;>?]+)", uri)
    return m.group(1).lower() if m else ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def check_digest(
    auth: Mapping[str, str],
    request_uri: str,
    accepted: frozenset[tuple[str, str]],
    issued: Mapping[str, str | None],
) -> str:
    """Why the digest of an INVITE fails ("" when it is good): `accepted` are the (username,
    password) pairs in effect, `issued` the nonces challenged so far -> the qop offered."""
    username = auth.get("username")
    algorithm = auth.get("algorithm", "MD5")
    if auth.get("realm") != REALM:
        return f"realm {auth.get('realm')!r} is not {REALM!r}"
    if algorithm.upper() != "MD5":
        return f"algorithm {algorithm} was not offered"
    nonce = auth.get("nonce", "")
    if nonce not in issued:
        return f"nonce {nonce!r} was not issued by the stand-in"
    offered, qop = issued[nonce], auth.get("qop")
    if qop != offered or (qop and not (auth.get("nc") and auth.get("cnonce"))):
        return f"qop {qop!r} does not answer the challenge's {offered!r}"
    if auth.get("uri") != request_uri:
        return f"digest uri {auth.get('uri')!r} is not the Request-URI {request_uri!r}"
    passwords = {p for u, p in accepted if u == username}
    if not passwords:
        return f"username {username!r} is not a credential of the trunk now"
    if len(passwords) > 1:
        return f"username {username!r} is held with {len(passwords)} passwords"
    expected = digest_response(
        username=str(username),
        realm=REALM,
        password=passwords.pop(),
        method="INVITE",
        uri=request_uri,
        nonce=nonce,
        qop=qop,
        nc=auth.get("nc"),
        cnonce=auth.get("cnonce"),
    )
    if expected != auth.get("response", "").lower():
        return f"wrong password for {username!r}"
    return ""


class SipAuthGate:
    """A UDP relay on ``ip:port`` in front of the UAS at ``upstream`` that decides every INVITE
    carrying credentials against ``account`` (see the module's docstring). Each client address
    gets a socket of its own towards the UAS, so the UAS's answers find their way back."""

    def __init__(
        self,
        account: TwilioAccount,
        ip: str,
        port: int = 5060,
        *,
        upstream: Address,
        reject_status: int = 403,
        reject_reason: str = "Forbidden",
    ) -> None:
        self.account, self.ip, self.port, self.upstream = account, ip, port, upstream
        self.reject = f"{reject_status} {reject_reason}"
        self.decisions: list[GateDecision] = []
        self.messages: list[SipMessage] = []  # "received" from clients, "sent" to them
        self.errors: list[str] = []  # messages the gate could not handle
        self._issued: dict[str, str | None] = {}  # nonce -> qop offered with it
        self._answered: dict[tuple[str, ...], bytes] = {}  # refused INVITE -> the refusal
        self._refused: set[tuple[str, str]] = set()  # (Call-ID, CSeq number): absorb the ACK
        self._peers: dict[Address, socket.socket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._selector = selectors.DefaultSelector()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> SipAuthGate:
        if _udp_bound(self.ip, self.port):
            raise RuntimeError(f"{self.ip}:{self.port} is already in use")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.ip, self.port))
        self._selector.register(self._sock, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name=f"sip-gate-{self.ip}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for sock in [self._sock, *self._peers.values()]:
            if sock is not None:
                sock.close()
        self._sock, self._peers = None, {}

    def __enter__(self) -> SipAuthGate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- what it decided
    def failures(self) -> list[GateDecision]:
        with self._lock:
            return [d for d in self.decisions if not d.accepted]

    def statuses(self, call_id: str | None) -> list[int]:
        """The status of every INVITE response the client got for `call_id`, in order."""
        with self._lock:
            return [
                m.status
                for m in self.messages
                if m.direction == "sent"
                and m.status is not None
                and m.call_id == call_id
                and m.cseq
                and m.cseq[1] == "INVITE"
            ]

    # ---------------------------------------------------------------- the relay
    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data, source = sock.recvfrom(65535)
                except OSError:
                    continue
                try:
                    if key.data is None:
                        self._from_client(data, source)
                    elif source == self.upstream:
                        self._from_upstream(data, key.data)
                except Exception as error:  # a malformed message must not stop the relay
                    self.errors.append(f"{source}: {type(error).__name__}: {error}")
        self._selector.close()

    def _peer(self, client: Address) -> socket.socket:
        sock = self._peers.get(client)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self.ip, 0))
            self._selector.register(sock, selectors.EVENT_READ, client)
            self._peers[client] = sock
        return sock

    def _from_client(self, data: bytes, client: Address) -> None:
        msg = parse_message(data, "received")
        with self._lock:
            self.messages.append(msg)
        txn = (str(msg.call_id), str(msg.cseq), str(msg.header("Via")))
        if (
            msg.method == "ACK"
            and msg.cseq
            and (str(msg.call_id), str(msg.cseq[0])) in self._refused
        ):
            return  # the ACK of a refusal of ours: the UAS never saw that INVITE
        if msg.method == "INVITE" and txn in self._answered:
            self._send(self._answered[txn], client)  # a retransmission: the same answer
            return
        header = msg.header("Proxy-Authorization") or msg.header("Authorization")
        if msg.method == "INVITE" and header is not None:
            decision = self._decide(msg, header, client)
            if not decision.accepted:
                refusal = self._refusal(msg)
                self._answered[txn] = refusal
                self._refused.add((str(msg.call_id), str(msg.cseq[0] if msg.cseq else "")))
                self._send(refusal, client)
                return
        self._peer(client).sendto(data, self.upstream)

    def _from_upstream(self, data: bytes, client: Address) -> None:
        msg = parse_message(data, "sent")
        for value in msg.header_all("Proxy-Authenticate") + msg.header_all("WWW-Authenticate"):
            challenge = parse_digest(value)
            if "nonce" in challenge:
                with self._lock:
                    self._issued[challenge["nonce"]] = challenge.get("qop")
        self._send(data, client)

    def _send(self, data: bytes, client: Address) -> None:
        with self._lock:
            self.messages.append(parse_message(data, "sent"))
        if self._sock is not None:
            self._sock.sendto(data, client)

    def _decide(self, msg: SipMessage, header: str, client: Address) -> GateDecision:
        at = self.account.clock()
        uri = msg.uri or ""
        domain = uri_host(uri)
        if _is_ip(domain):
            domain = uri_host(re.sub(r"^[^<]*<", "", msg.header("To") or ""))
        auth = parse_digest(header)
        if not header.strip().lower().startswith("digest"):
            reason = "not a Digest"
        else:
            with self._lock:
                issued = dict(self._issued)
            accepted = self.account.accepted_credentials(domain, at)
            reason = check_digest(auth, uri, accepted, issued)
            username = auth.get("username")
            if (
                reason
                and username not in {u for u, _ in accepted}
                and username in self.account.credentials_of_domain(domain)
            ):
                delay = self.account.rules.credential_delay
                reason += f" (held, not in effect yet: credential_delay {delay:g}s)"
        decision = GateDecision(
            at,
            msg.call_id,
            msg.cseq[0] if msg.cseq else None,
            auth.get("username"),
            domain,
            not reason,
            reason,
            f"{client[0]}:{client[1]}",
        )
        with self._lock:
            self.decisions.append(decision)
        with self.account.lock:
            self.account.sip_decisions.append(decision)
        return decision

    def _refusal(self, msg: SipMessage) -> bytes:
        lines = [f"SIP/2.0 {self.reject}"]
        lines += [f"Via: {v}" for v in msg.header_all("Via")]
        to = msg.header("To") or ""
        if ";tag=" not in to:
            to += f";tag=gate{secrets.token_hex(4)}"
        lines += [f"From: {msg.header('From')}", f"To: {to}"]
        lines += [f"Call-ID: {msg.call_id}", f"CSeq: {msg.header('CSeq')}"]
        lines += ["Server: twilio-standin", "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    def __repr__(self) -> str:
        return f"SipAuthGate({self.ip}:{self.port} -> {self.upstream[0]}:{self.upstream[1]})"


class TwilioSipSide:
    """Twilio's termination side for `account`: the gate on ``ip:port`` and the sipp UAS in
    "407" mode (Twilio's challenge) on ``ip:sipp_port``, whose Contact names the gate."""

    def __init__(
        self,
        account: TwilioAccount,
        ip: str,
        port: int = 5060,
        *,
        sipp_port: int = 5070,
        qop: bool = False,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        self.account = account
        self.sipp = TwilioStandIn(
            ip, sipp_port, mode="407", qop=qop, workdir=workdir, public=(ip, port)
        )
        self.gate = SipAuthGate(account, ip, port, upstream=(ip, sipp_port))

    def start(self) -> TwilioSipSide:
        self.sipp.start()
        try:
            self.gate.start()
        except BaseException:
            self.sipp.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.gate.stop()
        finally:
            self.sipp.stop()

    def cleanup(self) -> None:
        self.stop()
        self.sipp.cleanup()

    def __enter__(self) -> TwilioSipSide:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
