"""The in-cluster tier: the operator installed with Helm from charts/, as a pod kubelet runs
from the image built from the Dockerfile, next to Asterisk pods of examples/asterisk.

No admin kubeconfig reaches the operator: it runs with the chart's ServiceAccount and RBAC.
The test process itself drives the cluster as admin (kubectl, helm), as a user would.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.node import KubeletNode
from tests.conftest import host_operators
from tools.chartgen import CHART, helm_binary

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "trunkop"
SYSTEM_NAMESPACE = "trunkop-system"
ASTERISK_IMAGE = "localhost/asterisk:22"


def project_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")


@pytest.fixture(scope="session")
def operator_image() -> str:
    """localhost/asterisk-trunk-operator:<version>, built from the Dockerfile (cached)."""
    subprocess.run(["bash", str(ROOT / "testbed/build-operator-image.sh")], check=True)
    return f"localhost/asterisk-trunk-operator:{project_version()}"


@pytest.fixture(scope="session")
def node_images(real_node: KubeletNode, operator_image: str, asterisk_image: str) -> KubeletNode:
    for image in (operator_image, asterisk_image):
        seconds = real_node.import_image(image)
        print(f"\nimport {image} into the node: {seconds:.1f} s (0.0: already there)")
    return real_node


@dataclass
class Release:
    """One `helm install` of the chart, with the values the tests gave it."""

    cluster: Any
    node: KubeletNode
    namespace: str
    values: dict[str, Any]

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(helm_binary()), "--kubeconfig", self.cluster.kubeconfig, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args[:2])} failed: {done.stderr.strip()[-2000:]}\n"
                f"{self.diagnostics()}"
            )
        return done

    def diagnostics(self) -> str:
        """What a person would look at: the pods, their events, the operator's log."""
        pods = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-o", "wide", check=False)
        events = self.cluster.kubectl(
            "get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False
        )
        return f"{pods.stdout}\n{events.stdout[-3000:]}\n{self.operator_log()[-3000:]}"

    def install(self, **overrides: Any) -> None:
        self._apply_values("install", overrides)

    def upgrade(self, **overrides: Any) -> None:
        self._apply_values("upgrade", overrides)

    def _apply_values(self, verb: str, overrides: dict[str, Any]) -> None:
        self.values = {**self.values, **overrides}
        values_file = Path(f"/tmp/{RELEASE}-{uuid.uuid4().hex[:8]}-values.yaml")
        values_file.write_text(yaml.safe_dump(self.values))
        try:
            self.helm(
                verb, RELEASE, str(CHART), "--namespace", self.namespace,
                "-f", str(values_file), "--wait", "--timeout", "180s",
            )  # fmt: skip
        finally:
            values_file.unlink()

    def uninstall(self) -> subprocess.CompletedProcess[str]:
        return self.helm("uninstall", RELEASE, "--namespace", self.namespace, "--wait")

    def operator_pods(self) -> list[dict[str, Any]]:
        out = self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-o", "json",
            "-l", "app.kubernetes.io/name=asterisk-trunk-operator",
        )  # fmt: skip
        return [
            p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")
        ]

    def operator_log(self) -> str:
        logs = []
        for pod in self.operator_pods():
            name = pod["metadata"]["name"]
            for previous in (True, False):
                out = self.cluster.kubectl(
                    "logs", "-n", self.namespace, name, *(["--previous"] if previous else []),
                    check=False,
                )  # fmt: skip
                logs.append(out.stdout)
        return "\n".join(logs)

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:asterisk-trunk-operator"


@pytest.fixture(scope="module")
def no_host_operator() -> Iterator[None]:
    """The e2e tier's operator process is stopped meanwhile: one operator per cluster."""
    paused = [op for op in host_operators if op.proc is not None]
    for op in paused:
        op.stop()
    try:
        yield
    finally:
        for op in paused:
            op.start()


@pytest.fixture(scope="module")
def release(
    cluster: Any, node_images: KubeletNode, operator_image: str, no_host_operator: None
) -> Iterator[Release]:
    """The chart installed into a namespace that enforces the restricted Pod Security level."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": SYSTEM_NAMESPACE,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    repository, _, tag = operator_image.rpartition(":")
    placement = node_images.placement()
    rel = Release(
        cluster,
        node_images,
        SYSTEM_NAMESPACE,
        {
            "fullnameOverride": "asterisk-trunk-operator",
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "observeIntervalSeconds": 2,
            # No kube-proxy on the test node: the API server by the host's address.
            "extraEnv": node_images.api_env(),
            "nodeSelector": placement["nodeSelector"],
            "tolerations": placement["tolerations"],
        },
    )
    adopt_crds(cluster)
    try:
        rel.install()
        yield rel
    finally:
        rel.helm("uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait", check=False)
        cluster.kubectl("delete", "namespace", SYSTEM_NAMESPACE, "--wait=false", check=False)


def adopt_crds(cluster: Any) -> None:
    """CRDs applied earlier with kubectl (the e2e tier does) become the release's, the way the
    chart README tells users who installed them by hand: Helm adopts an object that carries
    its release annotations and managed-by label, and refuses any other."""
    for crd in ("twiliotrunks", "didsegments"):
        name = f"crd/{crd}.trunks.asterisk-operator.dev"
        if cluster.kubectl("get", name, check=False).returncode != 0:
            continue
        cluster.kubectl(
            "annotate", "--overwrite", name,
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={SYSTEM_NAMESPACE}",
        )  # fmt: skip
        cluster.kubectl("label", "--overwrite", name, "app.kubernetes.io/managed-by=Helm")


def asterisk_objects(
    cluster: Any, node: KubeletNode, bind_ip: str, hosts: dict[str, str]
) -> list[dict[str, Any]]:
    """examples/asterisk as `kubectl kustomize` renders it, with what this machine needs: the
    local image, a loopback address of its own (other Asterisk containers share the host's
    network), the Twilio stand-in's address for the termination host, the real node."""
    rendered = cluster.kubectl("kustomize", str(ROOT / "examples/asterisk")).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            data = obj["data"]
            data["pjsip.conf"] = data["pjsip.conf"].replace("0.0.0.0:5060", f"{bind_ip}:5060")
            start = 20000 + (int(bind_ip.rsplit(".", 1)[1]) % 150) * 200
            data["rtp.conf"] = data["rtp.conf"].replace("rtpstart = 10000", f"rtpstart = {start}")
            data["rtp.conf"] = data["rtp.conf"].replace("rtpend = 20000", f"rtpend = {start + 199}")
        if obj["kind"] == "StatefulSet":
            spec = obj["spec"]["template"]["spec"]
            spec.update(copy.deepcopy(node.placement()))
            spec["dnsPolicy"] = "Default"  # no cluster DNS on the test node
            spec["terminationGracePeriodSeconds"] = 30
            spec["hostAliases"] = [
                {"ip": ip, "hostnames": [host]} for host, ip in sorted(hosts.items())
            ]
            for container in spec["initContainers"] + spec["containers"]:
                container["image"] = ASTERISK_IMAGE
                container["imagePullPolicy"] = "Never"
    return objects
