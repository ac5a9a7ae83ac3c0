"""The bench's local platform: cluster, operator process, Asterisk pods, status watching.

Everything a `Rig` starts is registered in its ExitStack and stopped by its own handle (the
operator by its pid, pods by name, containers by their unique names, the cluster by its
object) when the rig closes, whether the measurement finished or failed.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testbed.asterisk import AsteriskContainer  # noqa: E402
from testbed.cluster import Cluster  # noqa: E402
from trunk_operator.asterisk import parse_endpoints  # noqa: E402
from trunk_operator.models import GROUP, VERSION  # noqa: E402

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
    """VmHWM / VmRSS of a process in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "VmPeak"):
            out[key] = int(value.split()[0])
    return out


class Operator:
    """`python -m trunk_operator.cli run --standalone` as in tests/conftest.py, plus a
    liveness endpoint whose probe returns the controller's stats (plans, reloads)."""

    def __init__(self, kubeconfig: str, log_path: Path, observe_interval: float) -> None:
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.observe_interval = observe_interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.started = 0.0
        self._last_stats = 0.0

    def start(self) -> float:
        """Start; return seconds until the operator answers its liveness probe."""
        self.port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "TRUNKOP_OBSERVE_INTERVAL": str(self.observe_interval),
            "PYTHONUNBUFFERED": "1",
        }
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

    def endpoint_count(self) -> int:
        text = self.container.rx("pjsip show endpoints", timeout=60, check=False)
        return len(parse_endpoints(text))


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

    def __enter__(self) -> Rig:
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
        for name in (TRUNKS, SEGMENTS):
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                f"crd/{name}.{GROUP}",
                "--timeout=60s",
            )
        api = config.new_client_from_config(config_file=cluster.kubeconfig)
        api.configuration.connection_pool_maxsize = 32
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace))
        )
        log(f"[{self.label}] cluster {cluster.name} up in {time.monotonic() - started:.1f} s")

    def start_operator(self) -> Operator:
        assert self.cluster and self.cluster.kubeconfig
        op = Operator(
            self.cluster.kubeconfig, self.workdir / f"operator-{self.label}.log",
            self.observe_interval,
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
