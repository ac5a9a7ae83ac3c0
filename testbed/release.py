"""The operator as users install it, on the local platform: a Helm release of charts/ with
the image built from the Dockerfile, and Asterisk pods from examples/asterisk, both on the
real kubelet node (testbed/node/). Used by tests/incluster, the demo and the bench."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.node import KubeletNode
from tools.chartgen import CHART, helm_binary

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "trunkop"
SYSTEM_NAMESPACE = "trunkop-system"
ASTERISK_IMAGE = "localhost/asterisk:22"


def project_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise RuntimeError("no version in pyproject.toml")


def build_operator_image() -> str:
    """localhost/asterisk-trunk-operator:<version> from the Dockerfile (cached by inputs)."""
    subprocess.run(["bash", str(ROOT / "testbed/build-operator-image.sh")], check=True)
    return f"localhost/asterisk-trunk-operator:{project_version()}"


def restricted_namespace(cluster: Any, name: str = SYSTEM_NAMESPACE) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )


def release_for(cluster: Any, node: KubeletNode, image: str, **values: Any) -> Release:
    """A release whose operator runs on `node` with `image` (not installed yet)."""
    repository, _, tag = image.rpartition(":")
    placement = node.placement()
    return Release(
        cluster,
        node,
        SYSTEM_NAMESPACE,
        {
            "fullnameOverride": "asterisk-trunk-operator",
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            # No kube-proxy on the test node: the API server by the host's address.
            "extraEnv": node.api_env(),
            "nodeSelector": placement["nodeSelector"],
            "tolerations": placement["tolerations"],
            **values,
        },
    )


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
        return "\n".join(self.pod_log(p["metadata"]["name"]) for p in self.operator_pods())

    def pod_log(self, name: str) -> str:
        """One operator pod's log: its previous container's (if it restarted), then its own."""
        logs = []
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


def adopt_crds(cluster: Any) -> None:
    """CRDs applied earlier with kubectl (the e2e tier does) become the release's, the way the
    chart README tells users who installed them by hand: Helm adopts an object that carries
    its release annotations and managed-by label, and refuses any other."""
    for crd in ("twiliotrunks", "didsegments", "twilioaccounts"):
        name = f"crd/{crd}.trunks.asterisk-operator.dev"
        if cluster.kubectl("get", name, check=False).returncode != 0:
            continue
        cluster.kubectl(
            "annotate", "--overwrite", name,
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={SYSTEM_NAMESPACE}",
        )  # fmt: skip
        cluster.kubectl("label", "--overwrite", name, "app.kubernetes.io/managed-by=Helm")


def host_nameservers() -> list[str]:
    """The name servers of this machine's /etc/resolv.conf."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        return []
    return [f[1] for f in (line.split() for line in lines) if len(f) > 1 and f[0] == "nameserver"]


def asterisk_objects(
    cluster: Any,
    node: KubeletNode,
    bind_ip: str,
    hosts: dict[str, str],
    example: str = "examples/asterisk",
) -> list[dict[str, Any]]:
    """examples/asterisk (or `example`, an overlay of it) as `kubectl kustomize` renders it,
    with what this machine needs: the local image, a loopback address of its own (other
    Asterisk containers share the host's network), the Twilio stand-in's address for the
    termination host, the real node."""
    rendered = cluster.kubectl("kustomize", str(ROOT / example)).stdout
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
            # No cluster DNS on the test node, and the kubelet hands out no resolv.conf
            # (node/config.py). hostNetwork reaches the host's name servers, as podman's Asterisk
            # containers do: pjsip's NAPTR/SRV lookups of the termination host then fail fast
            # and the hostAliases entry answers within the 3 s qualify timeout (otherwise the
            # contact stays Unavail).
            nameservers = host_nameservers()
            spec["dnsPolicy"] = "None" if nameservers else "Default"
            if nameservers:
                spec["dnsConfig"] = {"nameservers": nameservers[:3]}  # the API's maximum
            spec["terminationGracePeriodSeconds"] = 30
            spec["hostAliases"] = [
                {"ip": ip, "hostnames": [host]} for host, ip in sorted(hosts.items())
            ]
            for container in spec["initContainers"] + spec["containers"]:
                container["image"] = ASTERISK_IMAGE
                container["imagePullPolicy"] = "Never"
    return objects
