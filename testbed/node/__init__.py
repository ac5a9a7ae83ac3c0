"""A real kubelet node for the test platform, next to the kwokctl control plane.

    from testbed.cluster import Cluster
    from testbed.node import KubeletNode

    with Cluster() as c, KubeletNode(c) as node:
        node.import_image("localhost/asterisk:22")   # podman -> containerd, skipped when there
        pod_spec = {**node.placement(), "containers": [...]}   # nodeSelector + toleration

What runs, as child processes this object holds by pid: Debian's ``containerd`` (config,
socket and state of our own; its root lives in the cache so imported images survive runs)
and the ``kubelet`` built by ``build-binaries.sh``, registered as node ``trunkop-real-node``
with label and NoSchedule taint ``trunkop.dev/real-node=true``. Only pods that ask for it
land there; kwok-controller leaves it alone (``Cluster`` restricts kwok to nodes annotated
``kwok.x-k8s.io/node=fake``). The sandbox image is ``testbed/node/pause.c``, built with
``gcc -static`` into a FROM-scratch image (no registry here).

The kubelet and containerd change the host whatever we configure; ``start()`` records the
state before and ``stop()`` undoes what is new: sysctls, the CNI bridge, ``/kubepods``
cgroups, fixed paths (``/var/lib/kubelet/device-plugins``, ``/var/log/containers``,
``/var/lib/cni``, ``/run/containerd``), mounts under our own directories, KUBE-*/CNI-*
iptables chains (kubelet is told not to create them; removed if they appear anyway). The
record is also written to the cache, so a run that died without ``stop()`` is undone by the
next ``start()``. One real node per machine (port 10250 and those fixed paths): a lock file
in the cache enforces it.

The modules:

- ``kubelet``: ``KubeletNode``, start/stop of containerd and the kubelet, detach for
  ``make demo`` and ``stop_detached()``
- ``host``: the record of the host before the node started, and the undo of what is new
- ``config``: the files it runs on (containerd, CNI, kubelet config, kubeconfig, client cert)
- ``images``: the pause image, imports into containerd
- ``lock``: one real node per machine
- ``processes``, ``errors``: running commands, stopping processes; ``NodeError``
"""

from testbed.node.config import BRIDGE, KUBELET_PORT, LABEL, POD_SUBNET
from testbed.node.errors import NodeError
from testbed.node.host import HostRecord, host_address
from testbed.node.kubelet import NODE_NAME, KubeletNode

__all__ = [
    "BRIDGE",
    "KUBELET_PORT",
    "LABEL",
    "NODE_NAME",
    "POD_SUBNET",
    "HostRecord",
    "KubeletNode",
    "NodeError",
    "host_address",
]
