"""Helpers the integration tests share (fixtures, builders, waits)."""

from __future__ import annotations

import contextlib
import copy
import re
import socket
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from trunk_operator.core.models import GROUP, VERSION

PASSWORD = "s3cret;pa55"


TRUNK: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "TwilioTrunk",
    "metadata": {"name": "acme"},
    "spec": {"terminationHost": "acme.pstn.twilio.com", "credentials": {"secretName": "acme-sip"}},
}


def with_spec(base: dict[str, Any], **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    doc["spec"].update(spec)
    return doc


def secret(namespace: str, password: str = PASSWORD) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name="acme-sip", namespace=namespace),
        string_data={"username": "acme-user", "password": password},
    )


class Relay:
    """A TCP relay to the API server (TLS passes through it untouched); `drop()` cuts every
    connection it carries, and clients must connect, and authenticate, again."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                downstream, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                downstream.close()
                continue
            downstream.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [downstream, upstream]
            for src, dst in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> int:
        """Cut every open connection; how many there were."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        open_ = [s for s in sockets if s.fileno() != -1]
        for sock in open_:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        return len(open_) // 2

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self.listener.close()
        self.drop()


def admin_cluster_entry(kubeconfig: str) -> dict[str, Any]:
    """The current context's cluster (server, CA) from the admin kubeconfig, paths absolute."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    contexts = {c["name"]: c["context"] for c in config["contexts"]}
    wanted = contexts[config["current-context"]]["cluster"]
    entry = dict(next(c["cluster"] for c in config["clusters"] if c["name"] == wanted))
    if ca := entry.get("certificate-authority"):
        entry["certificate-authority"] = str(Path(kubeconfig).parent / ca)  # no-op if absolute
    return entry


def trunk(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "twiliotrunks", name)
    return cast(dict[str, Any], obj)


def generations(custom: client.CustomObjectsApi, namespace: str, name: str) -> tuple[int, Any]:
    obj = trunk(custom, namespace, name)
    return obj["metadata"]["generation"], obj.get("status", {}).get("observedGeneration")


LEASE = "asterisk-trunk-operator"
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def stamp(log: str, needle: str) -> datetime | None:
    """When the first line containing `needle` was logged."""
    for line in log.splitlines():
        if needle in line and (found := STAMP.match(line)):
            return datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f")
    return None
