import base64
import gzip
import json

from tests.cases import large_case
from trunk_operator.kube.api import (
    PART_LIMIT,
    Kube,
    Owner,
    config_map_payloads,
    file_key,
    key_path,
    secret_files_hash,
)
from trunk_operator.kube.client import KubeError
from trunk_operator.pod.channel import pack


def test_small_files_stay_readable_text() -> None:
    [(data, binary)] = config_map_payloads({"pjsip.d/twiliotrunk-a.conf": "[A]\n"})
    assert data == {"pjsip.d_twiliotrunk-a.conf": "[A]\n"} and binary == {}
    assert key_path(file_key("extensions.d/didsegment-x.conf")) == "extensions.d/didsegment-x.conf"


def test_a_100k_did_segment_fits_configmaps_under_the_1mib_limit() -> None:
    files = large_case(100_000).files()
    payloads = config_map_payloads(files)
    for data, binary in payloads:
        size = len(json.dumps({"data": data, "binaryData": binary}))
        assert size < 1024 * 1024 - 64 * 1024  # room for metadata
    chunks = sorted((k, v) for _, binary in payloads for k, v in binary.items())
    assert all(len(base64.b64decode(v)) <= PART_LIMIT for _, v in chunks)
    restored = gzip.decompress(b"".join(base64.b64decode(v) for _, v in chunks)).decode()
    assert restored == files["extensions.d/didsegment-bulk-all.conf"]


def test_delivery_archive_is_deterministic(monkeypatch) -> None:
    files = {"pjsip.d/twiliotrunk-a.conf": "[A]\n", "extensions.d/twiliotrunk-a.conf": "[c]\n"}
    first = pack(files)
    monkeypatch.setattr("time.time", lambda: 2_000_000_000.0)  # a later clock changes nothing
    assert first == pack(dict(reversed(list(files.items()))))


class RecordingApi:
    """The API as far as write_rendered uses it: requests recorded, 404 for what is absent."""

    def __init__(self, absent: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[tuple[str, str]] = []
        self.absent = set(absent)

    def request(self, method: str, path: str, body: object = None, **_: object) -> dict:
        self.calls.append((method, path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1]))
        if method == "GET" and any(path.endswith(a) for a in self.absent):
            raise KubeError(f"GET {path}: API error 404", 404)
        return {"metadata": {"resourceVersion": "1", "annotations": {}}}


def _kube(api: RecordingApi) -> Kube:
    kube = Kube.__new__(Kube)
    kube.api = api  # type: ignore[assignment]
    return kube


OWNER = Owner("TwilioTrunk", "acme", "ns", "uid-1", "acme")
PUBLIC = {"pjsip.d/twiliotrunk-acme.conf": "[ACME]\n"}
SECRET = {"pjsip.d/twiliotrunk-acme-auth.conf": "[ACME-auth]\npassword = x\n"}


def test_a_known_cr_change_replaces_only_the_part_that_changed() -> None:
    api = RecordingApi()
    written = ("old-public-hash", secret_files_hash(SECRET))
    _kube(api).write_rendered(OWNER, PUBLIC, SECRET, written)
    assert api.calls == [
        ("GET", "configmaps/twiliotrunk-acme"),
        ("PUT", "configmaps/twiliotrunk-acme"),
    ]
    api.calls.clear()
    _kube(api).write_rendered(OWNER, PUBLIC, SECRET, None)  # not known: create first
    assert [m for m, _ in api.calls] == ["POST", "POST"]


def test_a_rendered_object_deleted_by_someone_is_created_again() -> None:
    api = RecordingApi(absent={"twiliotrunk-acme"})
    _kube(api).write_rendered(OWNER, PUBLIC, SECRET, ("old", secret_files_hash(SECRET)))
    assert api.calls == [("GET", "configmaps/twiliotrunk-acme"), ("POST", "ns/configmaps")]
