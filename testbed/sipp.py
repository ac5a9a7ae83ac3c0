"""A Twilio Elastic SIP Trunking stand-in: sipp as a UAS (stdlib only).

    with TwilioStandIn("127.0.0.2", 5060, username="trunkuser", password="pa;ss") as twilio:
        ...  # make Asterisk call PJSIP/+15551234567@acme
        inv = twilio.invites()[-1]
        assert inv.uri_user == "+15551234567"

sipp (Debian package ``sip-tester``) runs in the FOREGROUND as a child process this object owns
(never ``-bg``, which daemonizes and escapes), with ``-trace_msg`` so that every message it
received or sent can be read back. Scenarios: ``testbed/sipp/twilio-uas-401.xml`` (challenge
with 401 + WWW-Authenticate, sipp's own ``verifyauth`` checks the credentials: 200 or 403) and
``twilio-uas-407.xml`` (challenge with 407 + Proxy-Authenticate as Twilio does; sipp answers
200 to any INVITE carrying Proxy-Authorization, and :meth:`TwilioStandIn.verify_digest` checks
the digest here, RFC 2617/7616). OPTIONS are answered 200 at any time; sipp keeps serving calls
until stopped (``-m`` unlimited).

Secure trunks (TLS, SRTP/SDES): :class:`TlsTwilioStandIn`, the same sipp over TCP behind
stunnel (Debian's sipp has no TLS), scenario ``twilio-uas-tls.xml``.
"""

from __future__ import annotations

import atexit
import hashlib
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SIPP = "sipp"
SCENARIO_DIR = Path(__file__).resolve().parent / "sipp"
REALM = "sip.twilio.com"
STATIC_PAYLOADS = {0: "PCMU", 3: "GSM", 4: "G723", 8: "PCMA", 9: "G722", 18: "G729"}
COMPACT = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
}
SEPARATOR = "-" * 47

_running: dict[int, subprocess.Popen] = {}
_lock = threading.Lock()


def running_pids() -> set[int]:
    """pids of the sipp (and stunnel) processes this process started and has not stopped yet."""
    with _lock:
        return {pid for pid, p in _running.items() if p.poll() is None}


@atexit.register
def _cleanup_at_exit() -> None:
    with _lock:
        procs = list(_running.values())
    for p in procs:
        _terminate(p)


def _terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    with _lock:
        _running.pop(proc.pid, None)


def _proc_net_address(ip: str) -> tuple[str, str]:
    """(table suffix, address as /proc/net/{udp,tcp}[6] prints it) for ip."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return "", addr.packed[::-1].hex().upper()
    packed = addr.packed
    return "6", "".join(packed[i : i + 4][::-1].hex().upper() for i in range(0, 16, 4))


def _udp_bound(ip: str, port: int) -> bool:
    """Whether some socket is bound to ip:port/UDP (reads /proc/net/udp[6])."""
    suffix, want = _proc_net_address(ip)
    try:
        lines = Path(f"/proc/net/udp{suffix}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        local = line.split()[1]
        host, _, hexport = local.partition(":")
        if host == want and int(hexport, 16) == port:
            return True
    return False


def _tcp_listening(ip: str, port: int) -> bool:
    """Whether some socket listens on ip:port/TCP (reads /proc/net/tcp[6], state 0A)."""
    suffix, want = _proc_net_address(ip)
    try:
        lines = Path(f"/proc/net/tcp{suffix}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        words = line.split()
        host, _, hexport = words[1].partition(":")
        if host == want and int(hexport, 16) == port and words[3] == "0A":
            return True
    return False


def parse_digest(value: str) -> dict[str, str]:
    """'Digest a="b", c=d' -> {'a': 'b', 'c': 'd'} (keys lower-cased)."""
    value = value.strip()
    if value.lower().startswith("digest"):
        value = value[6:]
    return {
        k.lower(): (q if q or not u else u)
        for k, q, u in re.findall(
            r'([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', value
        )
    }


def _h(algorithm: str, text: str) -> str:
    algo = algorithm.upper().removesuffix("-SESS")
    name = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}.get(algo, "md5")
    return hashlib.new(name, text.encode()).hexdigest()


def digest_response(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    algorithm: str = "MD5",
) -> str:
    """RFC 2617 / RFC 7616 digest response (qop absent or "auth")."""
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


@dataclass
class SipMessage:
    direction: str  # "received" or "sent"
    timestamp: str
    start_line: str
    headers: list[tuple[str, str]]  # in order, names as written
    body: str
    raw: str

    # requests
    @property
    def is_request(self) -> bool:
        return not self.start_line.startswith("SIP/2.0")

    @property
    def method(self) -> str | None:
        return self.start_line.split()[0] if self.is_request else None

    @property
    def uri(self) -> str | None:
        return self.start_line.split()[1] if self.is_request else None

    @property
    def uri_user(self) -> str | None:
        return _uri_user(self.uri) if self.uri else None

    # responses
    @property
    def status(self) -> int | None:
        return None if self.is_request else int(self.start_line.split()[1])

    def header(self, name: str) -> str | None:
        """First value of a header (case-insensitive, compact forms understood)."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        want = COMPACT.get(name.lower(), name.lower())
        return [v for k, v in self.headers if COMPACT.get(k.lower(), k.lower()) == want]

    @property
    def call_id(self) -> str | None:
        return self.header("Call-ID")

    @property
    def cseq(self) -> tuple[int, str] | None:
        v = self.header("CSeq")
        if not v:
            return None
        num, _, meth = v.partition(" ")
        return int(num), meth.strip()

    @property
    def from_user(self) -> str | None:
        v = self.header("From")
        m = re.search(r"<([^>]*)>", v or "") or re.search(r"(sips?:[^;\s]*)", v or "")
        return _uri_user(m.group(1)) if m else None

    @property
    def from_display(self) -> str | None:
        v = self.header("From") or ""
        m = re.match(r'\s*"([^"]*)"', v) or re.match(r"\s*([^<\"]+?)\s*<", v)
        return m.group(1) if m else None

    @property
    def authorization(self) -> dict[str, str] | None:
        v = self.header("Proxy-Authorization") or self.header("Authorization")
        return parse_digest(v) if v else None

    @property
    def codecs(self) -> list[str]:
        """Codecs offered in the SDP, as rtpmap encoding names (PCMU, PCMA, telephone-event)."""
        names: list[str] = []
        rtpmap = dict(re.findall(r"^a=rtpmap:(\d+)\s+([^/\s]+)", self.body, re.M))
        for m in re.finditer(r"^m=audio\s+\d+\s+\S+\s+([\d ]+)", self.body, re.M):
            for pt in m.group(1).split():
                name = rtpmap.get(pt) or STATIC_PAYLOADS.get(int(pt))
                if name:
                    names.append(name)
        return names


def _uri_user(uri: str) -> str | None:
    m = re.match(r"\s*<?sips?:([^@;>]*)@", uri)
    return m.group(1) if m else None


def parse_message_log(text: str) -> list[SipMessage]:
    """Parse sipp's -trace_msg log into messages (received and sent)."""
    out: list[SipMessage] = []
    for chunk in text.split(SEPARATOR + " ")[1:]:
        lines = chunk.split("\n")
        timestamp = lines[0].strip()
        i = 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            continue
        info = lines[i]
        if "message received" in info:
            direction = "received"
        elif "message sent" in info:
            direction = "sent"
        else:
            continue
        i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        msg = "\n".join(lines[i:]).replace("\r\n", "\n")
        head, _, rest = msg.partition("\n\n")
        hlines = head.split("\n")
        headers: list[tuple[str, str]] = []
        for hl in hlines[1:]:
            if hl[:1] in (" ", "\t") and headers:
                headers[-1] = (headers[-1][0], headers[-1][1] + " " + hl.strip())
            elif ":" in hl:
                k, _, v = hl.partition(":")
                headers.append((k.strip(), v.strip()))
        length = next(
            (
                int(v)
                for k, v in headers
                if k.lower() in ("content-length", "l") and v.strip().isdigit()
            ),
            None,
        )
        body = rest if length is None else rest.replace("\n", "\r\n")[:length]
        body = body.replace("\r\n", "\n")
        out.append(SipMessage(direction, timestamp, hlines[0].strip(), headers, body, msg))
    return out


@dataclass
class DigestCheck:
    call_id: str | None
    cseq: int | None
    username: str | None
    realm: str | None
    uri: str | None
    qop: str | None
    ok: bool
    reason: str = ""
    params: dict[str, str] = field(default_factory=dict)


class TwilioStandIn:
    """sipp UAS standing in for <name>.pstn.twilio.com. mode "401" or "407" (the challenge
    Twilio sends; qop=True adds qop="auth" to it), or "503" (an edge out of service)."""

    def __init__(
        self,
        ip: str = "127.0.0.2",
        port: int = 5060,
        username: str = "trunkuser",
        password: str = "trunkpass",
        mode: str = "401",
        *,
        qop: bool = False,
        media_port: int | None = None,
        workdir: str | os.PathLike | None = None,
        start_timeout: float = 30,
        public: tuple[str, int] | None = None,
    ) -> None:
        if mode not in ("401", "407", "503"):
            raise ValueError("mode must be '401', '407' or '503' (an edge out of service)")
        self.ip, self.port = ip, port
        self.public = public or (ip, port)  # the address its Contact names (a relay in front)
        self.username, self.password = username, password
        self.mode, self.qop = mode, qop
        self.media_port = media_port or 16000 + (int(ipaddress.ip_address(ip)) % 1000) * 8
        self.scenario = SCENARIO_DIR / f"twilio-uas-{mode}.xml"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"trunkop-sipp-{ip}-{port}-"))
        self.message_file = self.workdir / "messages.log"
        self.error_file = self.workdir / "errors.log"
        self.output_file = self.workdir / "sipp.out"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        params = ", algorithm=MD5" + (', qop="auth"' if self.qop else "")
        return [
            SIPP,
            "-sf",
            str(self.scenario),
            "-i",
            self.ip,
            "-p",
            str(self.port),
            "-t",
            "u1",
            "-nostdin",
            "-mi",
            self.ip,
            "-mp",
            str(self.media_port),
            "-key",
            "twilio_user",
            self.username,
            "-key",
            "twilio_pass",
            self.password,
            "-key",
            "auth_params",
            params,
            "-key",
            "public_host",
            self.public[0],
            "-key",
            "public_port",
            str(self.public[1]),
            "-trace_msg",
            "-message_file",
            str(self.message_file),
            "-message_overwrite",
            "true",
            "-trace_err",
            "-error_file",
            str(self.error_file),
        ]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _listening(self) -> bool:
        """Whether sipp's own socket (UDP here) is bound."""
        return _udp_bound(self.ip, self.port)

    def start(self) -> TwilioStandIn:
        if shutil.which(SIPP) is None:
            raise RuntimeError("sipp not found: apt-get install -y sip-tester")
        if self._listening():
            raise RuntimeError(f"{self.ip}:{self.port} is already in use")
        out = open(self.output_file, "wb")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            out.close()
        with _lock:
            _running[self.proc.pid] = self.proc
        deadline = time.monotonic() + self.start_timeout
        while not self._listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipp exited ({self.proc.returncode}): {self.output()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sipp did not bind {self.ip}:{self.port}")
            time.sleep(0.1)
        return self

    def detach(self) -> None:
        """Keep sipp running after this process exits (make demo); stop it by pid later."""
        with _lock:
            if self.proc is not None:
                _running.pop(self.proc.pid, None)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Terminate sipp by pid and wait for it (the message log stays readable)."""
        if self.proc is not None:
            _terminate(self.proc)

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TwilioStandIn:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- what it saw
    def output(self) -> str:
        try:
            return self.output_file.read_text(errors="replace")
        except OSError:
            return ""

    def errors(self) -> str:
        try:
            return self.error_file.read_text(errors="replace")
        except OSError:
            return ""

    def log(self) -> list[SipMessage]:
        """Every message sipp received or sent, in order."""
        try:
            text = self.message_file.read_text(errors="replace")
        except OSError:
            return []
        return parse_message_log(text)

    def messages(self) -> list[SipMessage]:
        """The SIP requests sipp received, in order (retransmissions included)."""
        return [m for m in self.log() if m.direction == "received" and m.is_request]

    def invites(self) -> list[SipMessage]:
        return [m for m in self.messages() if m.method == "INVITE"]

    def options(self) -> list[SipMessage]:
        return [m for m in self.messages() if m.method == "OPTIONS"]

    def responses(self, call_id: str | None = None) -> list[SipMessage]:
        """The responses sipp sent (optionally for one Call-ID)."""
        return [
            m
            for m in self.log()
            if m.direction == "sent"
            and not m.is_request
            and (call_id is None or m.call_id == call_id)
        ]

    def wait_for(self, predicate, timeout: float = 30, interval: float = 0.2):
        """Poll messages() until predicate(messages) is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.messages())
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"sipp on {self.ip}:{self.port} did not see it in {timeout}s")
            time.sleep(interval)

    def digest_checks(
        self, password: str | None = None, username: str | None = None
    ) -> list[DigestCheck]:
        """Check the digest of every INVITE carrying (Proxy-)Authorization against
        username/password (default: this stand-in's)."""
        password = self.password if password is None else password
        username = self.username if username is None else username
        checks = []
        for m in self.invites():
            auth = m.authorization
            if auth is None:
                continue
            cseq = m.cseq[0] if m.cseq else None
            algorithm = auth.get("algorithm", "MD5")
            reason = ""
            if auth.get("username") != username:
                reason = f"username {auth.get('username')!r} != {username!r}"
            elif auth.get("realm") != REALM:
                reason = f"realm {auth.get('realm')!r} != {REALM!r}"
            elif auth.get("uri") is None or auth.get("nonce") is None:
                reason = "uri/nonce missing"
            else:
                expected = digest_response(
                    username=username,
                    realm=auth["realm"],
                    password=password,
                    method="INVITE",
                    uri=auth["uri"],
                    nonce=auth["nonce"],
                    qop=auth.get("qop"),
                    nc=auth.get("nc"),
                    cnonce=auth.get("cnonce"),
                    algorithm=algorithm,
                )
                if expected != auth.get("response"):
                    reason = f"response {auth.get('response')} != expected {expected}"
            checks.append(
                DigestCheck(
                    m.call_id,
                    cseq,
                    auth.get("username"),
                    auth.get("realm"),
                    auth.get("uri"),
                    auth.get("qop"),
                    not reason,
                    reason,
                    auth,
                )
            )
        return checks

    def verify_digest(self, password: str | None = None, username: str | None = None) -> bool:
        """True when at least one INVITE carried credentials and all of them match."""
        checks = self.digest_checks(password, username)
        return bool(checks) and all(c.ok for c in checks)

    def __repr__(self) -> str:
        return f"TwilioStandIn({self.ip}:{self.port}, mode={self.mode}, pid={self.pid})"


STUNNEL = "stunnel4"  # Debian's stunnel4 package


@dataclass
class TlsSession:
    """One TLS connection stunnel accepted, from its log."""

    peer: str  # "ip:port" of the client (Asterisk)
    negotiated: bool = False  # the handshake completed
    protocol: str = ""  # e.g. TLSv1.2
    cipher: str = ""  # e.g. ECDHE-RSA-AES256-GCM-SHA384
    forwarded_to: str = ""  # "ip:port" stunnel connected to (sipp's TCP socket)


class TlsTwilioStandIn(TwilioStandIn):
    """Twilio over TLS for secure trunks: stunnel terminates TLS on ``ip:tls_port`` (5061) with
    a certificate made for the occasion (``testbed.asterisk.make_certificate``, or the one
    given) and forwards plain TCP to a sipp UAS on ``ip:port`` (``twilio-uas-tls.xml``: 401
    challenge, sipp's ``verifyauth``, an SDES answer with ``RTP/SAVP`` and ``a=crypto``).
    Debian's sipp has no TLS of its own.

    Both processes run in the foreground as children of this object, held by pid (stunnel with
    ``foreground = yes`` and no pid file); :meth:`stop` ends them, stunnel first, and interpreter
    exit does if a test does not. What sipp received arrived through stunnel: nothing else can
    reach its TCP socket the way Asterisk talks (Asterisk has no TCP transport). stunnel's own
    log (:meth:`tls_sessions`) says which client connected and what TLS it negotiated."""

    def __init__(
        self,
        ip: str = "127.0.0.2",
        username: str = "trunkuser",
        password: str = "trunkpass",
        *,
        tls_port: int = 5061,
        port: int = 5062,
        qop: bool = False,
        media_port: int | None = None,
        certificate: tuple[Path, Path] | None = None,
        common_name: str = "twilio-standin",
        workdir: str | os.PathLike | None = None,
        start_timeout: float = 30,
    ) -> None:
        super().__init__(
            ip,
            port,
            username,
            password,
            mode="401",
            qop=qop,
            media_port=media_port,
            workdir=workdir,
            start_timeout=start_timeout,
        )
        self.mode = "tls"
        self.tls_port = tls_port
        self.scenario = SCENARIO_DIR / "twilio-uas-tls.xml"
        self.certificate = certificate
        self.common_name = common_name
        self.stunnel_config = self.workdir / "stunnel.conf"
        self.stunnel_log_file = self.workdir / "stunnel.log"
        self.stunnel_output_file = self.workdir / "stunnel.out"
        self.stunnel: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        params = ", algorithm=MD5" + (', qop="auth"' if self.qop else "")
        return [
            SIPP,
            "-sf",
            str(self.scenario),
            "-i",
            self.ip,
            "-p",
            str(self.port),
            "-t",
            "t1",
            "-nostdin",
            "-mi",
            self.ip,
            "-mp",
            str(self.media_port),
            "-key",
            "twilio_user",
            self.username,
            "-key",
            "twilio_pass",
            self.password,
            "-key",
            "auth_params",
            params,
            "-key",
            "public_host",
            self.ip,
            "-key",
            "public_port",
            str(self.tls_port),
            "-trace_msg",
            "-message_file",
            str(self.message_file),
            "-message_overwrite",
            "true",
            "-trace_err",
            "-error_file",
            str(self.error_file),
        ]

    @property
    def stunnel_pid(self) -> int | None:
        return self.stunnel.pid if self.stunnel else None

    def _listening(self) -> bool:
        return _tcp_listening(self.ip, self.port)

    def write_stunnel_config(self) -> Path:
        if self.certificate is None:
            from testbed.asterisk import make_certificate

            self.certificate = make_certificate(self.workdir / "tls", self.common_name, self.ip)
        crt, key = self.certificate
        self.stunnel_config.write_text(
            "; TLS in front of the sipp Twilio stand-in (testbed/sipp.py TlsTwilioStandIn)\n"
            "foreground = yes\n"
            "pid =\n"
            "syslog = no\n"
            f"output = {self.stunnel_log_file}\n"
            "debug = info\n"
            "[twilio-tls]\n"
            f"accept = {self.ip}:{self.tls_port}\n"
            f"connect = {self.ip}:{self.port}\n"
            f"cert = {crt}\n"
            f"key = {key}\n"
            "sslVersionMin = TLSv1.2\n"
        )
        return self.stunnel_config

    def start(self) -> TlsTwilioStandIn:
        if shutil.which(STUNNEL) is None:
            raise RuntimeError("stunnel not found: apt-get install -y stunnel4")
        if _tcp_listening(self.ip, self.tls_port):
            raise RuntimeError(f"{self.ip}:{self.tls_port}/tcp is already in use")
        self.write_stunnel_config()
        super().start()
        try:
            self._start_stunnel()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_stunnel(self) -> None:
        out = open(self.stunnel_output_file, "wb")  # noqa: SIM115 - the child owns it
        try:
            self.stunnel = subprocess.Popen(
                [STUNNEL, str(self.stunnel_config)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            out.close()
        with _lock:
            _running[self.stunnel.pid] = self.stunnel
        deadline = time.monotonic() + self.start_timeout
        while not _tcp_listening(self.ip, self.tls_port):
            if self.stunnel.poll() is not None:
                raise RuntimeError(
                    f"stunnel exited ({self.stunnel.returncode}): {self.stunnel_output()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"stunnel did not listen on {self.ip}:{self.tls_port}")
            time.sleep(0.1)

    def detach(self) -> None:
        super().detach()
        with _lock:
            if self.stunnel is not None:
                _running.pop(self.stunnel.pid, None)

    def running(self) -> bool:
        return super().running() and self.stunnel is not None and self.stunnel.poll() is None

    def stop(self) -> None:
        """Terminate stunnel, then sipp, by pid (their logs stay readable)."""
        try:
            if self.stunnel is not None:
                _terminate(self.stunnel)
        finally:
            super().stop()

    def stunnel_output(self) -> str:
        try:
            return self.stunnel_output_file.read_text(errors="replace")
        except OSError:
            return ""

    def stunnel_log(self) -> str:
        try:
            return self.stunnel_log_file.read_text(errors="replace")
        except OSError:
            return ""

    def tls_sessions(self) -> list[TlsSession]:
        """The connections stunnel accepted, in order (one per TLS connection)."""
        sessions: list[TlsSession] = []
        current: dict[str, TlsSession] = {}  # stunnel's connection number -> its session
        for line in self.stunnel_log().splitlines():
            m = re.search(r"LOG\d\[(\d+)\]: (.*)$", line)
            if not m:
                continue
            thread, text = m.groups()
            if accepted := re.match(r"Service \[[^]]+\] accepted connection from (\S+)", text):
                current[thread] = TlsSession(accepted.group(1))
                sessions.append(current[thread])
                continue
            session = current.get(thread)
            if session is None:
                continue
            if text.startswith("TLS accepted"):
                session.negotiated = True
            elif cipher := re.match(r"(TLSv[\d.]+) ciphersuite: (\S+)", text):
                session.protocol, session.cipher = cipher.groups()
            elif connected := re.match(r"s_connect: connected (\S+)", text):
                session.forwarded_to = connected.group(1)
        return sessions

    def __repr__(self) -> str:
        return (
            f"TlsTwilioStandIn(tls {self.ip}:{self.tls_port} -> tcp {self.ip}:{self.port},"
            f" sipp pid={self.pid}, stunnel pid={self.stunnel_pid})"
        )


@dataclass
class InboundCall:
    """What one inbound call got: the final status Asterisk answered the INVITE with."""

    did: str
    caller: str
    status: int | None
    messages: list[SipMessage] = field(default_factory=list)


class TwilioCaller:
    """sipp UAC placing inbound calls the way Twilio does (``twilio-uac-inbound.xml``), from
    ``ip`` (a loopback address of the test's choosing: inside or outside a trunk's source
    ranges). Each ``call()`` runs sipp once in the foreground under this object's control."""

    def __init__(
        self, ip: str, account_sid: str, *, port: int = 5062, media_port: int | None = None
    ) -> None:
        self.ip, self.port, self.account_sid = ip, port, account_sid
        self.media_port = media_port or 17000 + (int(ipaddress.ip_address(ip)) % 1000) * 8
        self.scenario = SCENARIO_DIR / "twilio-uac-inbound.xml"

    def call(
        self, target: str, did: str, caller: str, *, hold_ms: int = 500, timeout: float = 30
    ) -> InboundCall:
        """INVITE sip:<did>@<target> ("ip:port"); returns the final response status."""
        workdir = Path(tempfile.mkdtemp(prefix=f"trunkop-sipp-uac-{self.ip}-"))
        messages = workdir / "messages.log"
        command = [
            SIPP,
            target,
            "-sf",
            str(self.scenario),
            "-i",
            self.ip,
            "-p",
            str(self.port),
            "-t",
            "u1",
            "-nostdin",
            "-m",
            "1",
            "-timeout",
            f"{int(timeout)}s",
            "-mi",
            self.ip,
            "-mp",
            str(self.media_port),
            "-key",
            "did",
            did,
            "-key",
            "caller",
            caller,
            "-key",
            "account_sid",
            self.account_sid,
            "-d",
            str(hold_ms),
            "-trace_msg",
            "-message_file",
            str(messages),
        ]
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with _lock:
            _running[proc.pid] = proc
        try:
            proc.wait(timeout + 10)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _terminate(proc)
        try:
            log = parse_message_log(messages.read_text(errors="replace"))
        except OSError:
            log = []
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        finals = [
            m.status
            for m in log
            if m.direction == "received"
            and not m.is_request
            and m.status is not None
            and m.status >= 200
            and m.cseq
            and m.cseq[1] == "INVITE"
        ]
        return InboundCall(did, caller, finals[-1] if finals else None, log)
