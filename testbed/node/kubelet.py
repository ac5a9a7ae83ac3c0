"""``KubeletNode``: containerd and the kubelet as child processes, started, stopped (with the
host changes undone), or detached for ``make demo`` and stopped later from another process."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from testbed.cluster import Cluster, cache_dir, pid_alive
from testbed.node import images
from testbed.node.config import CNI_BIN_DIR, KUBELET_PORT, LABEL, RUNC, api_server, write_files
from testbed.node.errors import NodeError
from testbed.node.host import (
    HostRecord,
    alive_and_ours,
    host_address,
    load_record,
    node_pids,
    port_free,
    save_record,
    undo_host_changes,
    undo_stale_run,
)
from testbed.node.lock import NodeLock
from testbed.node.processes import cmdline
from testbed.operator_process import stop_pid

NODE_NAME = "trunkop-real-node"


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
        self._lock = NodeLock(self.home / "lock")
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
        port = urlparse(api_server(self.cluster)).port
        return [
            {"name": "KUBERNETES_SERVICE_HOST", "value": self.node_ip},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(port or 443)},
        ]

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return images.ctr(self.socket, *args, check=check, timeout=timeout)

    def container_pid(self, container_id: str) -> int:
        """The host PID of a running container (``containerd://<id>`` from a pod's status)."""
        wanted = container_id.removeprefix("containerd://")
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            task, pid, *_ = line.split()
            if task == wanted:
                return int(pid)
        raise NodeError(f"no running task {wanted} on {self.name}")

    @contextlib.contextmanager
    def cut_off(self, container_id: str, ip: str, port: int) -> Iterator[None]:
        """A network partition of one pod: while the block runs, TCP from the pod to ip:port
        is refused (reset). An iptables rule in the pod's own network namespace, entered
        through a handle held meanwhile (the container may exit and restart in the same
        namespace), and deleted afterwards, also when the block fails. The host's rules are
        not touched; the namespace goes with the pod if it is deleted first."""
        handle = os.open(f"/proc/{self.container_pid(container_id)}/ns/net", os.O_RDONLY)
        enter = ["nsenter", f"--net=/proc/{os.getpid()}/fd/{handle}", "iptables"]
        rule = ["OUTPUT", "-p", "tcp", "-d", ip, "--dport", str(port),
                "-j", "REJECT", "--reject-with", "tcp-reset"]  # fmt: skip
        try:
            subprocess.run([*enter, "-I", *rule], check=True, capture_output=True, timeout=30)
            yield
        finally:
            subprocess.run([*enter, "-D", *rule], check=False, capture_output=True, timeout=30)
            os.close(handle)

    def import_image(self, ref: str) -> float:
        """Copy a podman image into containerd (skipped when that image id is there already).
        Returns the seconds spent (0.0 when skipped)."""
        return images.import_from_podman(self.socket, ref)

    def processes(self) -> list[int]:
        """Live processes of this node: kubelet, containerd, shims, containers."""
        if self.record is None:
            return []
        return sorted(node_pids(self.record))

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
        self._lock.acquire()
        self._running = True
        try:
            undo_stale_run(self._record_file, self._log)
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
            self.pause_image, pause_archive, pause_key = images.ensure_pause_archive(
                self.home, self.timings
            )
            write_files(
                self.workdir,
                cluster=self.cluster,
                name=self.name,
                node_ip=self.node_ip,
                containerd_root=self.containerd_root,
                socket=self.socket,
                pause_image=self.pause_image,
            )
            self._start_containerd()
            t1 = time.monotonic()
            images.import_archive(self.socket, pause_archive, self.pause_image, pause_key)
            self.timings["pause import"] = time.monotonic() - t1
            self._start_kubelet(kubelet)
            self._wait_ready()
            self.timings["start"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def _save_record(self) -> None:
        assert self.record is not None
        save_record(self.record, self._record_file)

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
                        stop_pid(proc.pid, proc, timeout=20)
                self._procs.clear()
                undo_host_changes(self.record, self._log)
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
            self._lock.release()
            self.workdir = None

    # ------------------------------------------------- detached (make demo)
    def detach(self) -> int:
        """Leave the started node running after this process exits (``make demo``).

        A ``sleep`` child inherits the lock, so another start() (a test run) refuses instead
        of undoing this node as a dead run. Returns its pid, for stop_detached()."""
        if not self._running or not self._lock.held:
            raise NodeError(f"node {self.name} is not started")
        holder_pid = self._lock.hand_to_sleeper()
        self._procs.clear()
        self._running = False  # stop() is a no-op from here; stop_detached() is the way
        return holder_pid

    def stop_detached(self, holder_pid: int) -> None:
        """Stop, from another process, a node that detach() left running: the kubelet tears
        its pods down, the lock holder ends, kubelet and containerd stop by their recorded
        pids, and the saved record undoes the host changes (as start() does for a dead run)."""
        record = load_record(self._record_file)
        if record is not None and self.cluster.kubeconfig is not None:
            kubelet = record.pids.get("kubelet")
            if kubelet and alive_and_ours(kubelet, record):
                self._drain()
        if pid_alive(holder_pid) and cmdline(holder_pid).startswith("sleep infinity"):
            stop_pid(holder_pid, timeout=5)
        self._lock.acquire()
        self._running = True
        try:
            if record is not None:
                self.workdir = Path(record.workdir)
                for name in ("kubelet", "containerd"):
                    pid = record.pids.get(name)
                    if pid and alive_and_ours(pid, record):
                        if name == "containerd":
                            self._remove_containers()
                        stop_pid(pid, timeout=20)
            undo_stale_run(self._record_file, self._log)
            if self.cluster.kubeconfig is not None:
                self.cluster.kubectl(
                    "delete", "node", self.name, "--ignore-not-found", "--wait=false",
                    check=False,
                )  # fmt: skip
        finally:
            self._running = False
            self._lock.release()
            self.workdir = None

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
