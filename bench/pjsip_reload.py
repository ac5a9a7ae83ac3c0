"""What one `module reload res_pjsip.so` costs with many trunks, in two file layouts.

    .venv/bin/python bench/pjsip_reload.py --trunks 10000 --repeat 4

Why one change at 10,000 trunks cannot be Ready in 3 s with configuration files (issue 11).
In a fresh Asterisk container (testbed/asterisk), with the operator's own rendering of N
trunks (bench/rig.py's trunk_spec), it times the reload inside the container:
- `pod file`: the layout the operator delivers (one pjsip.d file): the file rewritten with
  one codec changed, and unchanged;
- `per type`: each trunk object type in a file of its own, mapped in sorcery.conf
  (`endpoint=config,pjsip_endpoint.conf,criteria=type=endpoint`, that file including
  pjsip.conf and the trunks' endpoints), so a change rebuilds one type only;
- `none`: the same Asterisk without trunks (the floor).
Medians of `--repeat` reloads (the first one after a start is left out), one second apart.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig import trunk_spec

from testbed.asterisk import AsteriskContainer, ensure_image
from tests.cases import Case
from trunk_operator.models import TwilioTrunkSpec
from trunk_operator.render import PJSIP_DIR, POD_FILE

TYPES = ("endpoint", "aor", "auth", "identify")
SORCERY_SECTION = {"identify": "res_pjsip_endpoint_identifier_ip"}  # others: res_pjsip


def pjsip_text(count: int) -> str:
    trunks = {
        f"t{i:05d}": TwilioTrunkSpec.model_validate(trunk_spec(i, f"t{i:05d}", "s"))
        for i in range(count)
    }
    return Case(trunks).pod_files("secret")[f"{PJSIP_DIR}/{POD_FILE}"]


def by_type(text: str) -> dict[str, str]:
    parts: dict[str, list[str]] = defaultdict(list)
    for section in re.split(r"(?m)^(?=\[)", text):
        if m := re.search(r"(?m)^type = (\S+)$", section):
            parts[m[1]].append(section)
    return {kind: "".join(sections) for kind, sections in parts.items()}


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


def measure(layout: str, text: str, repeat: int, bind_ip: str) -> dict[str, float]:
    with AsteriskContainer(f"reload-{layout.replace(' ', '')}", bind_ip=bind_ip, tls=False) as ast:
        cfg = ast.config_dir
        if layout == "per type":
            parts = by_type(text)
            pjsip = cfg / "pjsip.conf"
            pjsip.write_text(pjsip.read_text().replace("#tryinclude pjsip.d/*.conf", ""))
            sections: dict[str, list[str]] = defaultdict(list)
            for kind in TYPES:
                line = f"{kind}=config,pjsip_{kind}.conf,criteria=type={kind}"
                sections[SORCERY_SECTION.get(kind, "res_pjsip")].append(line)
                (cfg / f"pjsip_{kind}.conf").write_text(
                    f"#include pjsip.conf\n#include {PJSIP_DIR}/trunks-{kind}.conf\n"
                )
                write(cfg / PJSIP_DIR / f"trunks-{kind}.conf", parts[kind])
            sorcery = cfg / "sorcery.conf"
            extra = "".join(f"\n[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())
            sorcery.write_text(sorcery.read_text() + extra)
            target, body = cfg / PJSIP_DIR / "trunks-endpoint.conf", parts["endpoint"]
        else:
            target, body = cfg / PJSIP_DIR / POD_FILE, text
            if text:
                write(target, body)
        started = time.monotonic()
        subprocess.run(["podman", "restart", "-t", "2", ast.name], check=True, capture_output=True)
        ast.wait_ready(timeout=600)
        start = time.monotonic() - started
        loaded = ast.rx("pjsip list endpoints").count("Endpoint:")
        if text and loaded < text.count("type = endpoint"):
            raise RuntimeError(f"{layout}: Asterisk loaded {loaded} endpoints")
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
            "start": start,
            "unchanged": statistics.median(unchanged),
            "changed": statistics.median(after_change) if after_change else float("nan"),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunks", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    ensure_image()
    text = pjsip_text(args.trunks)
    print(f"{args.trunks} trunks: {len(text) / 1e6:.1f} MB of PJSIP configuration", flush=True)
    results = {}
    for i, layout in enumerate(("none", "pod file", "per type")):
        results[layout] = measure(
            layout, "" if layout == "none" else text, args.repeat, f"127.0.10.{90 + i}"
        )
        print(layout, {k: round(v, 2) for k, v in results[layout].items()}, flush=True)
    floor = results["none"]["unchanged"]
    print(f"\nmodule reload res_pjsip.so, medians of {args.repeat}; no trunks: {floor:.2f} s")
    print("| layout | unchanged | one codec changed | start |")
    print("|---|---|---|---|")
    for layout in ("pod file", "per type"):
        r = results[layout]
        print(f"| {layout} | {r['unchanged']:.2f} s | {r['changed']:.2f} s | {r['start']:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
