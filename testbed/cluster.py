"""A real Kubernetes control plane for tests, run by kwokctl from locally built binaries.

    from testbed.cluster import Cluster

    with Cluster() as c:                       # builds/reuses binaries, starts the cluster
        c.kubectl("get", "nodes")
        c.add_exec_pod("default", "asterisk-0", container="my-podman-container")
        c.kubectl("exec", "-i", "asterisk-0", "--", "cat", input="hi\\n")

What runs: etcd, kube-apiserver, kube-controller-manager (garbage collector and
namespace deletion work), kube-scheduler and kwok-controller, as local processes
started by ``kwokctl --runtime binary``. Nodes and Pods are simulated by kwok; one
Node (``type=kwok``) is created. ``kubectl exec`` into a simulated pod is routed into a
podman container through the wrappers in ``testbed/kwok/bin`` (see testbed/README.md).

Only stdlib + subprocess + PyYAML. All state lives in a temporary directory (outside
the checkout) that ``stop()`` removes; ``stop()`` only ever signals processes whose
command line names this cluster's own unique directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

TESTBED_DIR = Path(__file__).resolve().parent
EXEC_ROUTER_DIR = TESTBED_DIR / "kwok" / "bin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NODE_NAME = "kwok-node-0"
EXEC_CONTAINER_NAME = "asterisk"  # the one container of every exec pod

COMPONENT_BINARIES = {
    "--kube-apiserver-binary": "kube-apiserver",
    "--kube-controller-manager-binary": "kube-controller-manager",
    "--kube-scheduler-binary": "kube-scheduler",
    "--etcd-binary": "etcd",
    "--kwok-controller-binary": "kwok",
}


_SEQ = itertools.count()
CREATION_LOCK = Path(tempfile.gettempdir()) / "trunkop-kwokctl-create.lock"


@contextlib.contextmanager
def _creation_lock() -> Iterator[None]:
    """Machine-wide: one kwokctl cluster creation at a time (they pick ports unlocked)."""
    with open(CREATION_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ClusterError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(
        os.environ.get("TRUNKOP_CACHE") or Path.home() / ".cache" / "asterisk-trunk-operator"
    )


def versions() -> dict[str, str]:
    """The pins in testbed/versions.env."""
    out: dict[str, str] = {}
    for line in (TESTBED_DIR / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip("\"'")
    return out


def ensure_binaries(*, quiet: bool = False) -> Path:
    """Run build-binaries.sh (a no-op when everything is cached); return the bin dir.

    ``TRUNKOP_TESTBED_BIN`` short-cuts this with an existing directory.
    """
    env_bin = os.environ.get("TRUNKOP_TESTBED_BIN")
    if env_bin:
        return Path(env_bin)
    proc = subprocess.run(
        ["bash", str(TESTBED_DIR / "build-binaries.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else None,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ClusterError(f"testbed/build-binaries.sh failed (exit {proc.returncode})")
    return Path(proc.stdout.strip().splitlines()[-1])


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class KubectlHelpers:
    """`apply` and `get` for any cluster handle that has `kubectl`."""

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[Any]:
        raise NotImplementedError

    def apply(self, *objs: dict[str, Any] | str, check: bool = True) -> Any:
        """kubectl apply -f - with dicts or YAML text."""
        docs = [o if isinstance(o, str) else yaml.safe_dump(o) for o in objs]
        return self.kubectl("apply", "-f", "-", input="\n---\n".join(docs), check=check)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        return yaml.safe_load(self.kubectl("get", kind, name, *ns, "-o", "yaml").stdout)


class Cluster(KubectlHelpers):
    """One kwokctl cluster. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        name: str | None = None,
        *,
        bin_dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 180.0,
        verbose: bool = False,
    ) -> None:
        self.name = name or f"trunkop-{os.getpid()}-{int(time.time()) % 100000}-{next(_SEQ)}"
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self._workdir_arg = Path(workdir) if workdir else None
        self.start_timeout = start_timeout
        self.verbose = verbose
        self.workdir: Path | None = None
        self.kubeconfig: str | None = None
        self.node_name = NODE_NAME
        self._component_pids: dict[str, int] = {}
        self._marker: str | None = None  # this run's cluster dir, kept after stop()
        self._owns_workdir = False

    # ----------------------------------------------------------------- paths
    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries(quiet=not self.verbose)
        return self._bin_dir

    @property
    def cluster_dir(self) -> Path:
        assert self.workdir is not None, "cluster not started"
        return self.workdir / "clusters" / self.name

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KWOK_WORKDIR"] = str(self.workdir)
        # kwokctl looks kubectl up on PATH: the built one first.
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', SYSTEM_PATH)}"
        env.pop("KUBECONFIG", None)
        return env

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[testbed {self.name}] {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        bins = self.bin_dir
        for b in [*COMPONENT_BINARIES.values(), "kwokctl", "kubectl"]:
            if not (bins / b).exists():
                raise ClusterError(f"missing binary {bins / b}; run testbed/build-binaries.sh")
        if self._workdir_arg:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
            self._owns_workdir = True
        self._marker = str(self.cluster_dir)

        config = self.workdir / "kwokctl-config.yaml"
        config.write_text(yaml.safe_dump(self._kwokctl_config(), sort_keys=False))
        args = [
            str(bins / "kwokctl"),
            "create",
            "cluster",
            "--name",
            self.name,
            "--runtime",
            "binary",
            "--config",
            str(config),
            # Never touch ~/.kube/config (shared with other people on the machine).
            "--kubeconfig",
            "",
            # Exec objects are created per pod at run time, so they must be CRDs.
            "--enable-crds",
            "Exec",
            "--wait",
            f"{int(self.start_timeout)}s",
            "--timeout",
            f"{int(self.start_timeout)}s",
        ]
        for flag, b in COMPONENT_BINARIES.items():
            args += [flag, str(bins / b)]
        self._log("kwokctl " + " ".join(args[1:]))
        try:
            with _creation_lock():
                self._create(args)
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, args: list[str]) -> None:
        """kwokctl picks free ports when it creates a cluster; two creations at the same
        moment (two test runs on one machine) can pick the same ones. Callers hold
        _creation_lock until this cluster's components have bound theirs."""
        proc = subprocess.run(
            args,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=self.start_timeout + 60,
            check=False,
        )
        self._record_pids()
        if proc.returncode != 0:
            raise ClusterError(
                f"kwokctl create cluster failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        self.kubeconfig = str(self._find_kubeconfig())
        self._wait_ready()
        self._create_node()

    @classmethod
    def attach(cls, name: str, workdir: str | os.PathLike[str]) -> Cluster:
        """A handle on a cluster started earlier (by another process) with this workdir."""
        cluster = cls(name, workdir=workdir)
        cluster.workdir = Path(workdir)
        cluster._marker = str(cluster.cluster_dir)
        cluster._record_pids()
        if cluster.cluster_dir.exists():
            cluster.kubeconfig = str(cluster._find_kubeconfig())
        return cluster

    def _kwokctl_config(self) -> dict[str, Any]:
        # kwokctl starts every component with its own environment plus the
        # component's extraEnvs (exec.Cmd.Env = os.Environ() + extraEnvs, last one
        # wins). Only kwok-controller gets the exec router first on PATH.
        pki = self.cluster_dir / "pki"  # kwokctl's CA and admin cert (system:masters)
        return {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "componentsPatches": [
                {
                    "name": "kwok-controller",
                    "extraEnvs": [
                        {"name": "PATH", "value": f"{EXEC_ROUTER_DIR}:{SYSTEM_PATH}"},
                    ],
                    # The binary runtime passes --manage-all-nodes=true: kwok would
                    # fake the status of a real kubelet node (testbed/node/) and its
                    # pods. Only nodes annotated like ours are kwok's.
                    "extraArgs": [
                        {"key": "manage-all-nodes", "value": "false", "override": True},
                        {
                            "key": "manage-nodes-with-annotation-selector",
                            "value": "kwok.x-k8s.io/node=fake",
                        },
                    ],
                },
                {
                    # What a real kubelet node needs (testbed/node/). Harmless without
                    # one: kwok's node has only a Hostname address, which exec still
                    # uses. So every cluster, the session's too, can take a real node.
                    "name": "kube-apiserver",
                    "extraArgs": [
                        {"key": "kubelet-client-certificate", "value": str(pki / "admin.crt")},
                        {"key": "kubelet-client-key", "value": str(pki / "admin.key")},
                        # exec/logs dial the node's InternalIP, not its (unresolvable) name
                        {
                            "key": "kubelet-preferred-address-types",
                            "value": "InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP",
                        },
                    ],
                },
            ],
        }

    def _find_kubeconfig(self) -> Path:
        for cand in ("kubeconfig.yaml", "kubeconfig"):
            p = self.cluster_dir / cand
            if p.exists():
                return p
        raise ClusterError(f"no kubeconfig in {self.cluster_dir}")

    def _record_pids(self) -> None:
        pids_dir = self.workdir / "clusters" / self.name / "pids" if self.workdir else None
        if not pids_dir or not pids_dir.is_dir():
            return
        for f in pids_dir.glob("*.pid"):
            try:
                self._component_pids[f.stem] = int(f.read_text().strip())
            except ValueError:
                continue

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            r = self.kubectl("get", "--raw", "/readyz", check=False)
            if r.returncode == 0 and r.stdout.strip() == "ok":
                # Pods need the ServiceAccount admission's "default" SA, which the
                # kube-controller-manager creates: proof that it runs.
                r = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
                if r.returncode == 0:
                    return
            last = (r.stdout + r.stderr).strip()
            time.sleep(0.5)
        raise ClusterError(f"cluster {self.name} not ready after {self.start_timeout}s: {last}")

    def _create_node(self) -> None:
        alloc = {"cpu": "32", "memory": "256Gi", "pods": "110"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "annotations": {
                    "kwok.x-k8s.io/node": "fake",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/role": "agent",
                },
            },
            "spec": {},
            "status": {"allocatable": alloc, "capacity": alloc},
        }
        self.apply(node)
        self.kubectl("wait", "--for=condition=Ready", f"node/{self.node_name}", "--timeout=60s")

    def pids(self) -> dict[str, int]:
        """Component name -> pid, as recorded from kwokctl's pid files."""
        self._record_pids()
        return dict(self._component_pids)

    def processes(self) -> list[int]:
        """Live processes belonging to this cluster.

        Those kwokctl recorded, plus any process whose command line names this
        cluster's own (unique, per-run) directory.
        """
        found = {p for p in self._component_pids.values() if pid_alive(p)}
        marker = self._marker
        if marker:
            for d in Path("/proc").iterdir():
                if d.name.isdigit() and int(d.name) != os.getpid():
                    pid = int(d.name)
                    if marker in _cmdline(pid) and pid_alive(pid):
                        found.add(pid)
        return sorted(found)

    def stop(self) -> None:
        """Delete the cluster and make sure none of its processes remain."""
        if self.workdir is None:
            return
        self._record_pids()
        try:
            if (self.bin_dir / "kwokctl").exists() and self.cluster_dir.exists():
                r = subprocess.run(
                    [
                        str(self.bin_dir / "kwokctl"),
                        "delete",
                        "cluster",
                        "--name",
                        self.name,
                        # "" is an error here ("empty path"); a file of our own
                        # keeps kwokctl away from ~/.kube/config.
                        "--kubeconfig",
                        str(self.workdir / "unused-kubeconfig.yaml"),
                    ],
                    env=self._env(),
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                if r.returncode != 0:
                    self._log(f"kwokctl delete cluster failed: {r.stdout}{r.stderr}")
        finally:
            leftover = self._wait_gone(10)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not leftover:
                    break
                self._log(f"signalling leftover pids {leftover} with {sig.name}")
                for pid in leftover:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                leftover = self._wait_gone(10)
            if leftover:
                raise ClusterError(f"processes of cluster {self.name} remain: {leftover}")
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self.kubeconfig = None

    def _wait_gone(self, seconds: float) -> list[int]:
        deadline = time.monotonic() + seconds
        while True:
            left = self.processes()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    # --------------------------------------------------------------- kubectl
    def kubectl(
        self,
        *args: str,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 120,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        """Run the built kubectl against this cluster; raises on failure if check."""
        if self.kubeconfig is None:
            raise ClusterError("cluster not started")
        if isinstance(input, str) and not text:
            input = input.encode()
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args]
        r = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            check=False,
            env={**os.environ, "PATH": f"{self.bin_dir}:{os.environ.get('PATH', SYSTEM_PATH)}"},
        )
        if check and r.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            )
        return r

    def wait_garbage_collector(self, sample: dict[str, Any], timeout: float = 120) -> float:
        """Wait until the garbage collector cascades deletes from ``sample``'s kind.

        kube-controller-manager's garbage collector re-reads API discovery only every
        30 s (hard-coded), so for a CRD created after the cluster started, dependents
        of its objects are deleted only after that (41 s measured). ``sample`` is a
        valid object of the new kind (its name is replaced); this creates it plus an
        owned ConfigMap, deletes it and waits for the ConfigMap to go. Returns the
        seconds waited.
        """
        obj = yaml.safe_load(yaml.safe_dump(sample))
        meta = obj.setdefault("metadata", {})
        meta["name"] = f"gc-probe-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        ns = meta.get("namespace")
        ns_args = ["-n", ns] if ns else []
        self.apply(obj)
        uid = self.get(obj["kind"], meta["name"], ns)["metadata"]["uid"]
        cm_meta: dict[str, Any] = {
            "name": meta["name"],
            "namespace": ns or "default",
            "ownerReferences": [
                {
                    "apiVersion": obj["apiVersion"],
                    "kind": obj["kind"],
                    "name": meta["name"],
                    "uid": uid,
                }
            ],
        }
        self.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": cm_meta})
        start = time.monotonic()
        self.kubectl("delete", obj["kind"], meta["name"], *ns_args)
        while (
            self.kubectl(
                "get", "configmap", meta["name"], "-n", cm_meta["namespace"], check=False
            ).returncode
            == 0
        ):
            if time.monotonic() - start > timeout:
                raise ClusterError(f"garbage collector ignores {obj['kind']} after {timeout}s")
            time.sleep(0.5)
        return time.monotonic() - start

    # ------------------------------------------------------------- exec pods
    def add_exec_pod(
        self,
        namespace: str,
        name: str,
        container: str,
        labels: dict[str, str] | None = None,
        *,
        image: str = "localhost/asterisk:22",
        timeout: float = 60,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create a simulated Pod whose ``kubectl exec`` runs in podman ``container``.

        The pod is bound to the kwok node (no scheduler involved) and has one
        container named ``asterisk``; its kwok Exec (same name) sets
        TESTBED_CONTAINER for the exec router and is owned by the pod, so the
        garbage collector removes it with the pod. Returns the Ready pod.
        """
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(labels or {}),
                "annotations": dict(annotations or {}),
            },
            "spec": {
                "nodeName": self.node_name,
                "containers": [{"name": EXEC_CONTAINER_NAME, "image": image}],
                "tolerations": [{"operator": "Exists"}],
            },
        }
        self.apply(pod)
        uid = self.get("pod", name, namespace)["metadata"]["uid"]
        exec_obj = {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Exec",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}],
            },
            "spec": {
                "execs": [
                    {
                        "containers": [EXEC_CONTAINER_NAME],
                        "local": {
                            "workDir": "/",
                            "envs": [{"name": "TESTBED_CONTAINER", "value": container}],
                        },
                    }
                ]
            },
        }
        self.apply(exec_obj)
        self.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            f"pod/{name}",
            f"--timeout={int(timeout)}s",
            timeout=timeout + 30,
        )
        # kwok-controller learns about the new Exec through a watch: until then
        # exec answers 'no exec found for container'. `true` is routed too, so
        # this also proves the podman container answers.
        deadline = time.monotonic() + timeout
        while True:
            r = self.kubectl(
                "exec", "-n", namespace, name, "-c", EXEC_CONTAINER_NAME, "--", "true",
                check=False,
            )  # fmt: skip
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"exec into pod {namespace}/{name} does not work: {r.stderr}")
            time.sleep(0.2)
        return self.get("pod", name, namespace)

    def delete_exec_pod(self, namespace: str, name: str, *, wait: bool = True) -> None:
        """Delete the pod (its Exec goes with it) and wait until both are gone."""
        self.kubectl(
            "delete",
            "pod",
            name,
            "-n",
            namespace,
            "--ignore-not-found",
            "--grace-period=0",
            "--force",
            f"--wait={'true' if wait else 'false'}",
        )
        self.kubectl(
            "delete",
            "exec.kwok.x-k8s.io",
            name,
            "-n",
            namespace,
            "--ignore-not-found",
            f"--wait={'true' if wait else 'false'}",
        )


if __name__ == "__main__":
    # python -m testbed.cluster [seconds]: bring a cluster up, print its kubeconfig,
    # keep it for the given time (default: until Ctrl-C), tear it down.
    hold = float(sys.argv[1]) if len(sys.argv) > 1 else None
    with Cluster(verbose=True) as c:
        print(f"KUBECONFIG={c.kubeconfig}", flush=True)
        print(c.kubectl("get", "nodes", "-o", "wide").stdout, flush=True)
        try:
            if hold is None:
                signal.pause()
            else:
                time.sleep(hold)
        except KeyboardInterrupt:
            pass


class ExistingCluster(KubectlHelpers):
    """A cluster someone else runs (kind in CI, E2E_KUBECONFIG): the surface tests use."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["kubectl", "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def stop(self) -> None:
        pass
