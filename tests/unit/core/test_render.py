import os
from pathlib import Path

import pytest

from tests.cases import PASSWORD, cases, large_case, segment, trunk
from trunk_operator.core.render import (
    RenderError,
    asterisk_value,
    files_hash,
    render_segment,
    render_trunk,
    render_trunk_auth,
)

GOLDEN = Path(__file__).resolve().parents[2] / "golden"


@pytest.mark.parametrize("name", sorted(cases()))
def test_golden_files(name: str) -> None:
    """`UPDATE_GOLDEN=1 pytest tests/unit` rewrites them; review the diff."""
    files = cases()[name].files()
    directory = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        for path, text in files.items():
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            (directory / path).write_text(text)
    on_disk = {str(p.relative_to(directory)): p.read_text() for p in directory.rglob("*.conf")}
    assert on_disk == files


def test_rendering_is_deterministic() -> None:
    first = cases()["two-trunks"].files()
    second = cases()["two-trunks"].files()
    assert first == second
    assert files_hash(first) == files_hash(second)
    assert files_hash(first) != files_hash(cases()["single-trunk"].files())


def test_password_semicolon_is_escaped_and_nothing_else_changes() -> None:
    text = render_trunk_auth("acme", trunk("acme.pstn.twilio.com"), "u", PASSWORD)
    line = next(v for v in text.values()).splitlines()[-1]
    assert line == "password = " + PASSWORD.replace(";", "\\;")


@pytest.mark.parametrize(
    "evil",
    ["a\nb", "x\r\n[evil]\ntype=endpoint", "p\n#exec /bin/sh", "tab\there", "nul\0", " lead"],
)
def test_secret_values_cannot_inject_lines(evil: str) -> None:
    with pytest.raises(RenderError):
        render_trunk_auth("acme", trunk("acme.pstn.twilio.com"), "user", evil)
    with pytest.raises(RenderError):
        render_trunk_auth("acme", trunk("acme.pstn.twilio.com"), evil, "password")


def test_every_value_goes_through_the_escaper() -> None:
    assert asterisk_value("a;b") == "a\\;b"
    assert asterisk_value(5) == "5"
    with pytest.raises(RenderError):
        asterisk_value("a\nb")


def test_secret_never_reaches_public_files() -> None:
    public = render_trunk("acme", trunk("acme.pstn.twilio.com"))
    auth = render_trunk_auth("acme", trunk("acme.pstn.twilio.com"), "user", "topsecret")
    assert not set(public) & set(auth)
    assert all("topsecret" not in text for text in public.values())
    assert all(path.endswith("-auth.conf") for path in auth)


def test_secure_trunk_uses_tls_contacts_and_srtp() -> None:
    files = cases()["secure-trunk"].files()
    pjsip = files["pjsip.d/twiliotrunk-secure.conf"]
    assert "contact = sip:secure.pstn.twilio.com:5061\\;transport=tls" in pjsip
    assert "media_encryption = sdes" in pjsip
    assert "transport = transport-tls" in pjsip


def test_account_sid_identifies_by_header_not_ip() -> None:
    pjsip = cases()["two-trunks"].files()["pjsip.d/twiliotrunk-acme.conf"]
    assert "match_header = X-Twilio-AccountSid: AC" in pjsip
    assert "match = " not in pjsip


def test_excluded_dids_are_not_routed() -> None:
    seg = segment("acme", numbers=["+15551230001", "+15551230002"])
    files = render_segment("s", seg, "acme", trunk("acme.pstn.twilio.com"), {"+15551230001"})
    text = next(iter(files.values()))
    assert "+15551230002" in text
    assert "+15551230001" not in text


def test_large_segment_is_spread_over_small_contexts() -> None:
    files = large_case(100_000).files()
    text = files["extensions.d/didsegment-bulk-all.conf"]
    contexts = [line for line in text.splitlines() if line.startswith("[trunkop-in-")]
    assert len(contexts) == 1000
    assert text.count("exten => +1555") == 100_000


@pytest.mark.parametrize("name", sorted(cases()))
def test_nothing_rendered_defines_a_transport_or_global(name: str) -> None:
    """Transports belong to the Asterisk deployment: Asterisk does not reload them, and one
    delivered here would only take effect at a restart (or break the pod's others)."""
    for path, text in cases()[name].pod_files().items():
        types = {
            line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("type")
        }
        assert types <= {"endpoint", "aor", "auth", "identify"}, (path, types)
