"""The pure core stays pure: no cluster client behind models, render, plan and status."""

import ast
import subprocess
import sys
from pathlib import Path

PURE = [
    "trunk_operator.models",
    "trunk_operator.render",
    "trunk_operator.plan",
    "trunk_operator.status",
    "trunk_operator.podset",
    "trunk_operator.asterisk_output",
    "trunk_operator.verify",
    "trunk_operator.asterisk_ari",
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


# Lowest first; a module may import its own layer and the ones before it, never a later one.
# `verify` (with `asterisk_output`, the CLI parsers) comes before `status`: the reducer reads
# its Observations; `asterisk`, the exec channel, delivers and reads them (`asterisk_ari`:
# the shell of its ARI push). Every module must
# be listed: a new one is placed on purpose.
LAYERS = [
    {"models", "metrics", "threads", "watchaudit"},
    {"render", "crdgen"},
    {"plan"},
    {"asterisk_output"},
    {"verify"},
    {"asterisk_ari"},
    {"asterisk"},
    {"status", "podset"},
    {"apiclient", "kube", "leader"},
    {"gates"},
    {"pods"},
    {"observer"},
    {"statuswriter"},
    {"controller"},
    {"handlers"},
    {"cli"},
]


def test_no_module_imports_a_layer_above_its_own() -> None:
    package = Path(__file__).resolve().parents[2] / "operator" / "trunk_operator"
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    assert modules == set(layer), f"place these in LAYERS: {sorted(modules ^ set(layer))}"
    upward = []
    for module in sorted(modules):
        tree = ast.parse((package / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "trunk_operator":
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "trunk_operator."
            ):
                imported = [(node.module or "").split(".")[1]]
            else:
                continue
            upward += [
                f"{module} imports {name}"
                for name in imported
                if name in layer and layer[name] > layer[module]
            ]
    assert upward == []
