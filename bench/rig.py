"""The bench's local platform: cluster, operator process, Asterisk pods, status watching.

Everything a `Rig` starts is registered in its ExitStack and stopped by its own handle (the
operator by its pid, pods by name, containers by their unique names, the cluster by its
object) when the rig closes, whether the measurement finished or failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testbed.asterisk import IMAGE as ASTERISK_IMAGE  # noqa: E402
from testbed.asterisk import AsteriskContainer  # noqa: E402
from testbed.asterisk import ensure_image as ensure_asterisk_image  # noqa: E402
from testbed.cluster import Cluster  # noqa: E402
from testbed.node import KubeletNode, NodeError  # noqa: E402
from testbed.release import (  # noqa: E402
    RELEASE,
    SYSTEM_NAMESPACE,
    Release,
    asterisk_objects,
    release_for,
    restricted_namespace,
)
from trunk_operator.core.asterisk_output import parse_endpoints  # noqa: E402
from trunk_operator.core.models import GROUP, VERSION  # noqa: E402

STANDIN_IP = "127.0.0.21"  # nothing needs to answer there: qualify is off
HOST = "bench.pstn.twilio.com"
RELOAD_LINE = "Reloading module 'res_pjsip.so'"
TRUNKS, SEGMENTS = "twiliotrunks", "didsegments"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS (and the rest of parse_proc_status) of a process in KiB."""
    return parse_proc_status(Path(f"/proc/{pid}/status").read_text())


def parse_proc_status(text: str) -> dict[str, int]:
    """VmHWM / VmRSS / VmPeak / RssAnon / RssFile (KiB) from the text of /proc/<pid>/status."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "VmPeak", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


class Operator:
    """`python -m trunk_operator.cli run --standalone` as in tests/conftest.py, plus a
    liveness endpoint whose probe returns the controller's stats (plans, reloads)."""

    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        observe_interval: float,
        source: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.env = dict(env or {})
        self.observe_interval = observe_interval
        self.source = source  # another version's package directory (PYTHONPATH), or this one
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.started = 0.0
        self._last_stats = 0.0

    def start(self) -> float:
        """Start; return seconds until the operator answers its liveness probe."""
        self.port = free_port()
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "TRUNKOP_OBSERVE_INTERVAL": str(self.observe_interval),
            "TRUNKOP_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        out = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trunk_operator.cli",
                "run",
                "--standalone",
                f"--liveness=http://127.0.0.1:{self.port}/healthz",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        self._last_stats = 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                self._get_stats()
                return time.monotonic() - self.started
            time.sleep(0.1)
        raise RuntimeError("operator did not answer its liveness probe in 60 s")

    def _get_stats(self) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.loads(response.read())
        self._last_stats = time.monotonic()
        return dict(data.get("watching") or {})

    def stats(self) -> dict[str, int]:
        """Controller.stats; Kopf caches probe results for 10 s, so wait that out."""
        wait = self._last_stats + 10.2 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return self._get_stats()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)

    def scrape(self) -> tuple[float, int]:
        """Seconds one GET of /metrics takes, and the size of the answer."""
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=60) as response:
            size = len(response.read())
        return time.monotonic() - started, size

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


class AsteriskPod:
    """An Asterisk container plus the exec pod routed into it."""

    def __init__(self, name: str, container: AsteriskContainer) -> None:
        self.name, self.container = name, container

    def logs(self) -> str:
        proc = subprocess.run(
            ["podman", "logs", self.container.name], capture_output=True, text=True, check=False
        )
        return proc.stdout + proc.stderr

    def reloads(self) -> int:
        return self.logs().count(RELOAD_LINE)

    def reload_times(self) -> list[float]:
        """Wall-clock times (epoch seconds) of the PJSIP reloads, from podman's timestamps."""
        proc = subprocess.run(
            ["podman", "logs", "-t", self.container.name],
            capture_output=True,
            text=True,
            check=False,
        )
        times = []
        for line in (proc.stdout + proc.stderr).splitlines():
            if RELOAD_LINE in line:
                stamp = line.split(" ", 1)[0]
                with contextlib.suppress(ValueError):
                    times.append(_parse_rfc3339(stamp))
        return times

    def rx(self, command: str, check: bool = False) -> str:
        """`asterisk -rx command` in the container (as ClusterAsteriskPod.rx)."""
        return self.container.rx(command, timeout=60, check=check)

    def endpoint_count(self) -> int:
        return len(parse_endpoints(self.rx("pjsip show endpoints")))


def _parse_rfc3339(stamp: str) -> float:
    from datetime import datetime

    # podman: 2026-11-27T00:50:06.704123456+00:00 (nanoseconds: cut to micro)
    head, _, rest = stamp.partition(".")
    frac, tz = rest[:9], rest[9:] if len(rest) > 9 else "+00:00"
    digits = "".join(c for c in frac if c.isdigit())[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{head}.{digits}{tz}").timestamp()


class StatusWatch:
    """Watches one plural in a namespace; records when each (name, generation) is first seen
    Ready=True with status.observedGeneration == metadata.generation."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str, plural: str) -> None:
        self.custom, self.namespace, self.plural = custom, namespace, plural
        self.objects: dict[str, dict[str, Any]] = {}
        self.ready_at: dict[tuple[str, int], float] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _record(self, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        gen = meta.get("generation")
        with self.lock:
            self.objects[meta["name"]] = obj
            if is_ready(obj):
                self.ready_at.setdefault((meta["name"], gen), now)

    def _run(self) -> None:
        rv = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    listing = self.custom.list_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, self.plural
                    )
                    now = time.monotonic()
                    for obj in listing["items"]:
                        self._record(obj, now)
                    rv = listing["metadata"]["resourceVersion"]
                w = watch.Watch()
                for event in w.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    self.plural,
                    resource_version=rv,
                    timeout_seconds=30,
                    allow_watch_bookmarks=True,
                ):
                    now = time.monotonic()
                    obj = event["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if event["type"] == "DELETED":
                        with self.lock:
                            self.objects.pop(obj["metadata"]["name"], None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._record(obj, now)
                    if self._stop.is_set():
                        w.stop()
                        break
            except ApiException as error:
                if error.status == 410:
                    rv = None
                else:
                    time.sleep(0.5)
            except Exception:  # connection dropped: resume from rv
                if self._stop.is_set():
                    return
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()

    def wait_ready(
        self, names: Iterable[tuple[str, int]], timeout: float, what: str = ""
    ) -> dict[tuple[str, int], float]:
        """Until every (name, generation) has been seen Ready; returns their times."""
        wanted = set(names)
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = {k: self.ready_at[k] for k in wanted if k in self.ready_at}
            if len(got) == len(wanted):
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what or self.plural}: {len(got)}/{len(wanted)} Ready after {timeout:.0f} s;"
                    f" e.g. {self.sample_not_ready(wanted - set(got))}"
                )
            time.sleep(0.01)

    def count_ready(self, names: Iterable[tuple[str, int]]) -> int:
        with self.lock:
            return sum(1 for k in names if k in self.ready_at)

    def sample_not_ready(self, keys: set[tuple[str, int]]) -> str:
        with self.lock:
            for name, _gen in sorted(keys)[:1]:
                obj = self.objects.get(name)
                if obj is None:
                    return f"{name}: not seen"
                st = obj.get("status") or {}
                ready = ready_condition(obj)
                return (
                    f"{name}: gen {obj['metadata'].get('generation')} observed "
                    f"{st.get('observedGeneration')} Ready={ready.get('status')} "
                    f"{ready.get('reason')}: {ready.get('message', '')[:200]}"
                )
        return "-"

    def conditions(self, name: str) -> dict[str, Any]:
        with self.lock:
            return ready_condition(self.objects.get(name) or {})


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c.get("type") == "Ready":
            return dict(c)
    return {}


def is_ready(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    return ready_condition(obj).get("status") == "True" and st.get("observedGeneration") == obj[
        "metadata"
    ].get("generation")


def trunk_spec(index: int, name: str, secret: str, **extra: Any) -> dict[str, Any]:
    """A trunk that can share pods with others: own accountSid and outbound context."""
    return {
        "terminationHost": HOST,
        "credentials": {"secretName": secret},
        "qualifyFrequencySeconds": 0,
        "inbound": {"accountSid": f"AC{index:032x}"},
        "outbound": {"context": f"to-{name}"},
        **extra,
    }


class Rig:
    """One measurement's platform; use as a context manager."""

    def __init__(self, label: str, workdir: Path, observe_interval: float) -> None:
        self.label = label
        self.workdir = workdir
        self.observe_interval = observe_interval
        self.stack = contextlib.ExitStack()
        self.cluster: Cluster | None = None
        self.operator: Operator | None = None
        self.pods: list[AsteriskPod] = []
        self.namespace = f"bench-{label}"
        self.watches: list[StatusWatch] = []

    # ---- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.operator and self.operator.proc:
            log(f"operator log tail:\n{self.operator.log_tail()}")
        self.stack.close()

    def _start(self) -> None:
        started = time.monotonic()
        cluster = Cluster()
        self.stack.callback(cluster.stop)
        cluster.start()
        self.cluster = cluster
        assert cluster.kubeconfig
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        for name in (TRUNKS, SEGMENTS, "twilioaccounts"):
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                f"crd/{name}.{GROUP}",
                "--timeout=60s",
            )
        self._connect(cluster)
        log(f"[{self.label}] cluster {cluster.name} up in {time.monotonic() - started:.1f} s")

    def _connect(self, cluster: Cluster) -> None:
        """API clients as admin, and the rig's namespace."""
        api = config.new_client_from_config(config_file=cluster.kubeconfig)
        api.configuration.connection_pool_maxsize = 32
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace))
        )

    def start_operator(
        self, source: Path | None = None, env: dict[str, str] | None = None
    ) -> Operator:
        assert self.cluster and self.cluster.kubeconfig
        op = Operator(
            self.cluster.kubeconfig, self.workdir / f"operator-{self.label}.log",
            self.observe_interval, source, env,
        )  # fmt: skip
        self.stack.callback(op.stop)
        took = op.start()
        self.operator = op
        log(f"[{self.label}] operator pid {op.pid} answering after {took:.1f} s")
        return op

    def add_pods(self, count: int, hosts: dict[str, str], first_ip: int = 1) -> list[AsteriskPod]:
        """Start `count` Asterisk containers (127.0.20.N) and their exec pods, in parallel."""
        assert self.cluster
        cluster = self.cluster
        base = len(self.pods)

        def one(i: int) -> AsteriskPod:
            index = base + i
            container = AsteriskContainer(
                f"bench-{self.label}-{index}", f"127.0.20.{first_ip + index}", hosts
            )
            self.stack.callback(container.stop)
            container.start()
            name = f"asterisk-{index}"
            self.stack.callback(lambda: cluster.delete_exec_pod(self.namespace, name, wait=False))
            cluster.add_exec_pod(self.namespace, name, container.name, {"app": "asterisk"})
            return AsteriskPod(name, container)

        with ThreadPoolExecutor(max(1, count)) as pool:
            pods = list(pool.map(one, range(count)))
        self.pods += pods
        return pods

    def watch(self, plural: str = TRUNKS) -> StatusWatch:
        w = StatusWatch(self.custom, self.namespace, plural)
        self.stack.callback(w.stop)
        self.watches.append(w)
        return w

    # ---- objects ----------------------------------------------------------------------

    def create_secret(self, name: str) -> None:
        self.core.create_namespaced_secret(
            self.namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=name),
                string_data={"username": f"{name}-user", "password": uuid.uuid4().hex},
            ),
        )

    def create(self, plural: str, kind: str, name: str, spec: dict[str, Any]) -> int:
        obj = self.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            plural,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "metadata": {"name": name},
                "spec": spec,
            },
        )
        return int(obj["metadata"]["generation"])

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> int:
        obj = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, {"spec": spec}
        )
        return int(obj["metadata"]["generation"])

    def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, plural, name, {"status": status}
        )

    def parallel(self, fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 8) -> list:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, items))


# ---- the operator as users run it (measurement 7) ------------------------------------------

OPERATOR_SELECTOR = "app.kubernetes.io/name=asterisk-trunk-operator"
LIVENESS_PORT = 8080  # the chart's liveness port
BASE_IMAGE = os.environ.get("TRUNKOP_PYTHON_BASE_IMAGE", "localhost/python-base:3.11-bookworm")


def image_size(ref: str) -> int:
    """`podman image inspect --format {{.Size}}`, in bytes."""
    done = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", ref],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout.strip())


def cgroup_memory(pod_uid: str, container_id: str) -> dict[str, int]:
    """A container's memory cgroup, read on the host (kubelet's cgroupfs layout), in bytes:
    usage, working set (usage - inactive file: what kubelet and `kubectl top` report), anon
    (rss) and the peak usage. Empty if the cgroup is not found."""
    cid = container_id.split("://")[-1]
    for root in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")):
        for qos in ("burstable", "besteffort", ""):
            d = root / "kubepods" / qos / f"pod{pod_uid}" / cid
            if not d.is_dir():
                continue
            stat = {}
            for line in (d / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                stat[key] = int(value)
            if (d / "memory.usage_in_bytes").exists():  # cgroup v1
                usage = int((d / "memory.usage_in_bytes").read_text())
                inactive = stat.get("total_inactive_file", 0)
                anon = stat.get("rss", 0)
                peak = int((d / "memory.max_usage_in_bytes").read_text())
            else:  # v2
                usage = int((d / "memory.current").read_text())
                inactive, anon = stat.get("inactive_file", 0), stat.get("anon", 0)
                peak_file = d / "memory.peak"
                peak = int(peak_file.read_text()) if peak_file.exists() else 0
            return {
                "usage": usage,
                "working_set": max(0, usage - inactive),
                "anon": anon,
                "peak": peak,
            }
    return {}


class ClusterAsteriskPod:
    """A pod of examples/asterisk on the real node: its CLI and log through kubectl."""

    def __init__(self, cluster: Cluster, namespace: str, name: str) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name

    def logs(self) -> str:
        out = self.cluster.kubectl(
            "logs", "-n", self.namespace, self.name, "-c", "asterisk", check=False, timeout=60
        )
        return str(out.stdout)

    def reloads(self) -> int:
        return self.logs().count(RELOAD_LINE)

    def rx(self, command: str, check: bool = False) -> str:
        out = self.cluster.kubectl(
            "exec", "-n", self.namespace, self.name, "-c", "asterisk", "--",
            "asterisk", "-rx", command, check=check, timeout=60,
        )  # fmt: skip
        return str(out.stdout)

    def endpoint_count(self) -> int:
        return len(parse_endpoints(self.rx("pjsip show endpoints")))


class InClusterRig(Rig):
    """The operator as users run it (testbed/release.py): a Helm release of charts/ with the
    locally built image on the real kubelet node, Asterisk pods of examples/asterisk there.

    Stopped by their handles when the rig closes, in this order: the Asterisk StatefulSet,
    the release (`helm uninstall`), the real node (`KubeletNode.stop()` drains it and undoes
    its host changes), the cluster. The real node is one per machine: if another run holds
    it, the rig fails at once and says so."""

    def __init__(self, label: str, workdir: Path, observe_interval: float, image: str) -> None:
        super().__init__(label, workdir, observe_interval)
        self.image = image
        self.node: KubeletNode | None = None
        self.release: Release | None = None
        self.imports: dict[str, float] = {}

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.release is not None:
            with contextlib.suppress(Exception):
                log(f"release diagnostics:\n{self.release.diagnostics()}")
        if self.release is not None:
            with contextlib.suppress(Exception):  # the leader's log, beside the host rigs' logs
                (self.workdir / f"{self.label}-operator.log").write_text(
                    self.release.operator_log()
                )
        self.stack.close()

    def _start(self) -> None:
        started = time.monotonic()
        ensure_asterisk_image()
        cluster = Cluster()
        self.stack.callback(cluster.stop)
        cluster.start()
        self.cluster = cluster
        node = KubeletNode(cluster)
        self.stack.callback(node.stop)
        try:
            node.start()
        except NodeError as error:
            raise RuntimeError(
                f"the real kubelet node is not available: {error}. Another run (tests/incluster,"
                " the demo or a bench) holds it: run this again when that has ended"
            ) from error
        self.node = node
        for image in (self.image, ASTERISK_IMAGE):
            self.imports[image] = node.import_image(image)
        self._connect(cluster)
        log(
            f"[{self.label}] cluster {cluster.name} and real node up in"
            f" {time.monotonic() - started:.1f} s (image imports: {self.imports})"
        )

    # ---- the operator ------------------------------------------------------------------

    def install_operator(self, **values: Any) -> dict[str, float]:
        """`helm install --wait` of the chart, timed from the call: seconds until the new pod's
        /healthz answers (polled from the host at the pod's IP), until the pod is Ready, until
        helm returns."""
        assert self.cluster and self.node
        restricted_namespace(self.cluster)
        # One replica: the figures are one operator's (memory, latency, a restart); the leader
        # takeover of the default two replicas is measured by tests/incluster.
        values = {"replicaCount": 1, "leaderElection": {"enabled": False}, **values}
        release = release_for(self.cluster, self.node, self.image, **values)
        self.stack.callback(
            release.helm, "uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait",
            "--timeout", "120s", check=False,
        )  # fmt: skip
        self.release = release
        outcome: list[Any] = []

        def install() -> None:
            try:
                release.install()
                outcome.append(time.monotonic())
            except BaseException as error:
                outcome.append(error)

        started = time.monotonic()
        thread = threading.Thread(target=install, daemon=True)
        thread.start()

        def failed() -> None:
            if outcome and isinstance(outcome[0], BaseException):
                raise outcome[0]

        _, times = self.wait_operator(started, set(), 300, failed)
        thread.join(300)
        failed()
        if not outcome:
            raise TimeoutError("helm install did not return")
        times["helm --wait returned"] = outcome[0] - started
        return times

    def operator_pods(self) -> list[Any]:
        pods = self.core.list_namespaced_pod(SYSTEM_NAMESPACE, label_selector=OPERATOR_SELECTOR)
        return list(pods.items)

    def operator_pod(self) -> Any:
        [pod] = [p for p in self.operator_pods() if not p.metadata.deletion_timestamp]
        return pod

    def wait_operator(
        self,
        started: float,
        old: set[str],
        timeout: float,
        check: Callable[[], None] | None = None,
    ) -> tuple[str, dict[str, float]]:
        """Until an operator pod not in `old` answers /healthz and is Ready (and the `old`
        pods are gone); returns its name and those times, in seconds after `started`."""
        times: dict[str, float] = {}
        deadline = started + timeout
        while time.monotonic() < deadline:
            if check:
                check()
            pods = self.operator_pods()
            now = time.monotonic()
            names = {p.metadata.name for p in pods}
            if old and "old pod gone" not in times and not names & old:
                times["old pod gone"] = now - started
            for pod in pods:
                if pod.metadata.name in old or pod.metadata.deletion_timestamp:
                    continue
                if "healthz answers" not in times and pod.status.pod_ip:
                    with contextlib.suppress(OSError, ValueError):
                        healthz(pod.status.pod_ip, timeout=0.5)
                        times["healthz answers"] = time.monotonic() - started
                ready = any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                )
                if ready and "pod Ready" not in times:
                    times["pod Ready"] = now - started
                if {"healthz answers", "pod Ready"} <= times.keys() and (
                    not old or "old pod gone" in times
                ):
                    return pod.metadata.name, times
            time.sleep(0.1)
        raise TimeoutError(f"no new operator pod Ready after {timeout:.0f} s: {times}")

    def restart_operator(self) -> dict[str, float]:
        """Delete the operator pod (as `kubectl delete pod` does: graceful); seconds until its
        successor answers /healthz, is Ready, and the old pod is gone."""
        name = self.operator_pod().metadata.name
        started = time.monotonic()
        self.core.delete_namespaced_pod(name, SYSTEM_NAMESPACE)
        _, times = self.wait_operator(started, {name}, 300)
        return times

    def operator_memory(self) -> dict[str, int]:
        """VmRSS / VmHWM / VmPeak (KiB) of PID 1 in the operator container, by kubectl exec
        (the image has python but no shell tools)."""
        assert self.cluster
        out = self.cluster.kubectl(
            "exec", "-n", SYSTEM_NAMESPACE, self.operator_pod().metadata.name, "-c", "operator",
            "--", "python", "-c", "print(open('/proc/1/status').read())", timeout=60,
        )  # fmt: skip
        return parse_proc_status(str(out.stdout))

    def operator_cgroup(self) -> dict[str, int]:
        """The operator container's memory cgroup, read on the host (bytes; see cgroup_memory)."""
        pod = self.operator_pod()
        [status] = pod.status.container_statuses
        return cgroup_memory(pod.metadata.uid, status.container_id)

    def operator_stats(self) -> dict[str, int]:
        """Controller.stats from the pod's /healthz (Kopf caches it for up to 10 s)."""
        return healthz(self.operator_pod().status.pod_ip)

    # ---- Asterisk ----------------------------------------------------------------------

    def add_asterisk(
        self, bind_ip: str, hosts: dict[str, str], example: str = "examples/asterisk"
    ) -> ClusterAsteriskPod:
        """examples/asterisk (one replica; or `example`, an overlay of it) in the rig's
        namespace; returns once Asterisk answers in asterisk-0. For examples/asterisk-ari, the
        ARI Secret is created first."""
        assert self.cluster and self.node
        cluster, namespace = self.cluster, self.namespace
        if example == "examples/asterisk-ari":
            cluster.kubectl(
                "create", "secret", "generic", "asterisk-ari", "-n", namespace,
                "--from-literal=username=trunkop",
                f"--from-literal=password={secrets.token_hex(16)}",
            )  # fmt: skip
        objects = asterisk_objects(cluster, self.node, bind_ip, hosts, example)
        self.stack.callback(
            cluster.kubectl, "delete", "statefulset", "asterisk", "-n", namespace,
            "--wait=false", check=False,
        )  # fmt: skip
        cluster.kubectl(
            "apply", "-n", namespace, "-f", "-",
            input="\n---\n".join(yaml.safe_dump(o) for o in objects),
        )  # fmt: skip
        pod = ClusterAsteriskPod(cluster, namespace, "asterisk-0")
        deadline = time.monotonic() + 180
        while "Asterisk" not in pod.rx("core show version"):
            if time.monotonic() > deadline:
                raise TimeoutError("asterisk-0 of examples/asterisk not answering after 180 s")
            time.sleep(1)
        return pod


def healthz(ip: str, timeout: float = 5) -> dict[str, int]:
    """The operator's liveness endpoint at a pod IP (reachable from the host over the node's
    bridge); returns the controller's stats."""
    url = f"http://{ip}:{LIVENESS_PORT}/healthz"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = json.loads(response.read())
    return dict(data.get("watching") or {})


def update_latencies(
    rig: Rig, watch: StatusWatch, name: str, count: int, timeout: float = 60
) -> list[float]:
    """`count` spec changes (codecs) of one trunk, each waited for: seconds to Ready."""
    took = []
    for _ in range(count):
        with watch.lock:
            current = (watch.objects.get(name) or {}).get("spec", {}).get("codecs")
        codecs = ["alaw"] if current == ["ulaw"] else ["ulaw"]  # a change: a new generation
        started = time.monotonic()
        gen = rig.patch_spec(TRUNKS, name, {"codecs": codecs})
        done = watch.wait_ready([(name, gen)], timeout, f"update {name}")
        took.append(done[(name, gen)] - started)
    return took
