"""The Helm chart: lint, restricted Pod Security, RBAC in both modes, values schema, CRDs."""

from __future__ import annotations

import re
import subprocess
import tomllib
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.packaging.conftest import Render, of_kind
from tests.packaging.helpers import PERMISSIONS, Permission
from tools.chartgen import CHART, CRDS, REPO

Helm = Callable[..., subprocess.CompletedProcess[str]]


def permissions(role: dict[str, Any]) -> set[Permission]:
    found = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames etc.
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found |= {(group, resource, verb) for verb in rule["verbs"]}
    return found


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = of_kind(objects, "Deployment")
    return found


# -- lint ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["watchNamespaces={team-a,team-b}"],
        ["podDisruptionBudget.enabled=true", "networkPolicy.enabled=true", "crds.keep=false"],
    ],
    ids=["defaults", "namespaced", "optional-objects"],
)
@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
def test_helm_lint_is_clean(helm: Helm, values: list[str], strict: bool) -> None:
    args = ["lint", str(CHART), *(["--strict"] if strict else [])]
    for value in values:
        args += ["--set", value]
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


# -- the operator's pod -------------------------------------------------------------------


def test_pod_meets_restricted_pod_security(render: Render) -> None:
    pod = deployment(render())["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert pod["automountServiceAccountToken"] is True
    assert "hostNetwork" not in pod and "hostPID" not in pod


def test_image_runs_as_the_user_the_chart_declares() -> None:
    """runAsNonRoot can only verify a numeric USER; the chart's ids must be the image's."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER 65532:65532$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["trunk-operator"]' in dockerfile


def test_two_replicas_with_leader_election_in_standalone_mode(render: Render) -> None:
    objects = render()
    operator = deployment(objects)
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"] == {"type": "RollingUpdate"}
    (role,) = [r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("leader")]
    assert role["metadata"]["namespace"] == "trunkop-system"
    assert permissions(role) == {
        ("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")
    }
    single = deployment(render("leaderElection.enabled=false", "replicaCount=1"))
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"localhost/asterisk-trunk-operator:{project_version()}"
    assert container["args"] == ["run", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert container["ports"] == [
        {"name": "liveness", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 8081, "protocol": "TCP"},
    ]


def environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    (container,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_settings_reach_the_operator_as_environment(render: Render) -> None:
    assert environment(render()) == {
        "TRUNKOP_WATCH_NAMESPACES": "",
        "TRUNKOP_DEFAULT_SELECTOR": "app=asterisk",
        "TRUNKOP_CONTAINER": "asterisk",
        "TRUNKOP_OBSERVE_INTERVAL": "5",
        "TRUNKOP_METRICS_PORT": "8081",
        "TRUNKOP_LEADER_ELECTION": "true",
    }
    custom = environment(
        render(
            "watchNamespaces={team-a,team-b}",
            "defaultSelector=role=pbx\\,tier=edge",
            "asteriskContainer=pbx",
        )
    )
    assert custom["TRUNKOP_WATCH_NAMESPACES"] == "team-a,team-b"
    assert custom["TRUNKOP_DEFAULT_SELECTOR"] == "role=pbx,tier=edge"
    assert custom["TRUNKOP_CONTAINER"] == "pbx"


# -- RBAC ---------------------------------------------------------------------------------


def served(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RBAC objects of the namespaces served (not the leader election's Lease role)."""
    return [o for o in objects if not o["metadata"]["name"].endswith("-leader")]


def test_cluster_mode_grants_exactly_the_documented_permissions(render: Render) -> None:
    objects = render()
    assert not served(of_kind(objects, "Role")) and not served(of_kind(objects, "RoleBinding"))
    (role,) = of_kind(objects, "ClusterRole")
    assert permissions(role) == PERMISSIONS
    (binding,) = of_kind(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    (account,) = of_kind(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": "trunkop-system",
        }
    ]
    pod = deployment(objects)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_namespaced_mode_has_a_role_per_namespace_and_nothing_cluster_scoped(
    render: Render,
) -> None:
    objects = render("watchNamespaces={team-a,team-b}")
    roles, bindings = served(of_kind(objects, "Role")), served(of_kind(objects, "RoleBinding"))
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert permissions(role) == PERMISSIONS
    (account,) = of_kind(objects, "ServiceAccount")
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": account["metadata"]["name"],
                "namespace": "trunkop-system",
            }
        ]
    # No cluster-wide access at all: neither to Secrets or pods nor to CRDs or namespaces.
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    # Without the CRDs (cluster-scoped, but not the operator's), every object is namespaced.
    without_crds = render("watchNamespaces={team-a,team-b}", "crds.enabled=false")
    assert all(o["metadata"].get("namespace") for o in without_crds), [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in without_crds
        if not o["metadata"].get("namespace")
    ]


def test_rbac_can_be_left_to_someone_else(render: Render) -> None:
    objects = render("rbac.create=false")
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "Role", "RoleBinding")]
    assert not of_kind(objects, "ClusterRoleBinding")


# -- values schema ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "unknownKey=1",
        "image.registry=example.org",
        "crds.install=true",
        "replicaCount=11",
        "watchNamespaces={Bad_Name}",
        "image.pullPolicy=Sometimes",
    ],
)
def test_values_schema_refuses(helm: Helm, value: str) -> None:
    result = helm("template", "trunkop", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert value.split("=")[0].split(".")[-1] in result.stderr  # names the offending key


# -- optional objects ---------------------------------------------------------------------


def test_disruption_budget_and_network_policy_are_opt_in(render: Render) -> None:
    assert not of_kind(render(), "PodDisruptionBudget")
    assert not of_kind(render(), "NetworkPolicy")
    objects = render("podDisruptionBudget.enabled=true", "networkPolicy.enabled=true")
    (budget,) = of_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    (policy,) = of_kind(objects, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [
        {"ports": [{"port": "liveness", "protocol": "TCP"}, {"port": "metrics", "protocol": "TCP"}]}
    ]
    api_server, twilio, dns = policy["spec"]["egress"]
    assert [p["port"] for p in api_server["ports"]] == [443, 6443] and "to" not in api_server
    assert twilio == {"ports": [{"port": 443, "protocol": "TCP"}]}  # Twilio's REST API
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    without = render("networkPolicy.enabled=true", "networkPolicy.twilioEgress=false")
    assert len(of_kind(without, "NetworkPolicy")[0]["spec"]["egress"]) == 2
    selector = deployment(objects)["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert budget["spec"]["selector"]["matchLabels"] == selector


def test_network_policy_can_name_the_api_server(render: Render) -> None:
    objects = render("networkPolicy.enabled=true", "networkPolicy.apiServerCidrs={10.0.0.1/32}")
    (policy,) = of_kind(objects, "NetworkPolicy")
    assert policy["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]


# -- CRDs and versions --------------------------------------------------------------------


def _without_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in crd["metadata"].items() if k not in ("labels", "annotations")}
    return {**crd, "metadata": metadata}


def test_chart_crds_are_the_crds_directory(render: Render) -> None:
    """One source: crds/ (from the models). `make chart-crds` regenerates the chart's copy."""
    rendered = {c["metadata"]["name"]: c for c in of_kind(render(), "CustomResourceDefinition")}
    expected = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        expected[crd["metadata"]["name"]] = crd
    assert {n: _without_chart_metadata(c) for n, c in rendered.items()} == expected
    for crd in rendered.values():
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/name"] == "asterisk-trunk-operator"


def test_crds_can_be_left_out_or_not_kept(render: Render) -> None:
    assert not of_kind(render("crds.enabled=false"), "CustomResourceDefinition")
    for crd in of_kind(render("crds.keep=false"), "CustomResourceDefinition"):
        assert "annotations" not in crd["metadata"]


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def test_chart_app_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project_version()


def test_chart_readme_lists_every_top_level_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    missing = [key for key in values if f"`{key}" not in readme]
    assert not missing, f"charts/asterisk-trunk-operator/README.md does not describe {missing}"


def test_every_value_is_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert set(values) == set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_metrics_port_and_service_monitor(render: Render) -> None:
    assert not of_kind(render(), "ServiceMonitor")
    objects = render("metrics.serviceMonitor.enabled=true")
    (monitor,) = of_kind(objects, "ServiceMonitor")
    (service,) = of_kind(objects, "Service")
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    (off,) = of_kind(render("metrics.port=0"), "Deployment")
    container = off["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in container["ports"]] == ["liveness"]


def test_more_than_one_replica_needs_leader_election(helm: Helm) -> None:
    result = helm(
        "template", "trunkop", str(CHART),
        "--set", "leaderElection.enabled=false", "--set", "replicaCount=2", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "replicaCount > 1 needs leaderElection.enabled" in result.stderr
