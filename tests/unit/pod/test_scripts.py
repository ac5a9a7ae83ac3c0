"""The pod scripts (pod/scripts/*.sh) run as the operator sends them, relocated to a temporary
directory, against a stand-in `asterisk` that records each CLI command. What Asterisk makes
of the files is the e2e tests' (tests/e2e): here, what the scripts do with files and commands.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from trunk_operator.core.render import EXTENSIONS_DIR, PJSIP_DIR, POD_FILE, Files
from trunk_operator.pod.channel import (
    CONFIG_DIR,
    deliver_script,
    observe_script,
    pack,
    rollback_script,
    sections,
)

PJSIP = f"{PJSIP_DIR}/{POD_FILE}"
DIALPLAN = f"{EXTENSIONS_DIR}/{POD_FILE}"
UPTIME = 100
STAND_IN = f"""#!/bin/sh
echo "$2" >> "$ASTERISK_LOG"
case "$2" in
  'core show uptime seconds') echo 'System uptime: {UPTIME}' ;;
  'pjsip list endpoints') printf ' Endpoint:  acme   Not in use  0 of inf\\n' ;;
esac
"""
RELOADS = {"module reload res_pjsip.so", "dialplan reload"}


class Pod:
    """A config directory, and the stand-in `asterisk` on PATH."""

    def __init__(self, root: Path) -> None:
        self.config = root / "etc-asterisk"
        self.config.mkdir()
        bin_dir = root / "bin"
        bin_dir.mkdir()
        (bin_dir / "asterisk").write_text(STAND_IN)
        (bin_dir / "asterisk").chmod(0o755)
        self.log = root / "asterisk.log"
        self.env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ASTERISK_LOG": str(self.log)}

    def run(self, script: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        relocated = script.replace(CONFIG_DIR, str(self.config))
        return subprocess.run(
            ["sh", "-c", relocated],
            input=stdin.decode("latin-1"),
            capture_output=True,
            text=True,
            encoding="latin-1",
            env=self.env,
            timeout=30,
            check=False,
        )

    def commands(self) -> list[str]:
        return self.log.read_text().splitlines()

    def deliver(self, files: Files, digest: str, **kwargs: object) -> dict[str, str]:
        payload = pack(files)
        out = self.run(deliver_script(len(payload), digest, **kwargs), payload)  # type: ignore[arg-type]
        assert out.returncode == 0, out.stderr
        return sections(out.stdout)

    def read(self, path: str) -> str:
        return (self.config / path).read_text()


@pytest.fixture
def pod(tmp_path: Path) -> Pod:
    return Pod(tmp_path)


def files(version: str) -> Files:
    return {PJSIP: f"; pjsip {version}\n", DIALPLAN: f"; dialplan {version}\n"}


def test_a_delivery_puts_the_files_in_place_and_prints_what_it_has(pod: Pod) -> None:
    parts = pod.deliver(files("v1"), "digest-1")
    assert pod.read(PJSIP) == "; pjsip v1\n" and pod.read(DIALPLAN) == "; dialplan v1\n"
    assert parts["hash"].strip() == "digest-1"
    digests = dict(line.split("  ")[::-1] for line in parts["files"].splitlines())
    assert digests == {p: hashlib.sha256(t.encode()).hexdigest() for p, t in files("v1").items()}
    assert {"clock:start", "clock:swapped", "clock:reloaded", "clock:read"} <= parts.keys()
    assert {"list-endpoints", "list-contacts", "transports"} <= parts.keys()


@pytest.mark.parametrize(
    ("reload", "expected"),
    [
        ((PJSIP_DIR, EXTENSIONS_DIR), RELOADS),
        ((PJSIP_DIR,), {"module reload res_pjsip.so"}),
        ((EXTENSIONS_DIR,), {"dialplan reload"}),
        ((), set()),
    ],
)
def test_a_delivery_reloads_only_what_changed_never_transports(
    pod: Pod, reload: tuple[str, ...], expected: set[str]
) -> None:
    pod.deliver(files("v1"), "d1", reload=reload)
    assert {c for c in pod.commands() if "reload" in c} == expected


def test_a_rollback_puts_the_previous_set_back_and_reloads_it(pod: Pod) -> None:
    pod.deliver(files("v1"), "digest-1")
    pod.deliver(files("v2"), "digest-2")
    assert pod.read(PJSIP) == "; pjsip v2\n"
    out = pod.run(rollback_script())
    assert out.returncode == 0, out.stderr
    assert pod.read(PJSIP) == "; pjsip v1\n" and pod.read(DIALPLAN) == "; dialplan v1\n"
    assert sections(out.stdout)["hash"].strip() == "digest-1"
    assert {c for c in pod.commands() if "reload" in c} == RELOADS


def test_a_file_the_new_set_lacks_is_removed(pod: Pod) -> None:
    pod.deliver(files("v1"), "d1")
    pod.deliver({PJSIP: "; only pjsip\n"}, "d2")
    assert not (pod.config / DIALPLAN).exists()
    assert pod.read(PJSIP) == "; only pjsip\n"


def test_only_endpoints_asterisk_had_are_read_in_depth(pod: Pod) -> None:
    names = b"acme\nnewco\n"
    payload = pack(files("v1"))
    script = deliver_script(len(payload), "d1", detail_size=len(names))
    out = pod.run(script, payload + names)
    assert out.returncode == 0, out.stderr
    parts = sections(out.stdout)
    assert [p for p in parts if p.startswith("endpoint:")] == ["endpoint:acme"]
    # One endpoint was new: every type's listing is read, so its objects are checked.
    assert {"list-aors", "list-auths", "list-identifies"} <= parts.keys()


def test_a_file_delivery_is_refused_while_this_asterisk_holds_pushed_objects(pod: Pod) -> None:
    state = pod.config / ".trunk-operator"
    state.mkdir()
    (state / "pushed.state").write_text(f"boot {int(time.time()) - UPTIME}\n")
    payload = pack(files("v1"))
    out = pod.run(deliver_script(len(payload), "d1"), payload)
    assert out.returncode == 3
    assert "pushed over ARI" in out.stderr
    assert not (pod.config / PJSIP).exists()
    # A record of an earlier start of Asterisk is dropped, and the files go in.
    (state / "pushed.state").write_text(f"boot {int(time.time()) - UPTIME - 600}\n")
    pod.deliver(files("v1"), "d1")
    assert pod.read(PJSIP) == "; pjsip v1\n"
    assert not (state / "pushed.state").exists()


def test_a_delivery_waits_for_one_still_running_then_gives_up(pod: Pod) -> None:
    state = pod.config / ".trunk-operator"
    state.mkdir()
    holder = subprocess.Popen(["flock", str(state / "lock"), "sleep", "30"])
    try:
        time.sleep(0.2)
        payload = pack(files("v1"))
        out = pod.run(deliver_script(len(payload), "d1", lock_wait=1), payload)
        assert out.returncode == 4
        assert "another delivery still runs" in out.stderr
    finally:
        holder.kill()
        holder.wait()


def test_an_observation_changes_nothing(pod: Pod) -> None:
    pod.deliver(files("v1"), "digest-1")
    before = contents(pod.config)
    contexts = b"trunkop-in-acme\n"
    out = pod.run(observe_script(0, len(contexts), pushed=False), contexts)
    assert out.returncode == 0, out.stderr
    assert sections(out.stdout)["hash"].strip() == "digest-1"
    assert not any("reload" in c for c in pod.commands())
    assert "dialplan show trunkop-in-acme" in pod.commands()
    assert contents(pod.config) == before


def contents(config: Path) -> dict[str, bytes]:
    """The files under `config` but the scripts' scratch files (what was read, and how)."""
    scratch = {"observed", "verify-endpoints", "verify-contexts"}
    return {
        str(p.relative_to(config)): p.read_bytes()
        for p in config.rglob("*")
        if p.is_file() and not scratch & set(p.relative_to(config).parts)
    }
