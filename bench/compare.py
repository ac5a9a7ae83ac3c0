"""Benchmarks of another commit and of this checkout, in one run, side by side.

    .venv/bin/python bench/compare.py --base HEAD~3 -- --only 1,2,8 --scale-sizes 1000

The base commit is checked out in a worktree under the cache (its own venv), and `bench/run.py`
of each tree runs one after the other on this machine, with the same arguments (those after
`--`). Each run's report is kept beside the comparison; the table gives each figure of both and
the ratio this/base (below 1: this checkout takes less).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("TRUNKOP_CACHE", Path.home() / ".cache/asterisk-trunk-operator"))
# A figure line of bench/run.py's report: "  <name padded to 58> <value:>9> <unit> [verdict]".
FIGURE = re.compile(
    r"^  (?P<name>\S.*?)\s+(?P<value>n/a|-?\d+(?:\.\d+)?)(?: (?P<unit>\S*))?"
    r"(?:\s+target <= \S+ \S*: (?:MET|NOT MET))?(?:\s+\(.*\))?\s*$"
)


def worktree(base: str) -> Path:
    """A worktree of `base` with its venv, made once per commit."""
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", base], capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = CACHE / "bench-base" / sha
    if not (tree / ".git").exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha], check=True
        )
    subprocess.run(["make", "-C", str(tree), "venv"], check=True)
    return tree


def run(tree: Path, args: list[str], report: Path) -> str:
    """bench/run.py of `tree`, with its venv; its report (stdout) kept in `report`."""
    python = tree / ".venv/bin/python"
    print(f"==> {tree}: bench/run.py {' '.join(args)}", file=sys.stderr, flush=True)
    out = subprocess.run(
        [str(python), str(tree / "bench/run.py"), *args],
        cwd=tree,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    ).stdout
    report.write_text(out)
    return out


def figures(report: str) -> dict[tuple[str, str], tuple[float | None, str]]:
    """(section, figure) -> (value, unit), from the part after "==== trunk operator bench"."""
    found: dict[tuple[str, str], tuple[float | None, str]] = {}
    section = ""
    body = report.split("==== trunk operator bench ====")[-1]
    for line in body.splitlines():
        if line and not line.startswith(" "):
            section = line.strip()
        elif (m := FIGURE.match(line)) and not line.startswith("  setup:"):
            value = None if m["value"] == "n/a" else float(m["value"])
            found[(section, m["name"].strip())] = (value, m["unit"] or "")
    return found


def table(base: str, this: str, base_name: str) -> str:
    old, new = figures(base), figures(this)
    lines = [f"{'figure':<80} {base_name[:10]:>10} {'this':>10}  this/base"]
    section = None
    for key in [*new, *(k for k in old if k not in new)]:
        if key[0] != section:
            section = key[0]
            lines.append(section)
        was, unit = old.get(key, (None, ""))
        now, unit = new.get(key, (None, unit))
        ratio = f"{now / was:.2f}" if was and now is not None else "-"
        shown = [f"{v:g}" if v is not None else "n/a" for v in (was, now)]
        lines.append(f"  {key[1][:76]:<78} {shown[0]:>10} {shown[1]:>10}  {ratio:>6} {unit}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare with, e.g. HEAD~3")
    p.add_argument("--out", default=str(CACHE / "bench-compare"), help="where reports are kept")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench/run.py's options")
    args = p.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = run(worktree(args.base), bench_args, out / "base.txt")
    this = run(ROOT, bench_args, out / "this.txt")
    print(f"base {args.base} ({out / 'base.txt'}) and this checkout ({out / 'this.txt'}):\n")
    print(table(base, this, args.base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
