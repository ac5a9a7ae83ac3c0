"""The pure core stays pure at run time: `trunk-operator render` needs no cluster library.

The static layers (which package may import which) are `.importlinter`'s contracts, checked
by `lint-imports` in `make lint`; this test checks what importing them loads, transitively.
"""

import subprocess
import sys

PURE = [
    "trunk_operator.core.models",
    "trunk_operator.core.render",
    "trunk_operator.core.plan",
    "trunk_operator.core.status",
    "trunk_operator.core.desired",
    "trunk_operator.core.asterisk_output",
    "trunk_operator.core.verify",
    "trunk_operator.pod.ari",
    "trunk_operator.pod.channel",
    "trunk_operator.cli",
]


def test_pure_modules_import_no_cluster_client() -> None:
    code = (
        f"import sys; import {', '.join(PURE)}; "
        "print(sorted(m for m in ('kubernetes', 'kopf', 'aiohttp', 'urllib3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
