"""The Argo CD health script, in a real Lua 5.1, against real objects the e2e suite produced
(upstream's resource_customizations layout: health_test.yaml + testdata/), and as the chart
and manifests/ ship it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.health import ARGOCD, HEALTH_LUA, health
from tests.packaging.conftest import Render, of_kind
from tools.chartgen import MANIFESTS

CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]
KEYS = [
    f"resource.customizations.health.trunks.asterisk-operator.dev_{kind}"
    for kind in ("TwilioTrunk", "DIDSegment")
]


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health_of_real_objects(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((ARGOCD / case["inputPath"]).read_text())
    assert health(obj) == case["healthStatus"]


def test_every_state_has_a_case() -> None:
    covered = {Path(c["inputPath"]).name for c in CASES}
    assert covered == {p.name for p in (ARGOCD / "testdata").glob("*.yaml")}
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded"}


def test_the_chart_and_the_manifests_ship_the_same_script(render: Render) -> None:
    script = HEALTH_LUA.read_text()
    assert not of_kind(render(), "ConfigMap")  # off by default
    (config_map,) = of_kind(render("argocd.healthConfigMap=true"), "ConfigMap")
    patch = yaml.safe_load((MANIFESTS / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    for key in KEYS:
        assert config_map["data"][key].strip() == script.strip()
        assert patch["data"][key].strip() == script.strip()
