from pathlib import Path

from trunk_operator.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_render_writes_the_files_asterisk_would_get(tmp_path: Path) -> None:
    args = ["render", "-o", str(tmp_path)]
    for name in ("acme-secret.yaml", "acme-trunk.yaml", "acme-dids.yaml"):
        args += ["-f", str(EXAMPLES / name)]
    assert main([*args, "--strict"]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.conf"))
    assert written == [
        "extensions.d/didsegment-acme-main.conf",
        "extensions.d/twiliotrunk-acme.conf",
        "pjsip.d/twiliotrunk-acme-auth.conf",
        "pjsip.d/twiliotrunk-acme.conf",
    ]
    auth = (tmp_path / "pjsip.d/twiliotrunk-acme-auth.conf").read_text()
    assert "password = s3cret\\;with#chars" in auth


def test_render_without_secret_is_strict_failure(tmp_path: Path) -> None:
    assert main(["render", "--strict", "-f", str(EXAMPLES / "acme-trunk.yaml")]) == 1
