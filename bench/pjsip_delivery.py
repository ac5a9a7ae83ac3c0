"""What one trunk change costs inside Asterisk with many trunks loaded, by delivery layout.

    .venv/bin/python bench/pjsip_delivery.py --trunks 10000 --repeat 4

Why one change at 10,000 trunks is not Ready in 3 s with configuration files, and what ARI
push would change (issue 11). In fresh Asterisk containers (testbed/asterisk), with the
operator's own rendering of N trunks (bench/rig.py's trunk_spec), timed inside Asterisk, no
operator and no API server:
- `pod file`: what the operator delivers (one pjsip.d file): `module reload res_pjsip.so`
  after the file is rewritten with one trunk's codecs changed, and with nothing changed;
- `per type`: each trunk object type in a file of its own, mapped in sorcery.conf
  (`endpoint=config,pjsip_endpoint.conf,criteria=type=endpoint`, that file including
  pjsip.conf and the trunks' endpoints), so a change rebuilds one type only;
- `ARI push`: the same objects sent one by one to `PUT /ari/asterisk/config/dynamic/res_pjsip/
  <type>/<id>` into sorcery `memory` wizards (HTTP/1.1 keep-alive, `--connections` at once);
  a change replaces one endpoint (DELETE, then PUT: a PUT on an existing object merges); a
  start is Asterisk's start plus the push of every object (they live in memory only);
- `none`: Asterisk without trunks: the floor of a reload;
- the operator's delivery of one codec change into a pod with the N trunks, with the file and
  over ARI (`channel.deliver` as a pod worker calls it, over `podman exec`);
- the operator's observation of a pod with the N trunks (`channel.observe` over `podman exec`:
  the listings, the delivered hash, the files' digests, 10 endpoints in depth), which the
  observer repeats per pod (at most a tenth of the time: `observer.OBSERVE_SHARE`).
Medians of `--repeat` (the first reload after a start is left out), one second apart.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig import trunk_spec

from testbed import asterisk as testbed_asterisk
from testbed.asterisk import ARI_PORT, AsteriskContainer, ensure_image
from tests.cases import Case
from tests.e2e.conftest import podman_exec
from trunk_operator.core.models import TwilioTrunkSpec
from trunk_operator.core.render import PJSIP_DIR, POD_FILE, Files
from trunk_operator.core.verify import Expected, Probe
from trunk_operator.pod import channel
from trunk_operator.pod.ari import AriAccess
from trunk_operator.pod.delivery import delivery_for

TYPES = ("auth", "aor", "endpoint", "identify")  # creation order: references resolve
ARI_USER, ARI_PASSWORD = "bench", "bench-only-password"
PjsipObject = tuple[str, str, list[tuple[str, str]]]  # type, id, fields


def bench_case(count: int) -> Case:
    trunks = {
        f"t{i:05d}": TwilioTrunkSpec.model_validate(trunk_spec(i, f"t{i:05d}", "s"))
        for i in range(count)
    }
    return Case(trunks)


def measure_observation(case: Case, files: Files, repeat: int, bind_ip: str) -> float:
    """Median seconds of the operator's observation of a pod serving the case's `files`."""
    expected = case.expected(files, "secret")
    with AsteriskContainer("delivery-observe", bind_ip=bind_ip, tls=False) as ast:
        pod_exec = podman_exec(ast.name)
        if not channel.deliver(pod_exec, files, expected, timeout=900).ok:
            raise RuntimeError("the case was not delivered")
        probe = Probe(frozenset(sorted(e.name for e in expected.endpoints)[:10]))
        times = []
        for _ in range(repeat + 1):
            began = time.monotonic()
            channel.observe(pod_exec, expected, 300, probe)
            times.append(time.monotonic() - began)
        return statistics.median(times[1:])


def measure_operator_change(
    case: Case, files: Files, repeat: int, bind_ip: str, over_ari: bool
) -> float:
    """Median seconds of the operator's delivery of one trunk's codec change into a pod with
    the case's `files` (`channel.deliver` as a pod worker calls it: the PJSIP file changed,
    that endpoint read in depth): the exec, the reload or the push, the reads, verification."""
    expected = case.expected(files, "secret")
    first = min(e.name for e in expected.endpoints)
    ari_user = (ARI_USER, ARI_PASSWORD) if over_ari else None
    with AsteriskContainer("delivery-op", bind_ip=bind_ip, tls=False, ari=ari_user) as ast:
        pod_exec = podman_exec(ast.name)
        ari = delivery_for(AriAccess(ast.ari_url, ARI_USER, ARI_PASSWORD) if over_ari else None)
        result = channel.deliver(pod_exec, files, expected, timeout=900, delivery=ari)
        if not result.ok:
            raise RuntimeError("the case was not delivered")
        ari = result.delivery  # with its copy of the pod's record
        times = []
        for k in range(repeat * 2):  # ends on an odd k: the rendered order
            text = changed(files[f"{PJSIP_DIR}/{POD_FILE}"], k)
            codecs = ("alaw", "ulaw") if k % 2 == 0 else ("ulaw", "alaw")
            want = Expected(
                tuple(replace(e, codecs=codecs) if e.name == first else e
                      for e in expected.endpoints),
                expected.contexts,
                expected.transports,
            )  # fmt: skip
            began = time.monotonic()
            result = channel.deliver(
                pod_exec,
                {**files, f"{PJSIP_DIR}/{POD_FILE}": text},
                want,
                timeout=900,
                probe=Probe(frozenset({first})),
                reload={PJSIP_DIR},
                delivery=ari,
            )
            times.append(time.monotonic() - began)
            ari = result.delivery
            if not result.ok:
                raise RuntimeError(f"change {k} refused: {result.problems[:3]}")
        return statistics.median(times[1:])


def sections_of(text: str) -> list[PjsipObject]:
    objects = []
    for section in re.split(r"(?m)^(?=\[)", text):
        if not (m := re.match(r"\[([^\]]+)\]\n", section)):
            continue
        lines = (line for line in section.splitlines()[1:] if line and not line.startswith(";"))
        fields = [(k.strip(), v.strip()) for k, _, v in (line.partition(" = ") for line in lines)]
        kind = dict(fields)["type"]
        objects.append((kind, m[1], [(k, v) for k, v in fields if k != "type"]))
    return sorted(objects, key=lambda o: TYPES.index(o[0]))


def changed(text: str, k: int) -> str:
    """The first trunk's codecs swapped (k even) or as rendered (k odd)."""
    return text.replace("allow = ulaw,alaw", "allow = alaw,ulaw", 1) if k % 2 == 0 else text


def reload_seconds(ast: AsteriskContainer) -> float:
    out = ast.exec(
        "sh",
        "-c",
        "s=$(date +%s%N); asterisk -rx 'module reload res_pjsip.so' >/dev/null;"
        " e=$(date +%s%N); echo $(( (e - s) / 1000000 ))",
        timeout=600,
    )
    return int(out.stdout.strip()) / 1000


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)  # whole files only, as the operator swaps them


def restart(ast: AsteriskContainer) -> float:
    started = time.monotonic()
    ast.restart_in_place(timeout=600)
    return time.monotonic() - started


def endpoints_loaded(ast: AsteriskContainer) -> int:
    return ast.rx("pjsip list endpoints").count("Endpoint:")


def measure_files(layout: str, text: str, repeat: int, bind_ip: str) -> dict[str, float]:
    with AsteriskContainer(
        f"delivery-{layout.replace(' ', '')}", bind_ip=bind_ip, tls=False
    ) as ast:
        cfg = ast.config_dir
        target, body = cfg / PJSIP_DIR / POD_FILE, text
        if layout == "per type":
            pjsip = cfg / "pjsip.conf"
            pjsip.write_text(pjsip.read_text().replace("#tryinclude pjsip.d/*.conf", ""))
            testbed_asterisk.map_types(
                cfg, {kind: [f"config,pjsip_{kind}.conf,criteria=type={kind}"] for kind in TYPES}
            )
            parts: dict[str, list[str]] = defaultdict(list)
            for section in re.split(r"(?m)^(?=\[)", text):
                if m := re.search(r"(?m)^type = (\S+)$", section):
                    parts[m[1]].append(section)
            for kind in TYPES:
                (cfg / f"pjsip_{kind}.conf").write_text(
                    f"#include pjsip.conf\n#include {PJSIP_DIR}/trunks-{kind}.conf\n"
                )
                write(cfg / PJSIP_DIR / f"trunks-{kind}.conf", "".join(parts[kind]))
            target, body = cfg / PJSIP_DIR / "trunks-endpoint.conf", "".join(parts["endpoint"])
        elif text:
            write(target, body)
        start = restart(ast)
        if text and endpoints_loaded(ast) < text.count("type = endpoint"):
            raise RuntimeError(f"{layout}: Asterisk loaded {endpoints_loaded(ast)} endpoints")
        reload_seconds(ast)  # the first reload after a start is slower: not counted
        unchanged, after_change = [], []
        for k in range(repeat):
            time.sleep(1)
            unchanged.append(reload_seconds(ast))
            if text:
                write(target, changed(body, k))
                time.sleep(1)
                after_change.append(reload_seconds(ast))
        return {
            "change": statistics.median(after_change) if after_change else float("nan"),
            "unchanged": statistics.median(unchanged),
            "start": start,
        }


class Ari:
    """Keep-alive connections to Asterisk's ARI, PUT/DELETE of sorcery objects."""

    def __init__(self, host: str) -> None:
        self.host = host
        token = base64.b64encode(f"{ARI_USER}:{ARI_PASSWORD}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, ARI_PORT, timeout=60)

    def put(self, conn: http.client.HTTPConnection, obj: PjsipObject) -> None:
        kind, name, fields = obj
        body = json.dumps({"fields": [{"attribute": k, "value": v} for k, v in fields]})
        path = f"/ari/asterisk/config/dynamic/res_pjsip/{kind}/{name}"
        conn.request("PUT", path, body, self.headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"PUT {kind}/{name}: {response.status} {data[:200]!r}")

    def delete(self, conn: http.client.HTTPConnection, kind: str, name: str) -> None:
        path = f"/ari/asterisk/config/dynamic/res_pjsip/{kind}/{name}"
        conn.request("DELETE", path, headers=self.headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 204:
            raise RuntimeError(f"DELETE {kind}/{name}: {response.status} {data[:200]!r}")

    def push(self, objects: list[PjsipObject], connections: int) -> None:
        """Every object, type by type (auths and AORs exist before the endpoints)."""

        def send(chunk: list[PjsipObject]) -> None:
            conn = self.connect()
            for obj in chunk:
                self.put(conn, obj)
            conn.close()

        for kind in TYPES:
            batch = [o for o in objects if o[0] == kind]
            with ThreadPoolExecutor(connections) as pool:
                list(pool.map(send, [batch[i::connections] for i in range(connections)]))


def measure_ari(text: str, repeat: int, bind_ip: str, connections: int) -> dict[str, float]:
    objects = sections_of(text)
    ari_user = (ARI_USER, ARI_PASSWORD)
    with AsteriskContainer("delivery-ari", bind_ip=bind_ip, tls=False, ari=ari_user) as ast:
        booted = restart(ast)
        ari = Ari(bind_ip)
        started = time.monotonic()
        ari.push(objects, connections)
        pushed = time.monotonic() - started
        if endpoints_loaded(ast) < text.count("type = endpoint"):
            raise RuntimeError(f"ARI push: Asterisk has {endpoints_loaded(ast)} endpoints")
        endpoint = next(o for o in objects if o[0] == "endpoint")
        conn, puts = ari.connect(), []
        for k in range(repeat * 2):  # ends on an odd k: the rendered order
            swapped = [(a, changed(f"{a} = {v}", k).partition(" = ")[2]) for a, v in endpoint[2]]
            # Replaced, not updated: a PUT on an existing object merges into it (contacts and
            # ACL entries accumulate, callerid turns "unknown"; bench/README.md).
            began = time.monotonic()
            ari.delete(conn, endpoint[0], endpoint[1])
            ari.put(conn, (endpoint[0], endpoint[1], swapped))
            puts.append(time.monotonic() - began)
        shown = ast.rx(f"pjsip show endpoint {endpoint[1]}")
        allow = re.search(r"(?m)^\s*allow\s+:\s*(\S+)", shown)
        if not allow or allow[1] != "(ulaw|alaw)":  # the last PUT (k odd) has the rendered order
            raise RuntimeError(f"ARI PUT not served: allow {allow and allow[1]}")
        reload_seconds(ast)
        with_pushed = [reload_seconds(ast) for _ in range(repeat)]
        if endpoints_loaded(ast) < text.count("type = endpoint"):
            raise RuntimeError("pushed objects lost on reload")
        return {
            "change": statistics.median(puts),
            "unchanged": statistics.median(with_pushed),
            "start": booted + pushed,
            "push": pushed,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunks", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--connections", type=int, default=4, help="ARI connections at once")
    args = parser.parse_args()
    ensure_image()
    case = bench_case(args.trunks)
    files = case.pod_files("secret")  # rendered once: 10,000 trunks take seconds
    text = files[f"{PJSIP_DIR}/{POD_FILE}"]
    count = len(sections_of(text))
    print(f"{args.trunks} trunks: {count} PJSIP objects, {len(text) / 1e6:.1f} MB", flush=True)
    results = {}
    for i, layout in enumerate(("none", "pod file", "per type", "ARI push")):
        ip = f"127.0.10.{90 + i}"
        if layout == "ARI push":
            results[layout] = measure_ari(text, args.repeat, ip, args.connections)
        else:
            results[layout] = measure_files(
                layout, "" if layout == "none" else text, args.repeat, ip
            )
        print(layout, {k: round(v, 3) for k, v in results[layout].items()}, flush=True)
    floor = results["none"]["unchanged"]
    base = results["pod file"]
    print(
        f"\n{args.trunks} trunks, medians of {args.repeat}; a reload with no trunks: {floor:.2f} s"
    )
    print(
        "| layout | one change applied | pod file / this | reload, none changed | start, full set |"
    )
    print("|---|---|---|---|---|")
    for layout in ("pod file", "per type", "ARI push"):
        r = results[layout]
        print(
            f"| {layout} | {r['change']:.3f} s | {base['change'] / r['change']:.1f}x"
            f" | {r['unchanged']:.2f} s | {r['start']:.1f} s |"
        )
    observed = measure_observation(case, files, args.repeat, "127.0.10.94")
    print(f"the operator's observation of a pod with {args.trunks} trunks: {observed:.2f} s")
    by_file = measure_operator_change(case, files, args.repeat, "127.0.10.95", False)
    by_ari = measure_operator_change(case, files, args.repeat, "127.0.10.96", True)
    print(
        f"the operator's delivery of one codec change with {args.trunks} trunks (exec, reload"
        f" or push, reads, verification): pod file {by_file:.2f} s, over ARI {by_ari:.2f} s"
        f" ({by_file / by_ari:.1f}x)"
    )
    ari = results["ARI push"]
    print(
        f"ARI push of all {count} objects over {args.connections} connections: {ari['push']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
