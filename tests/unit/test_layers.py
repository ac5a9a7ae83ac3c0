"""The pure core stays pure: no cluster client behind models, render, plan and status."""

import subprocess
import sys

PURE = [
    "trunk_operator.models",
    "trunk_operator.render",
    "trunk_operator.plan",
    "trunk_operator.status",
    "trunk_operator.asterisk",
    "trunk_operator.cli",
]


def test_pure_modules_import_no_cluster_client() -> None:
    code = (
        f"import sys; import {', '.join(PURE)}; "
        "print(sorted(m for m in ('kubernetes', 'kopf', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
