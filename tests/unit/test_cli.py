from pathlib import Path

import pytest
import yaml

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
    assert "password = S3cret\\;with#chars" in auth


def test_render_without_secret_is_strict_failure(tmp_path: Path) -> None:
    assert main(["render", "--strict", "-f", str(EXAMPLES / "acme-trunk.yaml")]) == 1


def _trunk_named(tmp_path: Path, name: str) -> Path:
    trunk = yaml.safe_load((EXAMPLES / "acme-trunk.yaml").read_text())
    trunk["metadata"]["name"] = name
    path = tmp_path / "trunk.yaml"
    path.write_text(yaml.safe_dump(trunk))
    return path


@pytest.mark.parametrize(
    "name",
    [
        "../../../../escaped",
        "a/b",
        "Upper",
        "-dash",
        "dot.",
        pytest.param("x" * 254, id="254-characters"),
        pytest.param("", id="empty"),
    ],
)
def test_render_refuses_names_that_are_not_object_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A name becomes a file name: `../..` would let `-o` write outside its directory."""
    trunk = _trunk_named(tmp_path, name)
    out = tmp_path / "a" / "b" / "out"
    args = ["render", "-f", str(EXAMPLES / "acme-secret.yaml"), "-f", str(trunk), "-o", str(out)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert f"{trunk}, document 1 (TwilioTrunk): metadata.name {name!r} is not a valid" in error
    assert [p for p in tmp_path.rglob("*") if p.suffix == ".conf"] == []


def test_render_accepts_dotted_object_names(tmp_path: Path) -> None:
    name = "acme.eu-1"
    trunk = _trunk_named(tmp_path, name)
    args = ["render", "-f", str(EXAMPLES / "acme-secret.yaml"), "-f", str(trunk)]
    assert main([*args, "-o", str(tmp_path / "out"), "--strict"]) == 0
    assert (tmp_path / "out" / "pjsip.d" / f"twiliotrunk-{name}.conf").exists()


def test_render_does_not_write_through_a_symlink_out_of_the_output_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "pjsip.d").symlink_to(elsewhere)
    args = ["render", "-o", str(out)]
    for name in ("acme-secret.yaml", "acme-trunk.yaml"):
        args += ["-f", str(EXAMPLES / name)]
    assert main(args) == 2
    assert "outside" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []
    assert list(out.rglob("*.conf")) == []  # refused before anything is written
