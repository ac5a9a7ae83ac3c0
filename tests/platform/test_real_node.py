"""A real kubelet node (testbed/node/) next to the kwokctl control plane: real containers
from an imported podman image, real exec, projected ServiceAccount tokens, restarts, host and
bridge networking, and a teardown that leaves nothing on the host.

Needs root, containerd + containernetworking-plugins (`make deps`), the kubelet
(testbed/build-binaries.sh) and localhost/asterisk:22. Run:
    pytest -m e2e tests/platform/test_real_node.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from testbed.node import BRIDGE, LABEL, POD_SUBNET, KubeletNode, host_address

pytestmark = pytest.mark.e2e

IMAGE = "localhost/asterisk:22"
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@pytest.fixture(scope="module")
def node_with_image(real_node: KubeletNode, asterisk_image: str) -> KubeletNode:
    seconds = real_node.import_image(asterisk_image)
    print(f"\nimport {asterisk_image}: {seconds:.1f} s (0.0: already in containerd)")
    print(f"node timings: { {k: round(v, 2) for k, v in real_node.timings.items()} }")
    return real_node


def pod(node: KubeletNode, name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": IMAGE, "imagePullPolicy": "Never"}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            **node.placement(),
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            **spec,
        },
    }


def wait_running(cluster: Any, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    cluster.kubectl(
        "wait", "-n", namespace, "--for=condition=Ready", f"pod/{name}",
        f"--timeout={int(timeout)}s", timeout=timeout + 30,
    )  # fmt: skip
    obj: dict[str, Any] = cluster.get("pod", name, namespace)
    return obj


def test_node_is_real_and_kwok_keeps_off(cluster: Any, real_node: KubeletNode) -> None:
    node = cluster.get("node", real_node.name)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3", info
    assert info["containerRuntimeVersion"].startswith("containerd://1.6"), info
    assert node["metadata"]["labels"][LABEL] == "true"
    assert {"key": LABEL, "value": "true", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == host_address()
    # kwok-controller runs with --manage-all-nodes=false and the fake-node selector.
    kwok = [
        " ".join(Path(f"/proc/{pid}/cmdline").read_text().split("\0"))
        for name, pid in cluster.pids().items()
        if name.startswith("kwok")
    ]
    assert any("--manage-all-nodes=false" in c for c in kwok), kwok
    assert not any("--manage-all-nodes=true" in c for c in kwok), kwok


def test_bridge_pod_runs_asterisk_with_exec_and_token(
    cluster: Any, node_with_image: KubeletNode, namespace: str
) -> None:
    node = node_with_image
    start = time.monotonic()
    cluster.apply(pod(node, "asterisk", namespace, container={"env": node.api_env()}))
    obj = wait_running(cluster, namespace, "asterisk")
    ready = time.monotonic() - start
    assert obj["spec"]["nodeName"] == node.name
    prefix = POD_SUBNET.rsplit(".", 1)[0] + "."
    assert obj["status"]["podIP"].startswith(prefix), obj["status"]

    # Asterisk itself, in the pod's own network namespace. Its control socket appears a
    # moment after the container starts (Ready): until then -rx cannot connect.
    deadline = time.monotonic() + 60
    while True:
        r = cluster.kubectl(
            "exec", "-n", namespace, "asterisk", "--", "asterisk", "-rx", "core waitfullybooted",
            check=False, timeout=90,
        )  # fmt: skip
        if r.returncode == 0:
            break
        assert time.monotonic() < deadline, r
        time.sleep(0.2)
    booted = time.monotonic() - start
    version = cluster.kubectl(
        "exec", "-n", namespace, "asterisk", "--", "asterisk", "-rx", "core show version"
    ).stdout
    assert version.startswith("Asterisk 22."), version
    print(f"\nbridge pod Ready {ready:.1f} s, Asterisk fully booted {booted:.1f} s after apply")

    # exec: stdin reaches EOF, the exit code comes back.
    t = time.monotonic()
    r = cluster.kubectl(
        "exec", "-i", "-n", namespace, "asterisk", "--", "sh", "-c", "cat; exit 3",
        input="hello\n", check=False, timeout=30,
    )  # fmt: skip
    print(f"kubectl exec -i: {time.monotonic() - t:.2f} s")
    assert r.returncode == 3, r
    assert r.stdout == "hello\n", r

    # A projected, pod-bound ServiceAccount token that the API server accepts.
    token = cluster.kubectl("exec", "-n", namespace, "asterisk", "--", "cat", TOKEN).stdout
    assert token.count(".") == 2, token
    review = cluster.kubectl(
        "create", "-o", "json", "-f", "-",
        input=json.dumps({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }),
    )  # fmt: skip
    status = json.loads(review.stdout)["status"]
    assert status["authenticated"] is True, status
    assert status["user"]["username"] == f"system:serviceaccount:{namespace}:default"
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["asterisk"]
    mounted = cluster.kubectl(
        "exec", "-n", namespace, "asterisk", "--", "ls", TOKEN.rsplit("/", 1)[0]
    ).stdout.split()
    assert {"ca.crt", "namespace", "token"} <= set(mounted), mounted

    # The API server answers from inside the pod, at the host's address (no kube-proxy).
    r = cluster.kubectl(
        "exec", "-n", namespace, "asterisk", "--", "bash", "-c",
        'exec 3<>"/dev/tcp/$KUBERNETES_SERVICE_HOST/$KUBERNETES_SERVICE_PORT" && echo open',
        check=False, timeout=30,
    )  # fmt: skip
    assert r.stdout.strip() == "open", r


def test_host_network_pod(cluster: Any, node_with_image: KubeletNode, namespace: str) -> None:
    node = node_with_image
    cluster.apply(
        pod(node, "hostnet", namespace, hostNetwork=True,
            container={"command": ["sleep", "3600"]})
    )  # fmt: skip
    obj = wait_running(cluster, namespace, "hostnet")
    assert obj["status"]["podIP"] == node.node_ip
    # Same network namespace and host name as this test process.
    netns = cluster.kubectl(
        "exec", "-n", namespace, "hostnet", "--", "readlink", "/proc/self/ns/net"
    )
    assert netns.stdout.strip() == os.readlink("/proc/self/ns/net")
    hostname = cluster.kubectl(
        "exec", "-n", namespace, "hostnet", "--", "cat", "/proc/sys/kernel/hostname"
    )
    assert hostname.stdout.strip() == socket.gethostname()
    # Its exec is real too (not kwok's): the image's own files.
    r = cluster.kubectl(
        "exec", "-n", namespace, "hostnet", "--", "test", "-x", "/usr/sbin/asterisk"
    )
    assert r.returncode == 0


def test_exited_container_is_restarted(
    cluster: Any, node_with_image: KubeletNode, namespace: str
) -> None:
    node = node_with_image
    cluster.apply(
        pod(node, "crasher", namespace, container={"command": ["sh", "-c", "sleep 1; exit 7"]})
    )
    deadline = time.monotonic() + 60
    while True:
        obj = cluster.get("pod", "crasher", namespace)
        statuses = obj["status"].get("containerStatuses") or [{}]
        if statuses[0].get("restartCount", 0) >= 1:
            break
        assert time.monotonic() < deadline, obj["status"]
        time.sleep(0.5)
    last = statuses[0].get("lastState", {}).get("terminated", {})
    assert last.get("exitCode") == 7, statuses


def test_stop_leaves_nothing_then_restart(cluster: Any, node_with_image: KubeletNode) -> None:
    """Stop the session's node with a pod running, check the host by hand, start it again."""
    node = node_with_image
    ns = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.apply(pod(node, "running", ns, container={"command": ["sleep", "3600"]}))
        wait_running(cluster, ns, "running")
        record = node.record
        assert record is not None
        workdir = record.workdir
        pids = dict(record.pids)
        assert node.leftovers() != []  # it does change the host while running

        t = time.monotonic()
        node.stop()
        print(f"\nstop with a running pod: {time.monotonic() - t:.1f} s")

        for name, pid in pids.items():  # gone, or a zombie nobody reaps (not running)
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", name
        assert not Path(workdir).exists()
        mounts = Path("/proc/self/mountinfo").read_text()
        assert workdir not in mounts and str(node.containerd_root) not in mounts
        for key, before in record.chains.items():
            binary, table = key.split()
            now = node_chains(binary, table)
            assert set(now) <= set(before), (key, set(now) - set(before))
        assert not Path("/sys/class/net", BRIDGE).exists() or record.bridge_existed
        netns = (
            sorted(p.name for p in Path("/run/netns").iterdir())
            if Path("/run/netns").exists()
            else []
        )
        assert netns == record.netns
        for name, value in record.sysctls.items():
            assert Path("/proc/sys", name.replace(".", "/")).read_text().strip() == value, name
        cgroups = [m for m in cgroup_mount_points() if m not in record.kubepods_before]
        assert not [m for m in cgroups if Path(m, "kubepods").exists()]
        for path, entries in record.paths.items():
            if entries is None:
                assert not Path(path).exists(), path
        assert node.leftovers() == []
        assert cluster.kubectl("get", "node", node.name, check=False).returncode != 0

        # And it comes back (same session fixture, used by later tests): caches reused.
        t = time.monotonic()
        node.start()
        print(f"restart: {time.monotonic() - t:.1f} s, timings {node.timings}")
        assert node.import_image(IMAGE) == 0.0  # containerd's root persists in the cache
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def node_chains(binary: str, table: str) -> list[str]:
    out = subprocess.run([binary, "-t", table, "-S"], capture_output=True, text=True).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("-N ")]


def cgroup_mount_points() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in ("cgroup", "cgroup2"):
            out.append(left.split()[4])
    return out
