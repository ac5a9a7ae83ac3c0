"""manifests/ and the chart's CRD template are generated: they must be what generation gives."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import yaml

from tests.conftest import ROOT
from tools.chartgen import CHART_CRDS, INSTALL_MANIFEST, NAMESPACE, chart_crds_template, manifests

Helm = Callable[..., subprocess.CompletedProcess[str]]


def test_chart_crd_template_is_generated_from_crds() -> None:
    assert CHART_CRDS.read_text() == chart_crds_template(), (
        "charts/asterisk-trunk-operator/templates/crds.yaml is stale: run `make chart-crds`"
    )


def test_manifests_are_a_fresh_helm_template(helm: Helm) -> None:
    for path, text in manifests().items():
        assert path.exists() and path.read_text() == text, f"{path} is stale: run `make manifests`"


def test_manifests_install_into_a_restricted_namespace() -> None:
    objects = [o for o in yaml.safe_load_all(INSTALL_MANIFEST.read_text()) if o]
    assert objects[0]["kind"] == "Namespace"  # `kubectl apply -f` creates it first
    assert objects[0]["metadata"]["name"] == NAMESPACE
    assert objects[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]


def test_reference_asterisk_keeps_transports_and_nat_on_its_base_transport() -> None:
    """Transports are the deployment's: not reloaded by Asterisk (the operator never delivers
    one), and NAT settings belong on them."""
    base = (ROOT / "examples/asterisk/config/pjsip.conf").read_text()
    assert "allow_reload" not in base.replace("(allow_reload = no)", "")
    for option in ("local_net", "external_media_address", "external_signaling_address"):
        assert f"; {option} = " in base, option
    assert base.rstrip().endswith("#tryinclude pjsip.d/*.conf")
