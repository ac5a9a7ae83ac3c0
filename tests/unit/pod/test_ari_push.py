"""The pod-side ARI pusher (pod/scripts/ari-push.pl) against a stand-in for ARI's dynamic
configuration resource: which requests it makes, in what order, and what it remembers.
The real ARI is exercised by tests/e2e/test_ari_delivery.py."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from trunk_operator.core.render import PJSIP_DIR, POD_FILE
from trunk_operator.pod import shell
from trunk_operator.pod.ari import AriAccess
from trunk_operator.pod.channel import MARK, sections
from trunk_operator.pod.delivery import RECORD_DIFFERS, AriDelivery, Delivery, Round

USER, PASSWORD = "trunkop", "s3cret:with-colon"
TRUNK = """; TwilioTrunk acme
[acme]
type = endpoint
allow = ulaw,alaw
outbound_auth = acme-auth
aors = acme-aor
set_var = NOTE=a\\;b "quoted"

[acme-aor]
type = aor
contact = sip:acme.pstn.twilio.com

[acme-identify]
type = identify
endpoint = acme
match = 54.172.60.0/30
match = 54.244.51.0/30
"""
AUTH = """[acme-auth]
type = auth
username = u
password = p
"""


class FakeAri:
    """Sorcery objects in a dict, behind ARI's PUT/DELETE semantics and Basic auth; and, as
    res_pjsip keeps it, each endpoint's state (its Stasis snapshot): a DELETE queues the task
    that shuts it down, run one per look at `core show taskprocessors` (`tasks_cli`), and a PUT
    of an id whose task has not run yet takes the old state over and loses it with that task
    (asterisk/asterisk#2172: `pjsip show endpoint` then crashes Asterisk)."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, str]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.states: set[str] = set()  # endpoints that have their state
        self.tasks: list[str] = []  # queued on sorcery's endpoint serializer: the ids' shutdowns
        self.processed = 0
        self.taken_over: set[str] = set()  # new endpoints holding a state about to be shut down
        self.connections: set[int] = set()  # the clients' ports
        self.password = PASSWORD
        self.refuse: set[str] = set()  # keys answered 400, as ARI does for an invalid field
        self.journal: Path | None = None  # each request appended there too, when set
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Asterisk's server
            disable_nagle_algorithm = True  # headers and body are two writes

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.command == "GET" and self.path == "/taskprocessors":  # the CLI's
                    self._reply(200, fake.taskprocessors().encode())
                    return
                token = base64.b64encode(f"{USER}:{fake.password}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {token}":
                    self._reply(401)
                    return
                prefix = "/ari/asterisk/config/dynamic/res_pjsip/"
                assert self.path.startswith(prefix), self.path
                key = self.path.removeprefix(prefix)
                fake.requests.append((self.command, key))
                if fake.journal is not None:
                    with fake.journal.open("a") as journal:
                        journal.write(f"{self.command} {key.split('/')[0]}\n")
                fake.connections.add(self.client_address[1])
                if self.command == "PUT" and key in fake.refuse:
                    self._reply(400, b'{"message":"Fields are invalid"}')
                elif self.command == "DELETE":
                    existed = fake.objects.pop(key, None) is not None
                    if existed and key.startswith("endpoint/"):
                        fake.tasks.append(key.removeprefix("endpoint/"))
                    self._reply(204 if existed else 404)
                else:
                    created = key not in fake.objects
                    fake.objects[key] = json.loads(body)["fields"]
                    endpoint = key.removeprefix("endpoint/")
                    if created and key.startswith("endpoint/"):
                        if endpoint in fake.tasks:
                            fake.taken_over.add(endpoint)
                        else:
                            fake.states.add(endpoint)
                    self._reply(200, json.dumps(fake.objects[key]).encode())

            do_PUT = do_DELETE = do_GET = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/ari"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def taskprocessors(self) -> str:
        """`core show taskprocessors like sorcery/endpoint`, after the next task ran."""
        if self.tasks:
            endpoint = self.tasks.pop(0)
            self.states.discard(endpoint)  # a new endpoint that took the state over loses it
            self.taken_over.discard(endpoint)
            self.processed += 1
        return (
            "Processor  Processed   In Queue  Max Depth  Low water High water\n"
            f"sorcery/endpoint-00000004  {self.processed}  {len(self.tasks)}  3  450  500\n"
            "sorcery/endpointx  10  7  3  450  500\n"
            "1 taskprocessors\n"
        )

    def tasks_cli(self, tmp_path: Path) -> str:
        """A PATH whose `asterisk -rx` shows this Asterisk's sorcery tasks."""
        bin_dir = tmp_path / "tasks-bin"
        bin_dir.mkdir(exist_ok=True)
        fake = bin_dir / "asterisk"
        fake.write_text(
            f"#!{sys.executable}\n"
            "import urllib.request\n"
            f"print(urllib.request.urlopen('{self.url.removesuffix('/ari')}/taskprocessors')"
            ".read().decode(), end='')\n"
        )
        fake.chmod(0o755)
        return f"{bin_dir}:{os.environ['PATH']}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ari() -> Iterator[FakeAri]:
    if shutil.which("perl") is None:
        pytest.fail("perl is missing: run `make deps` (make test does)")
    fake = FakeAri()
    yield fake
    fake.close()


class Pod:
    """A pod's state directory, and the operator's strategy for it: each `push` runs the
    delivery script's `check_record` and `ari_push` (scripts/lib.sh) with the steps the
    strategy computed, and again from the pod's record when the strategy's copy was not it."""

    def __init__(self, tmp_path: Path, ari: FakeAri) -> None:
        self.state_dir = tmp_path / "state"
        self.state = self.state_dir / "pushed.state"
        self.pushed_file = self.state_dir / "pushed" / PJSIP_DIR / POD_FILE
        self.pushed_file.parent.mkdir(parents=True)
        self.ari = ari
        self.delivery: Delivery = AriDelivery(AriAccess(ari.url, USER, PASSWORD))
        self.runs = 0

    def push(
        self, text: str | None, boot: int = 1000, password: str = PASSWORD, path: str | None = None
    ) -> list[str]:
        """What the executor printed; `path`: its PATH (where it finds `asterisk`)."""
        self.ari.requests.clear()
        self.ari.connections.clear()
        if isinstance(self.delivery, AriDelivery):
            self.delivery = AriDelivery(
                AriAccess(self.ari.url, USER, password), self.delivery.record
            )
        files = {} if text is None else {f"{PJSIP_DIR}/{POD_FILE}": text}
        for _ in range(2):
            run = self.delivery.push(files, True)
            parts, code = self._run(run, boot, path)
            self.delivery = self.delivery.after(run, parts)
            if code != RECORD_DIFFERS:
                break
        assert code == 0, parts
        self.pushed_file.write_text(text or "")  # as the delivery script's swap_in
        return parts["ari"].splitlines()

    def _run(self, run: Round, boot: int, path: str | None) -> tuple[dict[str, str], int]:
        self.runs += 1
        params = {
            "STATE_DIR": str(self.state_dir),
            "PUSHED_DIR": str(self.state_dir / "pushed"),
            "PJSIP_DIR": PJSIP_DIR,
            "EXTENSIONS_DIR": "extensions.d",
            "POD_FILE": POD_FILE,
            "MARK": MARK,
            **run.params,
        }
        code = (
            shell.assignments(params) + shell.library() + f"boot={boot}\ncheck_record\nari_push\n"
        )
        proc = subprocess.run(
            ["sh", "-c", code],
            input=run.stdin,
            capture_output=True,
            timeout=30,
            check=False,
            env={**os.environ, "PATH": path} if path else None,
        )
        assert proc.returncode in (0, RECORD_DIFFERS), proc.stderr
        return sections(proc.stdout.decode()), proc.returncode


@pytest.fixture
def pod(tmp_path: Path, ari: FakeAri) -> Pod:
    return Pod(tmp_path, ari)


def test_a_first_push_creates_every_object_referenced_before_referring(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    out = pod.push(TRUNK + "\n" + AUTH)
    assert len(ari.connections) == 1  # a few objects: one keep-alive connection
    assert ari.requests == [
        ("PUT", "auth/acme-auth"),
        ("PUT", "aor/acme-aor"),
        ("PUT", "endpoint/acme"),
        ("PUT", "identify/acme-identify"),
    ]
    assert out == ["ari: created 4 replaced 0 deleted 0 failed 0"]
    assert ari.objects["identify/acme-identify"] == [
        {"attribute": "endpoint", "value": "acme"},
        {"attribute": "match", "value": "54.172.60.0/30"},
        {"attribute": "match", "value": "54.244.51.0/30"},
    ]
    # Unescaped from the file's `\;`; quotes survive the JSON.
    assert {"attribute": "set_var", "value": 'NOTE=a;b "quoted"'} in ari.objects["endpoint/acme"]


def test_only_what_changed_is_sent_and_a_change_replaces_the_object(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    pod.push(TRUNK + "\n" + AUTH)
    assert pod.push(TRUNK + "\n" + AUTH)[-1].startswith("ari: created 0 replaced 0")
    assert ari.requests == []
    out = pod.push(TRUNK.replace("ulaw,alaw", "alaw") + "\n" + AUTH)
    # DELETE then PUT: a PUT onto an existing object would merge into it.
    assert ari.requests == [("DELETE", "endpoint/acme"), ("PUT", "endpoint/acme")]
    assert {"attribute": "allow", "value": "alaw"} in ari.objects["endpoint/acme"]
    assert out == ["ari: created 0 replaced 1 deleted 0 failed 0"]


def test_a_replaced_endpoint_is_put_again_once_its_old_state_is_shut_down(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    """res_pjsip shuts a deleted endpoint's state down in a task queued when the DELETE
    returned; a PUT of the id before that task ran takes the old state over and loses it, and
    Asterisk 22 then crashes on the next `pjsip show endpoint(s)` or `pjsip list endpoints`
    (#2172). The PUT waits for the task."""
    path = ari.tasks_cli(tmp_path)
    pod.push(TRUNK + "\n" + AUTH, path=path)
    assert ari.states == {"acme"}
    ari.tasks = ["other"] * 2  # tasks queued before this push's: they run first
    ari.processed = 40
    out = pod.push(TRUNK.replace("ulaw,alaw", "alaw") + "\n" + AUTH, path=path)
    assert ari.requests == [("DELETE", "endpoint/acme"), ("PUT", "endpoint/acme")]
    assert ari.processed == 43 and ari.tasks == []
    assert ari.states == {"acme"} and not ari.taken_over  # the new endpoint has its own
    assert out[0] == "ari: created 0 replaced 1 deleted 0 failed 0"
    assert out[1].startswith("ari: waited ")
    assert out[1].endswith(" s for Asterisk's endpoint observers")


def test_deleted_endpoints_state_is_shut_down_before_the_push_ends(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    """So that the next push may bring the id back; an object already gone (404) queues no
    task to wait for."""
    path = ari.tasks_cli(tmp_path)
    pod.push(TRUNK + "\n" + AUTH, path=path)
    del ari.objects["endpoint/acme"]  # gone already, without its task
    ari.states.discard("acme")
    pod.push(AUTH, path=path)
    assert ari.processed == 0
    pod.push(TRUNK + "\n" + AUTH, path=path)
    assert pod.push(AUTH, path=path)[0].endswith("deleted 3 failed 0")
    assert ari.processed == 1 and ari.tasks == [] and ari.states == set()


def test_objects_no_longer_wanted_are_deleted_referring_ones_first(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    pod.push(TRUNK + "\n" + AUTH)
    out = pod.push(None)
    assert ari.requests == [
        ("DELETE", "identify/acme-identify"),
        ("DELETE", "endpoint/acme"),
        ("DELETE", "aor/acme-aor"),
        ("DELETE", "auth/acme-auth"),
    ]
    assert ari.objects == {}
    assert out == ["ari: created 0 replaced 0 deleted 4 failed 0"]


def test_a_restarted_asterisk_gets_everything_again(tmp_path: Path, ari: FakeAri, pod: Pod) -> None:
    pod.push(TRUNK + "\n" + AUTH, boot=1000)
    ari.objects.clear()  # memory objects die with the process
    assert pod.push(TRUNK + "\n" + AUTH, boot=1002) == [
        "ari: created 0 replaced 0 deleted 0 failed 0"
    ]  # within the clock's jitter: the same start
    out = pod.push(TRUNK + "\n" + AUTH, boot=1100)
    assert [method for method, _ in ari.requests] == ["PUT"] * 4
    assert len(ari.objects) == 4
    assert out == ["ari: created 4 replaced 0 deleted 0 failed 0"]


def test_refused_credentials_stop_at_once_and_leave_the_objects_to_the_next_run(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    pod.push(TRUNK + "\n" + AUTH)
    ari.password = "rotated"
    out = pod.push(TRUNK.replace("ulaw,alaw", "alaw") + "\n" + AUTH)
    assert out == [
        "ari-unavailable: DELETE endpoint/acme: 401 Unauthorized",
        "ari: created 0 replaced 0 deleted 0 failed 1",
    ]
    assert PASSWORD not in "\n".join(out)
    ari.password = PASSWORD
    # The endpoint's version in Asterisk is unknown now: replaced, not merged into.
    pod.push(TRUNK.replace("ulaw,alaw", "alaw") + "\n" + AUTH)
    assert ari.requests == [("DELETE", "endpoint/acme"), ("PUT", "endpoint/acme")]


def test_an_unreachable_ari_is_reported_once(tmp_path: Path, ari: FakeAri, pod: Pod) -> None:
    ari.close()
    out = pod.push(TRUNK + "\n" + AUTH)
    assert len(out) == 2 and out[0].startswith("ari-unavailable: PUT auth/acme-auth: ")
    assert out[1] == "ari: created 0 replaced 0 deleted 0 failed 1"


def test_an_object_asterisk_refuses_is_reported_and_the_others_still_go_in(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    ari.refuse = {"aor/acme-aor"}
    out = pod.push(TRUNK + "\n" + AUTH)
    assert out == [
        'ari-failed: PUT aor/acme-aor: 400 Bad Request {"message":"Fields are invalid"}',
        "ari: created 3 replaced 0 deleted 0 failed 1",
    ]
    assert set(ari.objects) == {"auth/acme-auth", "endpoint/acme", "identify/acme-identify"}
    ari.refuse = set()
    pod.push(TRUNK + "\n" + AUTH)  # retried, as an object of unknown state
    assert ari.requests == [("DELETE", "aor/acme-aor"), ("PUT", "aor/acme-aor")]


def test_a_large_set_goes_in_over_parallel_connections_one_type_after_the_other(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    many = "\n".join(
        TRUNK.replace("acme", f"t{i:03d}") + "\n" + AUTH.replace("acme", f"t{i:03d}")
        for i in range(70)
    )  # 70 objects of each type: over the parallel threshold
    out = pod.push(many)
    assert out == ["ari: created 280 replaced 0 deleted 0 failed 0"]
    assert len(ari.connections) == 16  # four workers per type
    kinds = [key.split("/")[0] for _, key in ari.requests]
    # Every auth before any AOR, every AOR before any endpoint, and so on.
    assert kinds == sorted(kinds, key=["auth", "aor", "endpoint", "identify"].index)
    assert len(ari.objects) == 280
    assert pod.push(many) == ["ari: created 0 replaced 0 deleted 0 failed 0"]
    assert ari.requests == []


def test_the_record_is_appended_to_read_last_line_first_and_kept_small(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    """A change appends its objects' lines (a whole write of 10,000 trunks' record costs
    ~70 ms, twice per run); the record is written whole again once a quarter of it is such
    lines."""
    state = pod.state
    pod.push(TRUNK + "\n" + AUTH)
    first = state.read_text().splitlines()
    assert first[0] == "boot 1000"
    assert {line.split("\t")[1]: line.split("\t")[2] for line in first[1:]}.keys() == {
        "acme",
        "acme-aor",
        "acme-auth",
        "acme-identify",
    }
    assert all(line.split("\t")[2] != "-" for line in first[-4:])  # each one's last line
    for i in range(40):
        pod.push(TRUNK.replace("ulaw,alaw", f"ulaw{i}") + "\n" + AUTH)
        assert ari.requests == [("DELETE", "endpoint/acme"), ("PUT", "endpoint/acme")]
        lines = state.read_text().splitlines()
        assert lines[0] == "boot 1000" and len(lines) <= 1 + 1.25 * 4 + 64 + 2
    assert len(lines) < 1 + 4 + 40 * 2  # written whole again at least once
    # A deleted object's last line says so: wanted again, it is created, not replaced.
    assert pod.push(AUTH) == ["ari: created 0 replaced 0 deleted 3 failed 0"]
    last = {line.split("\t")[1]: line.split("\t")[2] for line in state.read_text().splitlines()[1:]}
    assert {last.get(id_, "gone") for id_ in ("acme", "acme-aor", "acme-identify")} == {"gone"}
    assert pod.push(TRUNK + "\n" + AUTH) == ["ari: created 3 replaced 0 deleted 0 failed 0"]
    # What the delivery script reads of it: the endpoints this Asterisk was given.
    assert pushed_endpoints(state, boot=1000) == ["acme"]
    assert pushed_endpoints(state, boot=2000) == []  # a restarted Asterisk was given none
    pod.push(AUTH)
    assert pushed_endpoints(state, boot=1000) == []


def pushed_endpoints(state: Path, boot: int) -> list[str]:
    """scripts/lib.sh's reader of the record, as the delivery script runs it."""
    state_dir = state.parent / "state-dir"
    state_dir.mkdir(exist_ok=True)
    (state_dir / "pushed.state").write_bytes(state.read_bytes())
    code = shell.assignments({"STATE_DIR": str(state_dir)}) + shell.library()
    listed = subprocess.run(
        ["sh", "-c", f"{code}\nboot={boot}; pushed_endpoints"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_the_endpoints_wait_for_asterisks_tasks_of_the_new_aors(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    """Asterisk takes each new AOR in a task queued after the PUT returned, costing the square
    of the endpoints there: the endpoints go in once `sorcery/aor` has nothing queued."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.write_text("")
    # A stand-in for `asterisk -rx`: 2 AOR tasks queued, one fewer at each look.
    fake = bin_dir / "asterisk"
    fake.write_text(
        "#!/bin/sh\n"
        f"n=$(grep -c rx {calls}); left=$((2 - n)); [ $left -lt 0 ] && left=0\n"
        f'echo "rx $2 $left" >> {calls}\n'
        'echo "Processor  Processed   In Queue  Max Depth  Low water High water"\n'
        'echo "sorcery/aor-0000000e  10  $left  3  450  500  0  0"\n'
        'echo "sorcery/aorx  10  7  3  450  500  0  0"\n'
    )
    fake.chmod(0o755)
    ari.journal = calls
    out = pod.push(TRUNK + AUTH, path=f"{bin_dir}:{os.environ['PATH']}")
    look = "rx core show taskprocessors like sorcery/aor"
    assert calls.read_text().splitlines() == [
        "PUT auth",
        "PUT aor",
        f"{look} 2",
        f"{look} 1",
        f"{look} 0",
        "PUT endpoint",
        "PUT identify",
    ]
    assert out[0] == "ari: created 4 replaced 0 deleted 0 failed 0"
    assert out[1].startswith("ari: waited ")
    # A push that creates no AOR does not look.
    calls.write_text("")
    ari.journal = None
    out = pod.push(
        TRUNK.replace("ulaw,alaw", "ulaw") + AUTH,
        path=f"{bin_dir}:{os.environ['PATH']}",
    )
    assert "sorcery/aor" not in calls.read_text()  # (its endpoint's DELETE: sorcery/endpoint)
    assert out == ["ari: created 0 replaced 1 deleted 0 failed 0"]


def test_a_restarted_operator_reads_the_pods_record_once_and_sends_only_what_changed(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    pod.push(TRUNK + "\n" + AUTH)
    assert pod.runs == 2  # the first: the operator had no copy of the record
    restarted = Pod(tmp_path / "again", ari)
    restarted.state_dir, restarted.state, restarted.pushed_file = (
        pod.state_dir,
        pod.state,
        pod.pushed_file,
    )
    out = restarted.push(TRUNK.replace("ulaw,alaw", "alaw") + "\n" + AUTH)
    assert restarted.runs == 2 and out == ["ari: created 0 replaced 1 deleted 0 failed 0"]
    assert ari.requests == [("DELETE", "endpoint/acme"), ("PUT", "endpoint/acme")]
    restarted.push(TRUNK + "\n" + AUTH)
    assert restarted.runs == 3  # its copy is the record now


def test_a_record_changed_behind_the_operators_copy_is_read_again(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    """A run cut off (an exec that timed out) left its marks: the object it was replacing
    may be in Asterisk in any version, and is replaced whatever it is."""
    pod.push(TRUNK + "\n" + AUTH)
    with pod.state.open("a") as record:
        record.write("aor\tacme-aor\t-\n")
    runs = pod.runs
    out = pod.push(TRUNK + "\n" + AUTH)
    assert pod.runs == runs + 2
    assert ari.requests == [("DELETE", "aor/acme-aor"), ("PUT", "aor/acme-aor")]
    assert out == ["ari: created 0 replaced 1 deleted 0 failed 0"]


def test_a_rollback_pushes_back_the_set_before_the_last_delivery(
    tmp_path: Path, ari: FakeAri, pod: Pod
) -> None:
    pod.push(TRUNK + "\n" + AUTH)
    before = dict(ari.objects)
    pod.push(TRUNK.replace("ulaw,alaw", "alaw") + AUTH.replace("= p", "= q"))
    assert ari.objects != before
    run = pod.delivery.push_back()
    parts, code = pod._run(run, 1000, None)
    assert code == 0 and parts["ari"] == "ari: created 0 replaced 2 deleted 0 failed 0\n"
    assert ari.objects == before
