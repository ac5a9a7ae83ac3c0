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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from testbed.cluster import TESTBED_DIR, Cluster, cache_dir, pid_alive

NODE_NAME = "trunkop-real-node"
LABEL = "trunkop.dev/real-node"  # label and NoSchedule taint: tests opt in explicitly
KUBELET_PORT = 10250
POD_SUBNET = "10.244.0.0/24"  # podman's default network is 10.88.0.0/16
BRIDGE = "trunkop-cni0"
CNI_NETWORK = "trunkop-node"
CTR_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
SOURCE_LABEL = "trunkop.dev/source"  # containerd image label: what it was imported from
PAUSE_SOURCE = TESTBED_DIR / "node" / "pause.c"
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"

# Set by kubelet (setupKernelTunables, whatever the config says) or by the CNI bridge
# plugin (forwarding, as the pods' gateway).
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
)
# Paths kubelet, containerd or CNI use whatever we configure. Deepest first.
FIXED_PATHS = (
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/opt/containerd",
    "/run/netns",
)
# In these, every entry that appears while the node runs is the node's.
KUBELET_OWNED = ("/var/lib/kubelet/device-plugins", "/var/lib/kubelet", "/var/log/containers",
                 "/var/log/pods")  # fmt: skip
# Only kubelet's: our CNI config adds no iptables rules (no ipMasq, no portmap), and CNI-*
# chains may be podman's (its CNI backend) and in use.
CHAIN_PREFIXES = ("KUBE-",)
FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
IPTABLES_NFT_TABLES = {f"{fam} {t}" for fam in ("ip", "ip6") for t in IPTABLES_TABLES}


class NodeError(RuntimeError):
    pass


# ------------------------------------------------------------------ host inspection helpers


def _run(
    cmd: list[str],
    *,
    check: bool = True,
    timeout: float = 120,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and r.returncode != 0:
        raise NodeError(f"{shlex.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount in our mount namespace, in mount order."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        out.append((_unescape(left.split()[4]), right.split()[0] if right else ""))
    return out


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def mounts_under(roots: Iterable[str]) -> list[str]:
    roots = [r for r in roots if r]
    return [mp for mp, _ in _mountinfo() if _under(mp, roots)]


def cgroup_mounts() -> list[str]:
    return [mp for mp, fstype in _mountinfo() if fstype in ("cgroup", "cgroup2")]


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    out = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            out[name] = _sysctl_path(name).read_text().strip()
    return out


def iptables_chains() -> dict[str, list[str]]:
    """'iptables filter' -> user-defined chains (listing creates nothing, also with nft)."""
    out: dict[str, list[str]] = {}
    for binary in ("iptables", "ip6tables"):
        if shutil.which(binary) is None:
            continue
        for table in IPTABLES_TABLES:
            r = _run([binary, "-w", "5", "-t", table, "-S"], check=False, timeout=30)
            if r.returncode == 0:
                out[f"{binary} {table}"] = [
                    line.split()[1] for line in r.stdout.splitlines() if line.startswith("-N ")
                ]
    return out


def nft_tables() -> list[str]:
    if shutil.which("nft") is None:
        return []
    r = _run(["nft", "list", "tables"], check=False, timeout=30)
    return [
        line[len("table ") :].strip() for line in r.stdout.splitlines() if line.startswith("table ")
    ]


def netns_names() -> list[str]:
    d = Path("/run/netns")
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def host_address() -> str:
    """The host's own IPv4 address (the default route's interface): the node's InternalIP,
    and the address pods use to reach the API server."""
    r = _run(["ip", "-4", "-o", "route", "show", "default"], check=False)
    words = r.stdout.split()
    devs = [words[words.index("dev") + 1]] if "dev" in words else []
    for dev_args in ([*(["dev", devs[0]] if devs else [])], []):
        out = _run(["ip", "-4", "-o", "addr", "show", *dev_args, "scope", "global"], check=False)
        for line in out.stdout.splitlines():
            parts = line.split()
            if "inet" in parts:
                return parts[parts.index("inet") + 1].split("/")[0]
    raise NodeError("no global IPv4 address on this host")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a TIME_WAIT left by the previous kubelet is not a listener.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _stop_process(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL; reaps our own child."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return
            if proc is None and not pid_alive(pid):
                return
            time.sleep(0.1)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


# --------------------------------------------------------------------------- the record


@dataclass
class HostRecord:
    """What the host looked like before the node started (and the pids it started)."""

    workdir: str
    containerd_root: str
    sysctls: dict[str, str]
    chains: dict[str, list[str]]
    nft_tables: list[str]
    netns: list[str]
    kubepods_before: list[str]  # cgroup mount points that already had /kubepods
    paths: dict[str, list[str] | None]  # fixed path -> its entries, None if it was absent
    bridge_existed: bool
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def take(cls, workdir: Path, containerd_root: Path) -> HostRecord:
        paths: dict[str, list[str] | None] = {}
        for p in FIXED_PATHS:
            d = Path(p)
            paths[p] = sorted(e.name for e in d.iterdir()) if d.is_dir() else None
        return cls(
            workdir=str(workdir),
            containerd_root=str(containerd_root),
            sysctls=read_sysctls(),
            chains=iptables_chains(),
            nft_tables=nft_tables(),
            netns=netns_names(),
            kubepods_before=[m for m in cgroup_mounts() if Path(m, "kubepods").exists()],
            paths=paths,
            bridge_existed=Path("/sys/class/net", BRIDGE).exists(),
        )

    def our_roots(self) -> list[str]:
        """Directories only this node writes to: every mount below them is ours."""
        roots = [self.workdir, self.containerd_root]
        roots += [p for p, entries in self.paths.items() if entries is None]
        return roots

    # ---- what is new since the record (= what the node left) ----
    def new_chains(self) -> dict[str, list[str]]:
        now = iptables_chains()
        out = {}
        for key, chains in now.items():
            new = [
                c for c in chains
                if c not in self.chains.get(key, []) and c.startswith(CHAIN_PREFIXES)
            ]  # fmt: skip
            if new:
                out[key] = new
        return out

    def new_kubepods(self) -> list[Path]:
        return [
            Path(m, "kubepods")
            for m in cgroup_mounts()
            if m not in self.kubepods_before and Path(m, "kubepods").exists()
        ]

    def changed_sysctls(self) -> dict[str, tuple[str, str]]:
        now = read_sysctls()
        changed = {k: (v, now[k]) for k, v in self.sysctls.items() if k in now and now[k] != v}
        if any(k in changed for k in FORWARDING) and self._podman_networking_appeared():
            # podman (netavark) set up bridge networking meanwhile and needs forwarding on:
            # turning it off would break its containers. Forwarding stays as podman wants.
            for k in FORWARDING:
                changed.pop(k, None)
        return changed

    def _podman_networking_appeared(self) -> bool:
        return any(
            c.startswith("NETAVARK") and c not in self.chains.get(key, [])
            for key, chains in iptables_chains().items()
            for c in chains
        )

    def new_paths(self) -> list[str]:
        """Entries of the fixed paths that appeared while the node ran, and are its own."""
        out: list[str] = []
        for p, before in self.paths.items():
            d = Path(p)
            if before is None:
                if d.exists() or d.is_symlink():
                    out.append(p)
            elif not d.is_dir():
                continue
            elif p in KUBELET_OWNED:
                out += [str(e) for e in d.iterdir() if e.name not in before]
            elif p == "/run/netns":  # containerd names its namespaces cni-<uuid>
                out += [
                    str(e)
                    for e in d.iterdir()
                    if e.name not in before and e.name.startswith("cni-")
                ]
            elif p == "/var/lib/cni":  # libcni's cache: <network>-<container id>-<ifname>
                for sub in ("results", "networks"):
                    ours = list(Path(p, sub).glob(f"{CNI_NETWORK}*"))
                    others = [e for e in Path(p, sub).glob("*") if e not in ours]
                    if sub not in before and not others and Path(p, sub).exists():
                        out.append(str(Path(p, sub)))
                    else:
                        out += [str(e) for e in ours]
        return sorted(set(out))

    def leftovers(self) -> list[str]:
        found = [f"process {pid}: {_cmdline(pid)[:100]}" for pid in sorted(_node_pids(self))]
        found += [f"mount {m}" for m in mounts_under(self.our_roots())]
        found += [
            f"netns {n}" for n in netns_names() if n not in self.netns and n.startswith("cni-")
        ]
        if not self.bridge_existed and Path("/sys/class/net", BRIDGE).exists():
            found.append(f"interface {BRIDGE}")
        found += [f"{k} chain {c}" for k, cs in self.new_chains().items() for c in cs]
        found += [f"cgroup {p}" for p in self.new_kubepods()]
        found += [
            f"sysctl {k}={new} (was {old})" for k, (old, new) in self.changed_sysctls().items()
        ]
        found += [f"path {p}" for p in self.new_paths()]
        if Path(self.workdir).exists():
            found.append(f"work dir {self.workdir}")
        return found


def _alive_ours(pid: int, record: HostRecord) -> bool:
    # Recorded pids are only ours while their command line names our work dir (pids recycle).
    return pid_alive(pid) and record.workdir in _cmdline(pid)


# ------------------------------------------------------------------------------ the node


class KubeletNode:
    """containerd + kubelet as a node of ``cluster``. Use as a context manager, or
    call start()/stop(); stop() is idempotent and also undoes a failed start()."""

    def __init__(
        self,
        cluster: Cluster,
        name: str = NODE_NAME,
        *,
        start_timeout: float = 120,
        verbose: bool = False,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.start_timeout = start_timeout
        self.verbose = verbose
        self.home = cache_dir() / "node"  # lock, pause archives, containerd root
        self.containerd_root = self.home / "containerd-root"
        self.workdir: Path | None = None
        self.node_ip = ""
        self.record: HostRecord | None = None
        self.timings: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock_fd: int | None = None
        self._running = False  # between start() and stop(): stop() acts only then
        self.pause_image = ""

    # ------------------------------------------------------------------- paths
    @property
    def socket(self) -> Path:
        assert self.workdir is not None, "node not started"
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def kubelet_log(self) -> Path:
        assert self.workdir is not None, "node not started"
        return self.workdir / "kubelet.log"

    @property
    def containerd_log(self) -> Path:
        assert self.workdir is not None, "node not started"
        return self.workdir / "containerd.log"

    @property
    def _record_file(self) -> Path:
        return self.home / "run.json"

    def _log(self, msg: str) -> None:
        if self.verbose:
            print(f"[testbed node {self.name}] {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------- public API
    def __enter__(self) -> KubeletNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def placement(self) -> dict[str, Any]:
        """Pod spec fields that put a pod on this node (and only there)."""
        return {
            "nodeSelector": {LABEL: "true"},
            "tolerations": [{"key": LABEL, "operator": "Exists", "effect": "NoSchedule"}],
        }

    def api_env(self) -> list[dict[str, str]]:
        """Container env that lets a pod reach the API server through the host's address
        (there is no kube-proxy, so the ``kubernetes`` ClusterIP does not answer)."""
        port = urlparse(self._kubeconfig()["clusters"][0]["cluster"]["server"]).port
        return [
            {"name": "KUBERNETES_SERVICE_HOST", "value": self.node_ip},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(port or 443)},
        ]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            ["ctr", "--address", str(self.socket), "--namespace", CTR_NAMESPACE, *args],
            check=check,
            timeout=timeout,
        )

    def import_image(self, ref: str) -> float:
        """Copy a podman image into containerd (skipped when that image id is there already).
        Returns the seconds spent (0.0 when skipped)."""
        image_id = _run(["podman", "image", "inspect", "--format", "{{.Id}}", ref]).stdout.strip()
        if self._has_image(ref, image_id):
            return 0.0
        start = time.monotonic()
        # A pipe, not a file: the Asterisk image is 316 MB.
        save = subprocess.Popen(
            ["podman", "save", "--format", "docker-archive", ref],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert save.stdout is not None
        try:
            imp = subprocess.run(
                ["ctr", "--address", str(self.socket), "--namespace", CTR_NAMESPACE,
                 "images", "import", "-"],
                stdin=save.stdout, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
        finally:
            save.stdout.close()
            save_err = save.communicate(timeout=600)[1]
        if save.returncode != 0 or imp.returncode != 0:
            raise NodeError(
                f"importing {ref} failed: podman save {save.returncode}: "
                f"{save_err.decode(errors='replace').strip()}; ctr import {imp.returncode}: "
                f"{imp.stderr.strip()}"
            )
        self.ctr("images", "label", ref, f"{SOURCE_LABEL}={image_id.replace(':', '-')}")
        return time.monotonic() - start

    def processes(self) -> list[int]:
        """Live processes of this node: kubelet, containerd, shims, containers."""
        if self.record is None:
            return []
        return sorted(_node_pids(self.record))

    def leftovers(self) -> list[str]:
        """Everything of this node still on the host (empty after stop())."""
        return [] if self.record is None else self.record.leftovers()

    # --------------------------------------------------------------- start
    def start(self) -> KubeletNode:
        if self._running:
            raise NodeError(f"node {self.name} already runs")
        if os.geteuid() != 0:
            raise NodeError("a real kubelet node needs root")
        if self.cluster.kubeconfig is None or self.cluster.workdir is None:
            raise NodeError("start the Cluster first")
        kubelet = self.cluster.bin_dir / "kubelet"
        for tool in ("containerd", "containerd-shim-runc-v2", "ctr", "podman", "gcc", "openssl"):
            if shutil.which(tool) is None:
                raise NodeError(f"{tool} is missing: run `make deps`")
        for path in (RUNC, f"{CNI_BIN_DIR}/bridge", f"{CNI_BIN_DIR}/host-local", str(kubelet)):
            if not Path(path).exists():
                raise NodeError(f"{path} is missing: run `make deps` and testbed/build-binaries.sh")
        self.home.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        self._running = True
        try:
            self._undo_stale_run()
            if not port_free(KUBELET_PORT):
                raise NodeError(
                    f"port {KUBELET_PORT} is taken: another kubelet (or something else) runs on "
                    "this machine; only one real node at a time"
                )
            t0 = time.monotonic()
            self.timings = {}
            self.node_ip = host_address()
            self.workdir = Path(tempfile.mkdtemp(prefix="trunkop-node-"))
            self.containerd_root.mkdir(parents=True, exist_ok=True)
            self.record = HostRecord.take(self.workdir, self.containerd_root)
            self._save_record()
            self.pause_image, pause_archive, pause_key = self._ensure_pause_archive()
            self._write_files()
            self._start_containerd()
            t1 = time.monotonic()
            self._import_archive(pause_archive, self.pause_image, pause_key)
            self.timings["pause import"] = time.monotonic() - t1
            self._start_kubelet(kubelet)
            self._wait_ready()
            self.timings["start"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def _acquire_lock(self) -> None:
        fd = os.open(self.home / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise NodeError(
                f"another real node runs on this machine (pid {holder or '?'}, lock "
                f"{self.home / 'lock'}); only one at a time"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd  # children do not inherit it (close_fds), so it dies with us

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _save_record(self) -> None:
        assert self.record is not None
        tmp = self._record_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.record), indent=1))
        tmp.replace(self._record_file)

    def _undo_stale_run(self) -> None:
        """A previous run died without stop(): undo its host changes with its record."""
        if not self._record_file.exists():
            return
        try:
            stale = HostRecord(**json.loads(self._record_file.read_text()))
        except (ValueError, TypeError) as e:
            self._log(f"ignoring unreadable {self._record_file}: {e}")
            self._record_file.unlink()
            return
        self._log(f"undoing the host changes of a previous run ({stale.workdir})")
        _undo(stale, self._log)
        left = stale.leftovers()
        if left:
            raise NodeError(f"a previous real node left things that could not be undone: {left}")
        self._record_file.unlink()

    def _ensure_pause_archive(self) -> tuple[str, Path, str]:
        """The pause image as a docker-archive in the cache, keyed by pause.c's hash."""
        containerfile = 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'
        digest = hashlib.sha256(PAUSE_SOURCE.read_bytes() + containerfile.encode()).hexdigest()[:12]
        ref = f"localhost/trunkop-pause:{digest}"
        archive = self.home / f"pause-{digest}.tar"
        if archive.exists():
            return ref, archive, f"pause-{digest}"
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as d:
            _run(["gcc", "-static", "-O2", "-Wall", "-o", f"{d}/pause", str(PAUSE_SOURCE)])
            Path(d, "Containerfile").write_text(containerfile)
            _run(["podman", "build", "--quiet", "--tag", ref, d])
            try:
                _run(["podman", "save", "--format", "docker-archive", "-o", f"{archive}.tmp", ref])
            finally:
                # The archive is the cache; the podman copy would only be clutter.
                _run(["podman", "rmi", ref], check=False)
        Path(f"{archive}.tmp").replace(archive)
        self.timings["pause build"] = time.monotonic() - start
        return ref, archive, f"pause-{digest}"

    def _write_files(self) -> None:
        assert self.workdir is not None
        w = self.workdir
        for d in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "kubelet-pki", "pod-logs",
                  "volume-plugins", "pki"):  # fmt: skip
            (w / d).mkdir(parents=True, exist_ok=True)
        # containerd: everything in our own directories, restrict_oom_score_adj because this
        # VM lacks CAP_SYS_RESOURCE (every sandbox fails with "can't get final child's PID
        # from pipe: EOF" without it), netns mounts under our state dir instead of /run/netns.
        state = w / "containerd" / "state"
        (w / "containerd" / "config.toml").write_text(
            f"""version = 2
root = "{self.containerd_root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{self.containerd_root}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{self.pause_image}"
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
        # A bridge of our own (podman reads /etc/cni/net.d, we do not); no ipMasq, so the
        # plugin adds no iptables rules; IPAM state in our directory, not /var/lib/cni.
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

        # Client cert of the node, signed by the CA kwokctl generated.
        pki = self.cluster.cluster_dir / "pki"
        ca_crt, ca_key = pki / "ca.crt", pki / "ca.key"
        if not ca_key.exists():
            raise NodeError(f"no cluster CA key at {ca_key}")
        key, csr, crt = w / "pki" / "node.key", w / "pki" / "node.csr", w / "pki" / "node.crt"
        ext = w / "pki" / "node.ext"
        ext.write_text(
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
        )
        _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
              "-nodes", "-keyout", str(key), "-out", str(csr),
              "-subj", f"/O=system:nodes/CN=system:node:{self.name}"])  # fmt: skip
        _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
              "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "30",
              "-sha256", "-extfile", str(ext), "-out", str(crt)])  # fmt: skip
        server = self._kubeconfig()["clusters"][0]["cluster"]["server"]
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "c", "cluster": {"server": server, "certificate-authority": str(ca_crt)}}
            ],
            "users": [
                {"name": "u", "user": {"client-certificate": str(crt), "client-key": str(key)}}
            ],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        }
        (w / "kubelet.kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzPort": 0,  # one fixed port (10250) is enough
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,  # 1.35+ refuses cgroup v1 otherwise; this VM is v1 hybrid
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
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

    def _kubeconfig(self) -> dict[str, Any]:
        assert self.cluster.kubeconfig is not None
        loaded: dict[str, Any] = yaml.safe_load(Path(self.cluster.kubeconfig).read_text())
        return loaded

    def _spawn(self, name: str, argv: list[str], log: Path) -> None:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C reaches pytest, which then stops us in order.
                start_new_session=True,
                env={
                    **os.environ,
                    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                },
            )
        self._procs[name] = proc
        assert self.record is not None
        self.record.pids[name] = proc.pid
        self._save_record()
        self._log(f"started {name} (pid {proc.pid}): {shlex.join(argv)}")

    def _start_containerd(self) -> None:
        assert self.workdir is not None
        start = time.monotonic()
        self._spawn(
            "containerd",
            ["containerd", "--config", str(self.workdir / "containerd" / "config.toml")],
            self.containerd_log,
        )
        while True:
            if self._procs["containerd"].poll() is not None:
                raise NodeError(f"containerd exited:\n{self._tail(self.containerd_log)}")
            if (
                self.socket.exists()
                and self.ctr("version", check=False, timeout=10).returncode == 0
            ):
                break
            if time.monotonic() - start > 60:
                raise NodeError(f"containerd not answering:\n{self._tail(self.containerd_log)}")
            time.sleep(0.2)
        self.timings["containerd start"] = time.monotonic() - start

    def _has_image(self, ref: str, key: str) -> bool:
        r = self.ctr("images", "ls", f"name=={ref}", check=False)
        return f"{SOURCE_LABEL}={key.replace(':', '-')}" in r.stdout

    def _import_archive(self, archive: Path, ref: str, key: str) -> None:
        if self._has_image(ref, key):
            return
        self.ctr("images", "import", str(archive))
        self.ctr("images", "label", ref, f"{SOURCE_LABEL}={key}")

    def _start_kubelet(self, kubelet: Path) -> None:
        assert self.workdir is not None
        w = self.workdir
        self._spawn(
            "kubelet",
            [
                str(kubelet),
                f"--config={w / 'kubelet.yaml'}",
                f"--kubeconfig={w / 'kubelet.kubeconfig'}",
                f"--root-dir={w / 'kubelet'}",
                f"--cert-dir={w / 'kubelet-pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                f"--node-labels={LABEL}=true",
                "--v=2",
            ],
            self.kubelet_log,
        )

    def _wait_ready(self) -> None:
        start = time.monotonic()
        jsonpath = '{.status.conditions[?(@.type=="Ready")].status}'
        while True:
            if self._procs["kubelet"].poll() is not None:
                raise NodeError(f"kubelet exited:\n{self._tail(self.kubelet_log)}")
            r = self.cluster.kubectl(
                "get", "node", self.name, "-o", f"jsonpath={jsonpath}", check=False
            )
            if r.returncode == 0 and r.stdout.strip() == "True":
                break
            if time.monotonic() - start > self.start_timeout:
                raise NodeError(
                    f"node {self.name} not Ready after {self.start_timeout} s:\n"
                    f"{self._tail(self.kubelet_log)}"
                )
            time.sleep(0.3)
        self.timings["kubelet ready"] = time.monotonic() - start

    def _tail(self, path: Path, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        return ""

    # ---------------------------------------------------------------- stop
    def stop(self) -> None:
        """Stop kubelet and containerd by pid, then undo every host change of this run.

        Idempotent; a no-op unless start() ran (a later node may own the host by then)."""
        if not self._running:
            return
        try:
            if self.record is not None:
                kubelet = self._procs.get("kubelet")
                if kubelet is not None and kubelet.poll() is None and self.cluster.kubeconfig:
                    self._drain()
                for name in ("kubelet", "containerd"):
                    proc = self._procs.get(name)
                    if name == "containerd" and proc is not None and proc.poll() is None:
                        self._remove_containers()
                    if proc is not None:
                        _stop_process(proc.pid, proc, timeout=20)
                self._procs.clear()
                _undo(self.record, self._log)
                if self.cluster.kubeconfig is not None:
                    self.cluster.kubectl(
                        "delete", "node", self.name, "--ignore-not-found", "--wait=false",
                        check=False,
                    )  # fmt: skip
                left = self.record.leftovers()
                if left:
                    raise NodeError(f"real node {self.name} left: {left}")
                self._record_file.unlink(missing_ok=True)
        finally:
            self._running = False
            self._release_lock()
            self.workdir = None

    # ------------------------------------------------- detached (make demo)
    def detach(self) -> int:
        """Leave the started node running after this process exits (``make demo``).

        A ``sleep`` child inherits the lock, so another start() (a test run) refuses instead
        of undoing this node as a dead run. Returns its pid, for stop_detached()."""
        if not self._running or self._lock_fd is None:
            raise NodeError(f"node {self.name} is not started")
        holder = subprocess.Popen(
            ["sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(self._lock_fd,),
            start_new_session=True,
        )
        # What another start() reports as the lock's holder.
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{holder.pid}, make demo; make demo-down stops it\n".encode(), 0)
        os.close(self._lock_fd)  # the holder's copy of the descriptor keeps the lock
        self._lock_fd = None
        self._procs.clear()
        self._running = False  # stop() is a no-op from here; stop_detached() is the way
        return holder.pid

    def stop_detached(self, holder_pid: int) -> None:
        """Stop, from another process, a node that detach() left running: the kubelet tears
        its pods down, the lock holder ends, kubelet and containerd stop by their recorded
        pids, and the saved record undoes the host changes (as start() does for a dead run)."""
        record = self._saved_record()
        if record is not None and self.cluster.kubeconfig is not None:
            kubelet = record.pids.get("kubelet")
            if kubelet and _alive_ours(kubelet, record):
                self._drain()
        if pid_alive(holder_pid) and _cmdline(holder_pid).startswith("sleep infinity"):
            _stop_process(holder_pid, None, timeout=5)
        self._acquire_lock()
        self._running = True
        try:
            if record is not None:
                self.workdir = Path(record.workdir)
                for name in ("kubelet", "containerd"):
                    pid = record.pids.get(name)
                    if pid and _alive_ours(pid, record):
                        if name == "containerd":
                            self._remove_containers()
                        _stop_process(pid, None, timeout=20)
            self._undo_stale_run()
            if self.cluster.kubeconfig is not None:
                self.cluster.kubectl(
                    "delete", "node", self.name, "--ignore-not-found", "--wait=false",
                    check=False,
                )  # fmt: skip
        finally:
            self._running = False
            self._release_lock()
            self.workdir = None

    def _saved_record(self) -> HostRecord | None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            return HostRecord(**json.loads(self._record_file.read_text()))
        return None

    def _drain(self) -> None:
        """Let the kubelet tear its pods down (CNI DEL, unmounts, cgroups) before it stops."""
        self.cluster.kubectl("cordon", self.name, check=False)
        selector = f"spec.nodeName={self.name}"
        self.cluster.kubectl(
            "delete", "pods", "-A", "--field-selector", selector, "--grace-period=1",
            "--wait=false", check=False,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = self.cluster.kubectl(
                "get", "pods", "-A", "--field-selector", selector, "-o", "name", check=False
            )
            if r.returncode != 0 or not r.stdout.strip():
                return
            time.sleep(0.5)
        self._log(f"pods still on the node after 60 s: {r.stdout.split()}")

    def _remove_containers(self) -> None:
        """Whatever the kubelet did not tear down: kill its tasks, delete the containers."""
        tasks = self.ctr("tasks", "ls", "-q", check=False, timeout=30).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=30)
        for task in tasks:
            for _ in range(50):
                if self.ctr("tasks", "delete", task, check=False, timeout=30).returncode == 0:
                    break
                time.sleep(0.1)
        containers = self.ctr("containers", "ls", "-q", check=False, timeout=30).stdout.split()
        for c in containers:
            self.ctr("containers", "delete", c, check=False, timeout=30)


def _node_pids(record: HostRecord) -> set[int]:
    """Processes of the node: the recorded ones, shims (their command line names our socket,
    which lives in the work dir) and everything in the /kubepods cgroups we created."""
    pids = {pid for pid in record.pids.values() if _alive_ours(pid, record)}
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != me and record.workdir in _cmdline(int(d.name)):
            pids.add(int(d.name))
    for kubepods in record.new_kubepods():
        for procs in kubepods.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return {p for p in pids if pid_alive(p)}


def _undo(record: HostRecord, log: Any) -> None:
    """Undo everything the node changed on the host, as far as it is new since ``record``.

    Order matters: processes first (they hold mounts and cgroups), then mounts, then the
    directories and cgroups they were in.
    """
    for _ in range(3):
        pids = _node_pids(record)
        if not pids:
            break
        log(f"killing leftover node processes {sorted(pids)}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)

    # Mounts below our own directories (kubelet's rshared root bind, volumes, container
    # rootfs, sandbox shm and netns): lazily, innermost first.
    for _ in range(5):
        mounts = mounts_under(record.our_roots())
        if not mounts:
            break
        for mp in reversed(mounts):
            _run(["umount", "-l", mp], check=False)
    for name in netns_names():
        if name not in record.netns and name.startswith("cni-"):
            path = Path("/run/netns", name)
            _run(["umount", "-l", str(path)], check=False)
            path.unlink(missing_ok=True)

    if not record.bridge_existed and Path("/sys/class/net", BRIDGE).exists():
        _run(["ip", "link", "delete", BRIDGE], check=False)

    _undo_iptables(record, log)

    for name, (old, new) in record.changed_sysctls().items():
        log(f"sysctl {name}: {new} -> {old}")
        with contextlib.suppress(OSError):
            _sysctl_path(name).write_text(old)

    for kubepods in record.new_kubepods():
        dirs = sorted((p for p in kubepods.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, kubepods]:
            for _ in range(50):  # a cgroup is busy for a moment after its last task exits
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)

    if not mounts_under(record.our_roots()):
        for p in record.new_paths():
            path = Path(p)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree(record.workdir, ignore_errors=True)
    else:
        # Deleting through a mount could delete what a hostPath volume points at.
        log(f"mounts remain, not deleting directories: {mounts_under(record.our_roots())}")


def _undo_iptables(record: HostRecord, log: Any) -> None:
    for key, chains in record.new_chains().items():
        binary, table = key.split()
        rules = _run([binary, "-w", "5", "-t", table, "-S"], check=False).stdout.splitlines()
        for rule in rules:  # jumps into the new chains first, then the chains
            words = shlex.split(rule)
            if words[:1] == ["-A"] and any(
                words[i] in ("-j", "-g") and words[i + 1] in chains for i in range(len(words) - 1)
            ):
                _run([binary, "-w", "5", "-t", table, "-D", *words[1:]], check=False)
        for chain in chains:
            _run([binary, "-w", "5", "-t", table, "-F", chain], check=False)
        for chain in chains:
            log(f"{binary} -t {table} -X {chain}")
            _run([binary, "-w", "5", "-t", table, "-X", chain], check=False)
    # iptables-nft creates whole nft tables on first use; drop those we caused, if empty.
    for table in nft_tables():
        if table in record.nft_tables or table not in IPTABLES_NFT_TABLES:
            continue
        listing = _run(["nft", "list", "table", *table.split()], check=False).stdout
        rules = [
            line for line in (raw.strip() for raw in listing.splitlines())
            if line and not line.startswith(("table ", "chain ", "type ", "}"))
        ]  # fmt: skip
        if not rules:
            log(f"nft delete table {table}")
            _run(["nft", "delete", "table", *table.split()], check=False)
