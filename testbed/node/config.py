"""The files the real node runs on, all in its per-run work dir: containerd's config, the CNI
config, the kubelet's config and kubeconfig, and the node's client certificate (signed by
the CA kwokctl generated)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from testbed.cluster import Cluster
from testbed.node.errors import NodeError
from testbed.node.processes import run

LABEL = "trunkop.dev/real-node"  # label and NoSchedule taint: tests opt in explicitly
KUBELET_PORT = 10250
POD_SUBNET = "10.244.0.0/24"  # podman's default network is 10.88.0.0/16
BRIDGE = "trunkop-cni0"
CNI_NETWORK = "trunkop-node"
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"


def api_server(cluster: Cluster) -> str:
    """The API server's URL, from the cluster's kubeconfig."""
    assert cluster.kubeconfig is not None
    loaded: dict[str, Any] = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    server: str = loaded["clusters"][0]["cluster"]["server"]
    return server


def write_files(
    workdir: Path,
    *,
    cluster: Cluster,
    name: str,
    node_ip: str,
    containerd_root: Path,
    socket: Path,
    pause_image: str,
) -> None:
    """Everything containerd and the kubelet of node ``name`` read, written into ``workdir``."""
    w = workdir
    for d in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "kubelet-pki", "pod-logs",
              "volume-plugins", "pki"):  # fmt: skip
        (w / d).mkdir(parents=True, exist_ok=True)
    write_containerd_config(
        w, containerd_root=containerd_root, socket=socket, pause_image=pause_image
    )
    write_cni_config(w)
    write_kubelet_files(w, cluster=cluster, name=name, node_ip=node_ip, socket=socket)


def write_containerd_config(
    workdir: Path, *, containerd_root: Path, socket: Path, pause_image: str
) -> None:
    # containerd: everything in our own directories, restrict_oom_score_adj because this
    # VM lacks CAP_SYS_RESOURCE (every sandbox fails with "can't get final child's PID
    # from pipe: EOF" without it), netns mounts under our state dir instead of /run/netns.
    w = workdir
    state = w / "containerd" / "state"
    (w / "containerd" / "config.toml").write_text(
        f"""version = 2
root = "{containerd_root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{containerd_root}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{pause_image}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = "{RUNC}"
          Root = "{state}/runc"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{w}/cni/net.d"
      max_conf_num = 1
"""
    )


def write_cni_config(workdir: Path) -> None:
    # A bridge of our own (podman reads /etc/cni/net.d, we do not); no ipMasq, so the
    # plugin adds no iptables rules; IPAM state in our directory, not /var/lib/cni.
    w = workdir
    conflist = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(w / "cni" / "ipam"),
                },
            }
        ],
    }
    (w / "cni" / "net.d" / "10-trunkop.conflist").write_text(json.dumps(conflist, indent=1))


def write_kubelet_files(
    workdir: Path, *, cluster: Cluster, name: str, node_ip: str, socket: Path
) -> None:
    """The node's client certificate, the kubelet's kubeconfig and its config."""
    w = workdir
    # Client cert of the node, signed by the CA kwokctl generated.
    pki = cluster.cluster_dir / "pki"
    ca_crt, ca_key = pki / "ca.crt", pki / "ca.key"
    if not ca_key.exists():
        raise NodeError(f"no cluster CA key at {ca_key}")
    key, csr, crt = w / "pki" / "node.key", w / "pki" / "node.csr", w / "pki" / "node.crt"
    ext = w / "pki" / "node.ext"
    ext.write_text(
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    )
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/O=system:nodes/CN=system:node:{name}"])  # fmt: skip
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "30",
         "-sha256", "-extfile", str(ext), "-out", str(crt)])  # fmt: skip
    server = api_server(cluster)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority": str(ca_crt)}}
        ],
        "users": [{"name": "u", "user": {"client-certificate": str(crt), "client-key": str(key)}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    (w / "kubelet.kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzPort": 0,  # one fixed port (10250) is enough
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,  # 1.35+ refuses cgroup v1 otherwise; this VM is v1 hybrid
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{socket}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_crt)},
        },
        "authorization": {"mode": "Webhook"},
        "registerWithTaints": [{"key": LABEL, "value": "true", "effect": "NoSchedule"}],
        # The KUBE-* chains serve kube-proxy, which does not run here.
        "makeIPTablesUtilChains": False,
        "podLogsDir": str(w / "pod-logs"),
        "volumePluginDir": str(w / "volume-plugins"),
        # No cluster DNS: an empty resolv.conf fails fast instead of timing out on the
        # host's (unreachable from pods) name server.
        "resolvConf": "",
        "imageGCHighThresholdPercent": 100,  # never garbage-collect the imported images
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }
    (w / "kubelet.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
