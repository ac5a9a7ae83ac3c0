"""Smoke test of the local test platform (testbed/): a real control plane from
kwokctl + locally built binaries, CRD validation, garbage collection, and
`kubectl exec` of a simulated pod routed into a podman container.

Needs: the binaries (testbed/build-binaries.sh, cached after the first run),
podman + runc. Run: pytest -m integration tests/platform/test_cluster_smoke.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from testbed.cluster import Cluster, pid_alive

pytestmark = pytest.mark.integration

SCRATCH_IMAGE = "localhost/testbed-scratch:latest"
PODMAN_RUN = [
    "podman",
    "run",
    "--runtime",
    "/usr/sbin/runc",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=20000:20000",
    "--network",
    "host",
    "-d",
]
SCRATCH_TOOLS = ["sh", "dash", "cat", "sleep", "ls", "head", "true", "echo", "tar", "sha256sum"]

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.testbed.local}
spec:
  group: smoke.testbed.local
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
"""


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


def _build_scratch_image() -> None:
    """A tiny image from host binaries (no registry here): sh, cat, sleep, ..."""
    if subprocess.run(["podman", "image", "exists", SCRATCH_IMAGE]).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        for sub in ("usr/bin", "usr/lib", "usr/lib64", "tmp"):
            (root / sub).mkdir(parents=True)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            (root / link).symlink_to(target)
        for tool in SCRATCH_TOOLS:
            src = Path(shutil.which(tool) or f"/usr/bin/{tool}").resolve()
            shutil.copy2(src, root / "usr/bin" / tool)
            ldd = subprocess.run(["ldd", str(src)], capture_output=True, text=True).stdout
            for word in ldd.split():
                if word.startswith("/"):
                    dest = root / word.lstrip("/")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(Path(word).resolve(), dest)
        tar_path = Path(d) / "root.tar"
        with tarfile.open(tar_path, "w") as t:
            t.add(root, arcname=".")
        subprocess.run(
            ["podman", "import", str(tar_path), SCRATCH_IMAGE], check=True, capture_output=True
        )


@pytest.fixture
def container():
    _need("podman")
    _build_scratch_image()
    name = f"tb-smoke-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(
        [*PODMAN_RUN, "--name", name, SCRATCH_IMAGE, "sleep", "100000"],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True)


def test_cluster_smoke(container: str) -> None:
    cluster = Cluster()
    with cluster as c:
        pids = c.pids()
        for comp in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            assert comp in pids, pids
        assert any(k.startswith("kwok") for k in pids), pids

        version = c.kubectl("version", "-o", "yaml").stdout
        assert "gitVersion: v1.36.3" in version, version

        node = c.get("node", c.node_name)
        assert node["metadata"]["labels"]["type"] == "kwok"

        # CRD + CR, and a schema validation error.
        c.apply(CRD)
        c.kubectl(
            "wait",
            "--for=condition=Established",
            "crd/widgets.smoke.testbed.local",
            "--timeout=60s",
        )
        c.kubectl("create", "namespace", "smoke")
        c.apply(
            {
                "apiVersion": "smoke.testbed.local/v1",
                "kind": "Widget",
                "metadata": {"name": "ok", "namespace": "smoke"},
                "spec": {"size": 3},
            }
        )
        bad = c.apply(
            {
                "apiVersion": "smoke.testbed.local/v1",
                "kind": "Widget",
                "metadata": {"name": "bad", "namespace": "smoke"},
                "spec": {"size": 99},
            },
            check=False,
        )
        assert bad.returncode != 0
        assert "spec.size" in bad.stderr and "less than or equal to 10" in bad.stderr, bad.stderr

        # Garbage collector: it learns about the new kind within ~30-60 s (its
        # discovery resync); after that a ConfigMap owned by a Widget goes at once.
        waited = c.wait_garbage_collector(
            {
                "apiVersion": "smoke.testbed.local/v1",
                "kind": "Widget",
                "metadata": {"namespace": "smoke"},
                "spec": {"size": 1},
            }
        )
        assert waited < 120
        uid = c.get("widget", "ok", "smoke")["metadata"]["uid"]
        owner = {"apiVersion": "smoke.testbed.local/v1", "kind": "Widget", "name": "ok", "uid": uid}
        c.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "owned", "namespace": "smoke", "ownerReferences": [owner]},
            }
        )
        c.kubectl("delete", "widget", "ok", "-n", "smoke")
        deadline = time.monotonic() + 30
        while c.kubectl("get", "configmap", "owned", "-n", "smoke", check=False).returncode == 0:
            assert time.monotonic() < deadline, "garbage collector did not delete the ConfigMap"
            time.sleep(0.5)

        # A simulated pod whose exec runs in the podman container.
        pod = c.add_exec_pod("smoke", "asterisk-0", container, {"app": "asterisk"})
        assert pod["status"]["phase"] == "Running"
        r = c.kubectl(
            "exec", "-n", "smoke", "asterisk-0", "--", "sh", "-c", "echo in-container", check=False
        )
        assert "in-container" in r.stdout, r
        r = c.kubectl(
            "exec", "-i", "-n", "smoke", "asterisk-0", "--", "cat", input="hi\n", timeout=30
        )
        assert r.stdout == "hi\n"
        r = c.kubectl("exec", "-n", "smoke", "asterisk-0", "--", "sh", "-c", "exit 3", check=False)
        assert r.returncode == 3, r
        # Routed, not run on the host: the container's hostname is its id.
        host_ls = c.kubectl("exec", "-n", "smoke", "asterisk-0", "--", "ls", "/usr/bin").stdout
        assert "kubectl" not in host_ls and "cat" in host_ls

        # Namespace deletion (namespace controller in kube-controller-manager).
        c.delete_exec_pod("smoke", "asterisk-0")
        c.kubectl("delete", "namespace", "smoke", "--timeout=90s")

        component_pids = list(c.pids().values())
        cluster_dir = str(c.cluster_dir)

    # Nothing of that cluster remains: neither the pids kwokctl recorded nor any
    # process naming the cluster's own directory.
    assert cluster.processes() == []
    # (An exited component may linger as a zombie here: PID 1 of this machine
    # does not reap orphans. A zombie is not running.)
    for pid in component_pids:
        assert not pid_alive(pid), f"pid {pid} still running"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            assert cluster_dir not in cmdline or not pid_alive(int(proc.name)), cmdline
    assert not Path(cluster_dir).exists()
