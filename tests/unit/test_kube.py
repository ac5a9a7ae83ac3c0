import base64
import gzip
import json

from tests.cases import large_case
from trunk_operator.asterisk import pack
from trunk_operator.kube import PART_LIMIT, config_map_payloads, file_key, key_path


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


def test_delivery_archive_is_deterministic(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    files = {"pjsip.d/twiliotrunk-a.conf": "[A]\n", "extensions.d/twiliotrunk-a.conf": "[c]\n"}
    first = pack(files)
    monkeypatch.setattr("time.time", lambda: 2_000_000_000.0)  # a later clock changes nothing
    assert first == pack(dict(reversed(list(files.items()))))
