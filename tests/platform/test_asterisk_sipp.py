"""The test platform itself: a real Asterisk 22 container and the sipp Twilio stand-in.

Needs podman + runc, the image localhost/asterisk:22 (testbed/asterisk/build-image.sh, built on
first use) and sipp (apt-get install -y sip-tester). Skipped when podman or sipp is missing.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from testbed import asterisk as asterisk_mod
from testbed import sipp as sipp_mod
from testbed.asterisk import AsteriskContainer
from testbed.sipp import TwilioStandIn

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed"),
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
TWILIO_HOST = "acme.pstn.twilio.com"
STANDIN_IP = "127.0.0.2"
USERNAME = "trunkuser"
PASSWORD = "pa;ss#1"  # ';' must be written '\;' in pjsip.conf
NUMBER = "+15551234567"
CALLER_ID = "+15550001111"

_CREATED_CONTAINERS: set[str] = set()
_CREATED_SIPP: set[int] = set()


def trunk_conf(password: str = PASSWORD, host: str = TWILIO_HOST) -> str:
    escaped = password.replace("\\", "\\\\").replace(";", "\\;")
    return f"""\
[acme]
type = endpoint
transport = transport-udp
context = from-acme
disallow = all
allow = ulaw,alaw
outbound_auth = acme-auth
aors = acme-aor
from_domain = {host}
from_user = {CALLER_ID}
direct_media = no
rtp_symmetric = yes
force_rport = yes
rewrite_contact = yes
dtmf_mode = rfc4733

[acme-auth]
type = auth
auth_type = userpass
username = {USERNAME}
password = {escaped}

[acme-aor]
type = aor
contact = sip:{host}
qualify_frequency = 5
"""


@pytest.fixture(scope="session")
def asterisk_image() -> str:
    asterisk_mod.ensure_image()
    return asterisk_mod.IMAGE


def _container(request, asterisk_image, name="e2e", bind_ip="127.0.10.1", hosts=None):
    c = AsteriskContainer(name, bind_ip, {TWILIO_HOST: STANDIN_IP} if hosts is None else hosts)
    _CREATED_CONTAINERS.add(c.name)
    request.addfinalizer(c.stop)
    return c.start()


def _standin(request, mode="401", password=PASSWORD, **kw) -> TwilioStandIn:
    s = TwilioStandIn(STANDIN_IP, 5060, USERNAME, password, mode=mode, **kw)
    request.addfinalizer(s.cleanup)
    s.start()
    assert s.pid is not None
    _CREATED_SIPP.add(s.pid)
    return s


@pytest.fixture
def pbx(request, asterisk_image) -> AsteriskContainer:
    return _container(request, asterisk_image)


def wait_until(fn, timeout=30.0, interval=0.5, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def install_trunk(pbx: AsteriskContainer, password: str = PASSWORD) -> None:
    pbx.write_file("/etc/asterisk/pjsip.d/acme.conf", trunk_conf(password))
    out = pbx.rx("module reload res_pjsip.so")
    assert "reloaded successfully" in out, out
    assert "acme" in pbx.rx("pjsip show endpoint acme")


def contact_avail(pbx: AsteriskContainer) -> bool:
    return any(
        line.strip().startswith("Contact:") and f"sip:{TWILIO_HOST}" in line and " Avail " in line
        for line in pbx.rx("pjsip show contacts").splitlines()
    )


def call_and_wait(pbx: AsteriskContainer, twilio: TwilioStandIn, *, expect_bye: bool = True):
    before = len(twilio.invites())
    pbx.rx(f"channel originate PJSIP/{NUMBER}@acme application Wait 1")
    if expect_bye:
        twilio.wait_for(lambda msgs: [m for m in msgs if m.method == "BYE"], timeout=30)
    else:
        twilio.wait_for(
            lambda msgs: (
                len([m for m in msgs if m.method == "INVITE"]) >= before + 2
                and any(m.method == "ACK" for m in msgs)
            ),
            timeout=30,
        )
        time.sleep(1)
    return twilio.invites()[before:]


def test_core_show_version_is_asterisk_22(pbx):
    out = pbx.rx("core show version")
    assert out.startswith("Asterisk 22."), out
    transports = pbx.rx("pjsip show transports")
    assert "transport-udp" in transports and "127.0.10.1:5060" in transports
    assert "Objects found: 2" in transports  # transport-udp and transport-tls


def test_sorcery_keeps_the_types_no_trunk_uses_out_of_the_reload(pbx):
    """examples/asterisk/config/sorcery.conf (the test image's copy is the same file): a PJSIP
    reload parses pjsip.conf, with every trunk, once per object type it reads from there."""
    examples = ROOT / "examples" / "asterisk" / "config" / "sorcery.conf"
    assert (asterisk_mod.BASE_CONFIG / "sorcery.conf").read_text() == examples.read_text()
    pbx.rx("logger add channel sorcery-check debug")
    pbx.rx("core set debug 2 res_sorcery_config.so")
    try:
        pbx.rx("module reload res_pjsip.so")
        time.sleep(0.5)
        log = pbx.exec("cat", "/var/log/asterisk/sorcery-check").stdout
    finally:
        pbx.rx("core set debug off res_sorcery_config.so")
        pbx.rx("logger remove channel sorcery-check")
    parsed = set(re.findall(r"objects of type '([^']+)' from 'pjsip.conf'", log))
    # What a trunk or the base configuration needs ('system' is read at start only).
    assert parsed == {"endpoint", "aor", "auth", "identify", "transport", "global"}, log[-2000:]
    # ...and every module still loads (a type mapped in the wrong section fails its module).
    assert "declined to load" not in pbx.logs()
    assert "Running" in pbx.rx("module show like res_pjsip_acl")


def test_trunk_qualifies_and_calls_with_401(request, pbx):
    twilio = _standin(request, "401")
    install_trunk(pbx)
    wait_until(lambda: contact_avail(pbx), 30, what="contact Avail")
    assert twilio.options(), "no OPTIONS reached the stand-in"

    invites = call_and_wait(pbx, twilio)
    first, second = invites[0], invites[-1]
    assert first.uri == f"sip:{NUMBER}@{TWILIO_HOST}"
    assert first.uri_user == NUMBER
    assert first.from_user == CALLER_ID
    assert first.authorization is None
    assert second.authorization and second.authorization["username"] == USERNAME
    assert second.authorization["realm"] == "sip.twilio.com"
    assert {"PCMU", "PCMA"} <= set(second.codecs) and "telephone-event" in second.codecs
    statuses = [r.status for r in twilio.responses(second.call_id)]
    assert statuses[0] == 401 and 200 in statuses and 403 not in statuses
    assert twilio.verify_digest(PASSWORD)
    assert not twilio.verify_digest("pa")  # what an unescaped ';' would have sent
    bye = [m for m in twilio.messages() if m.method == "BYE"]
    assert bye and bye[-1].call_id == second.call_id


def test_wrong_password_is_refused_with_403(request, pbx):
    twilio = _standin(request, "401", password="the-right-one")
    install_trunk(pbx, password=PASSWORD)
    call_and_wait(pbx, twilio, expect_bye=False)
    call_id = twilio.invites()[-1].call_id
    statuses = [r.status for r in twilio.responses(call_id)]
    assert statuses == [401, 403], statuses
    assert not [m for m in twilio.messages() if m.method == "BYE"]
    assert "0 active channels" in pbx.rx("core show channels count")


@pytest.mark.parametrize("qop", [False, True], ids=["plain", "qop-auth"])
def test_407_proxy_auth_digest_verifies(request, pbx, qop):
    twilio = _standin(request, "407", qop=qop)
    install_trunk(pbx)
    invites = call_and_wait(pbx, twilio)
    second = invites[-1]
    assert second.header("Proxy-Authorization") and not second.header("Authorization")
    statuses = [r.status for r in twilio.responses(second.call_id)]
    assert statuses[0] == 407 and 200 in statuses
    checks = twilio.digest_checks()
    assert checks and all(c.ok for c in checks), checks
    assert all((c.qop == "auth") == qop for c in checks)
    assert not twilio.verify_digest("wrong")


def test_two_containers_are_isolated(request, asterisk_image):
    a = _container(request, asterisk_image, "iso-a", "127.0.10.1")
    b = _container(request, asterisk_image, "iso-b", "127.0.10.2")
    assert a.name != b.name and a.rtp_range != b.rtp_range
    a.write_file("/etc/asterisk/pjsip.d/only-a.conf", "; a\n")
    assert "only-a.conf" in a.exec("ls", "/etc/asterisk/pjsip.d").stdout
    assert "only-a.conf" not in b.exec("ls", "/etc/asterisk/pjsip.d").stdout
    assert "127.0.10.2:5060" in b.rx("pjsip show transports")
    assert "127.0.10.1:5060" in a.rx("pjsip show transports")


def test_add_host_at_runtime_resolves_after_reload(request, asterisk_image):
    twilio = _standin(request, "401")
    pbx = _container(request, asterisk_image, "hosts", hosts={})
    pbx.add_host(TWILIO_HOST, STANDIN_IP)
    assert TWILIO_HOST in pbx.read_file("/etc/hosts")
    install_trunk(pbx)
    wait_until(lambda: contact_avail(pbx), 30, what="contact Avail after add_host")
    assert twilio.options()


def test_kill_and_restart_give_a_fresh_container(pbx):
    name = pbx.name
    pbx.write_file("/etc/asterisk/pjsip.d/acme.conf", trunk_conf())
    pbx.write_file(
        "/etc/asterisk/extensions.d/acme.conf", "[from-acme]\nexten => _+X.,1,Hangup()\n"
    )
    pbx.kill()
    assert not pbx.running()
    pbx.restart()
    assert pbx.name == name and pbx.running()
    assert pbx.exec(
        "ls", "-A", "/etc/asterisk/pjsip.d", "/etc/asterisk/extensions.d"
    ).stdout.split() == ["/etc/asterisk/extensions.d:", "/etc/asterisk/pjsip.d:"]
    assert "Unable to find" in pbx.rx("pjsip show endpoint acme") or "acme" not in pbx.rx(
        "pjsip show endpoints"
    )


def test_zz_nothing_left_behind():
    """Runs last in this module: every container and sipp started above is gone."""
    assert _CREATED_CONTAINERS, "no container was started by this module"
    leftovers = set(asterisk_mod.list_containers()) & _CREATED_CONTAINERS
    assert not leftovers, leftovers
    assert not sipp_mod.running_pids() & _CREATED_SIPP
    for pid in _CREATED_SIPP:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert b"sipp" not in f.read(), f"sipp pid {pid} still running"
        except FileNotFoundError:
            pass
    assert not sipp_mod._udp_bound(STANDIN_IP, 5060)
