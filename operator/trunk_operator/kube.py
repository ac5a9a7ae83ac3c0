"""Kubernetes I/O: credentials Secrets, the rendered-state ConfigMaps and Secrets, pod exec.

Rendered state per CR: a ConfigMap with the non-secret files and a Secret with the auth
section, both owned by the CR (garbage-collected with it), labelled, and annotated with the
content hash. Files over `INLINE_LIMIT` are stored gzip'd in `binaryData`, split across extra
ConfigMaps (`-part-N`) when one object would pass the API's 1 MiB limit. Secrets are written
with this module's own client calls, never through a path that logs payloads.

A small REST and exec client of our own (urllib3, websocket-client) instead of the
`kubernetes` package: its import alone costs about 40 MiB of the operator's memory, and its
`stream()` swaps the request method of a shared client while an exec runs.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import websocket

from trunk_operator.asterisk import ExecError, ExecResult
from trunk_operator.models import GROUP, VERSION
from trunk_operator.render import Files, files_hash

log = logging.getLogger(__name__)

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "asterisk-trunk-operator"
LABEL_KIND = f"{GROUP}/kind"
LABEL_NAME = f"{GROUP}/name"
LABEL_TRUNK = f"{GROUP}/trunk"
ANNOTATION_HASH = f"{GROUP}/config-hash"
ANNOTATION_PARTS = f"{GROUP}/config-parts"
INLINE_LIMIT = 256 * 1024
PART_LIMIT = 700 * 1024  # compressed bytes per ConfigMap; base64 makes it ~930 KiB


def file_key(path: str) -> str:
    """ConfigMap keys cannot hold `/`; operator file names never contain `_`."""
    return path.replace("/", "_")


def key_path(key: str) -> str:
    return key.replace("_", "/", 1)


@dataclass(frozen=True)
class Owner:
    kind: str
    name: str
    namespace: str
    uid: str
    trunk: str | None = None

    @property
    def base_name(self) -> str:
        return f"{self.kind.lower()}-{self.name}"

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self) -> dict[str, str]:
        labels = {LABEL_MANAGED_BY: MANAGER, LABEL_KIND: self.kind.lower(), LABEL_NAME: self.name}
        if self.trunk:
            labels[LABEL_TRUNK] = self.trunk
        return labels


def config_map_payloads(files: Files) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(data, binaryData) per ConfigMap: small files inline, big ones gzip'd and split."""
    data: dict[str, str] = {}
    parts: list[dict[str, str]] = [{}]
    used = 0
    for path in sorted(files):
        text = files[path]
        if len(text) <= INLINE_LIMIT:
            data[file_key(path)] = text
            used += len(text)
            continue
        packed = gzip.compress(text.encode(), compresslevel=9, mtime=0)
        for index, start in enumerate(range(0, len(packed), PART_LIMIT)):
            chunk = packed[start : start + PART_LIMIT]
            if used + len(chunk) > PART_LIMIT:
                parts.append({})
                used = 0
            parts[-1][f"{file_key(path)}.gz.{index:03d}"] = base64.b64encode(chunk).decode()
            used += len(chunk)
    return [(data if i == 0 else {}, binary) for i, binary in enumerate(parts)]


@dataclass(frozen=True)
class SecretRead:
    """A credentials Secret's text values and the resourceVersion they were read at."""

    data: dict[str, str]
    resource_version: str


class KubeError(RuntimeError):
    """An API call failed; the message never quotes a response body (it may hold a Secret)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def describe(error: BaseException) -> str:
    """An error in words that cannot carry a payload (bodies may hold Secret data)."""
    if isinstance(error, KubeError):
        return str(error)
    return type(error).__name__


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_file: str | None = None
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None


def _materialize(path: Any, data: Any) -> str | None:
    """Kubeconfigs give certificates as paths or base64 data; TLS wants files."""
    if path:
        return os.fsdecode(path)
    if not data:
        return None
    raw = data if isinstance(data, bytes) else base64.b64decode(data)
    handle = tempfile.NamedTemporaryFile(prefix="trunk-operator-", delete=False)  # noqa: SIM115
    os.chmod(handle.name, 0o600)  # before the key material is in it
    with handle:
        handle.write(raw)
    atexit.register(os.unlink, handle.name)
    return handle.name


def load_config(kubeconfig: str | None = None) -> Connection:
    """In a pod: the service account; elsewhere: `kubeconfig`, KUBECONFIG or ~/.kube/config.

    Parsing is Kopf's own (the same credentials its watches use)."""
    import kopf

    settings = kopf.OperatorSettings()
    info = None if kubeconfig else kopf.login_with_service_account(settings=settings)
    if info is None:
        previous = os.environ.get("KUBECONFIG")
        if kubeconfig:
            os.environ["KUBECONFIG"] = kubeconfig
        try:
            info = kopf.login_with_kubeconfig(settings=settings)
        finally:
            if kubeconfig:
                if previous is None:
                    os.environ.pop("KUBECONFIG", None)
                else:
                    os.environ["KUBECONFIG"] = previous
    if info is None:
        raise KubeError("no Kubernetes credentials: neither a service account nor a kubeconfig")
    return Connection(
        server=info.server.rstrip("/"),
        ca_file=_materialize(info.ca_path, info.ca_data),
        insecure=bool(info.insecure),
        cert_file=_materialize(info.certificate_path, info.certificate_data),
        key_file=_materialize(info.private_key_path, info.private_key_data),
        token=info.token,
    )


class Api:
    """JSON over HTTPS to the API server; connections pooled, errors without bodies."""

    def __init__(self, connection: Connection, pool_size: int = 8) -> None:
        self.connection = connection
        self.pool = urllib3.PoolManager(
            maxsize=pool_size,
            cert_reqs="CERT_NONE" if connection.insecure else "CERT_REQUIRED",
            ca_certs=connection.ca_file,
            cert_file=connection.cert_file,
            key_file=connection.key_file,
            timeout=urllib3.Timeout(connect=10, read=60),
            retries=False,
        )
        self.headers = {"Accept": "application/json"}
        if connection.token:
            self.headers["Authorization"] = f"Bearer {connection.token}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        url = self.connection.server + path + (f"?{urlencode(params)}" if params else "")
        headers = dict(self.headers)
        payload = None
        if body is not None:
            headers["Content-Type"] = content_type
            payload = json.dumps(body).encode()
        for attempt in range(RETRIES + 1):
            try:
                response = self.pool.request(method, url, body=payload, headers=headers)
            except urllib3.exceptions.HTTPError as error:
                if attempt < RETRIES:
                    time.sleep(0.2 * 2**attempt)
                    continue
                raise KubeError(f"{method} {path}: {type(error).__name__}") from None
            # 429 (e.g. "storage is (re)initializing" for a new CRD) and 5xx are passing states.
            if (response.status == 429 or response.status >= 500) and attempt < RETRIES:
                delay = response.headers.get("Retry-After", "")
                time.sleep(min(float(delay), 5.0) if delay.isdigit() else 0.2 * 2**attempt)
                continue
            break
        if response.status >= 400:
            raise KubeError(f"{method} {path}: API error {response.status}", response.status)
        return json.loads(response.data) if response.data else {}


def _ns(namespace: str, resource: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/{resource}" + (f"/{name}" if name else "")


def _custom(plural: str, namespace: str = "", name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{where}/{plural}" + (f"/{name}" if name else "")


MERGE = "application/merge-patch+json"
RETRIES = 5
STRATEGIC = "application/strategic-merge-patch+json"


class Kube:
    """The operator's API calls, synchronous; the controller runs them in worker threads."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.api = Api(connection)

    # -- credentials -------------------------------------------------------------------

    def read_secret(self, namespace: str, name: str) -> SecretRead | None:
        try:
            secret = self.api.request("GET", _ns(namespace, "secrets", name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        decoded = {}
        for key, value in (secret.get("data") or {}).items():
            try:
                decoded[key] = base64.b64decode(value).decode()
            except UnicodeDecodeError:
                continue  # not text: treated as missing, reported as SecretKeyMissing
        return SecretRead(decoded, str(secret.get("metadata", {}).get("resourceVersion", "")))

    # -- rendered state ----------------------------------------------------------------

    def _apply(self, resource: str, namespace: str, body: dict[str, Any]) -> dict[str, str]:
        """Create, or replace when the content hash differs. Returns the previous annotations.

        Create first: new objects are the common case (one call).
        """
        name = body["metadata"]["name"]
        try:
            self.api.request("POST", _ns(namespace, resource), body)
            return {}
        except KubeError as error:
            if error.status != 409:
                raise
        current = self.api.request("GET", _ns(namespace, resource, name))
        annotations = dict(current.get("metadata", {}).get("annotations") or {})
        if annotations.get(ANNOTATION_HASH) != body["metadata"]["annotations"][ANNOTATION_HASH]:
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self.api.request("PUT", _ns(namespace, resource, name), body)
        return annotations

    def _metadata(self, owner: Owner, name: str, digest: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": owner.namespace,
            "labels": owner.labels(),
            "annotations": {ANNOTATION_HASH: digest},
            "ownerReferences": [owner.reference()],
        }

    def write_rendered(self, owner: Owner, public: Files, secret: Files) -> None:
        """Create or update the CR's ConfigMap(s) and Secret; unchanged content is not rewritten."""
        digest = files_hash(public)
        payloads = config_map_payloads(public)
        previous_parts = 0
        for index, (data, binary) in enumerate(payloads):
            name = owner.base_name if index == 0 else f"{owner.base_name}-part-{index}"
            metadata = self._metadata(owner, name, digest)
            metadata["annotations"][ANNOTATION_PARTS] = str(len(payloads))
            body = {"metadata": metadata, "data": data, "binaryData": binary}
            before = self._apply("configmaps", owner.namespace, body)
            if index == 0:
                previous_parts = int(before.get(ANNOTATION_PARTS, "1"))
        for index in range(len(payloads), previous_parts):  # the set shrank: drop extra parts
            with contextlib.suppress(KubeError):
                part = f"{owner.base_name}-part-{index}"
                self.api.request("DELETE", _ns(owner.namespace, "configmaps", part))
        if secret:
            secret_body = {
                "metadata": self._metadata(owner, f"{owner.base_name}-auth", _keyed_hash(secret)),
                "type": "Opaque",
                "stringData": {file_key(p): t for p, t in secret.items()},
            }
            self._apply("secrets", owner.namespace, secret_body)

    def list_custom(self, plural: str) -> list[dict[str, Any]]:
        """Every object of one of our kinds, cluster-wide."""
        return list(self.api.request("GET", _custom(plural)).get("items") or [])

    def list_pods(self) -> list[dict[str, Any]]:
        return list(self.api.request("GET", "/api/v1/pods").get("items") or [])

    def rendered_hashes(self) -> dict[tuple[str, str, str], tuple[str, str]]:
        """(namespace, kind, name) -> (ConfigMap hash, Secret hash) of what is in the API now,
        in two list calls, so a restarted operator does not re-read every object."""
        params = {"labelSelector": f"{LABEL_MANAGED_BY}={MANAGER}"}
        found: dict[tuple[str, str, str], tuple[str, str]] = {}
        for resource in ("configmaps", "secrets"):
            listed = self.api.request("GET", f"/api/v1/{resource}", params=params)
            for item in listed.get("items") or []:
                meta = item.get("metadata", {})
                if "-part-" in meta.get("name", ""):
                    continue
                labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
                key = (
                    meta.get("namespace", ""),
                    labels.get(LABEL_KIND, ""),
                    labels.get(LABEL_NAME, ""),
                )
                digest = annotations.get(ANNOTATION_HASH, "")
                if resource == "configmaps":
                    found[key] = (digest, "")
                elif key in found:
                    found[key] = (found[key][0], digest)
        return found

    # -- status ------------------------------------------------------------------------

    def patch_status(self, plural: str, namespace: str, name: str, status: dict) -> None:
        try:
            path = _custom(plural, namespace, name) + "/status"
            self.api.request("PATCH", path, {"status": status}, content_type=MERGE)
        except KubeError as error:
            if error.status != 404:  # deleted meanwhile
                raise

    def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> None:
        """Replace the finalizer list; the resourceVersion makes a concurrent change a 409."""
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        try:
            self.api.request("PATCH", _custom(plural, namespace, name), body, content_type=MERGE)
        except KubeError as error:
            if error.status not in (404, 409):  # gone, or changed: the next event retries
                raise

    def set_pod_condition(self, namespace: str, pod: str, condition: dict[str, Any]) -> None:
        """One pod condition (readiness gate), merged by type with the others."""
        body = {"status": {"conditions": [condition]}}
        self.api.request(
            "PATCH", _ns(namespace, "pods", pod) + "/status", body, content_type=STRATEGIC
        )

    def event(self, owner: Owner, event_type: str, reason: str, message: str) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": owner.kind,
                "name": owner.name,
                "namespace": owner.namespace,
                "uid": owner.uid,
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1000],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
        }
        try:
            self.api.request("POST", _ns(owner.namespace, "events"), body)
        except KubeError as error:  # events are best effort
            log.warning("could not record event %s on %s: %s", reason, owner.name, error)

    # -- exec --------------------------------------------------------------------------

    def pod_exec(self, namespace: str, pod: str, container: str) -> PodExec:
        return PodExec(self.connection, namespace, pod, container)


def secret_files_hash(files: Mapping[str, str]) -> str:
    """What annotates a rendered Secret: changes with its files, is not a plain hash of them."""
    return _keyed_hash(files) if files else ""


def _keyed_hash(files: Mapping[str, str]) -> str:
    """A hash that changes with the secret files without being a plain hash of them."""
    return hashlib.sha256(b"trunk-operator-secret\0" + files_hash(files).encode()).hexdigest()


# Channels of the exec WebSocket protocol: a leading byte per message.
STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255


class PodExec:
    """`Exec` over the API server's exec subresource (WebSocket; needs get+create pods/exec).

    `v5.channel.k8s.io` first: it can close stdin. With v4 the delivery still works, because
    the script reads exactly the framed number of bytes."""

    def __init__(self, connection: Connection, namespace: str, pod: str, container: str) -> None:
        self.connection, self.namespace, self.pod, self.container = (
            connection,
            namespace,
            pod,
            container,
        )

    def _url(self, command: list[str], stdin: bool) -> str:
        params = [("container", self.container), ("stdout", "true"), ("stderr", "true")]
        params += [("stdin", "true")] if stdin else []
        params += [("command", part) for part in command]
        base = self.connection.server.replace("https://", "wss://", 1).replace(
            "http://", "ws://", 1
        )
        path = f"/api/v1/namespaces/{quote(self.namespace)}/pods/{quote(self.pod)}/exec"
        return f"{base}{path}?{urlencode(params)}"

    def __call__(self, command: list[str], stdin: bytes | None, timeout: float) -> ExecResult:
        conn = self.connection
        sslopt: dict[str, Any] = {
            "cert_reqs": ssl.CERT_NONE if conn.insecure else ssl.CERT_REQUIRED
        }
        if conn.ca_file:
            sslopt["ca_certs"] = conn.ca_file
        if conn.cert_file:
            sslopt["certfile"] = conn.cert_file
        if conn.key_file:
            sslopt["keyfile"] = conn.key_file
        headers = [f"Authorization: Bearer {conn.token}"] if conn.token else []
        try:
            socket = websocket.create_connection(
                self._url(command, stdin is not None),
                header=headers,
                subprotocols=["v5.channel.k8s.io", "v4.channel.k8s.io"],
                sslopt=sslopt,
                timeout=timeout,
            )
        except Exception as error:
            raise ExecError(f"exec into {self.pod} failed: {describe(error)}") from None
        out, err, status = bytearray(), bytearray(), b""
        deadline = time.monotonic() + timeout
        try:
            if stdin is not None:
                for chunk in _chunks(stdin, 256 * 1024):
                    socket.send_binary(bytes([STDIN]) + chunk)
                if socket.subprotocol == "v5.channel.k8s.io":
                    socket.send_binary(bytes([CLOSE, STDIN]))
            while time.monotonic() < deadline:
                try:
                    frame = socket.recv()
                except websocket.WebSocketConnectionClosedException:
                    break
                if not frame:
                    break
                data = frame if isinstance(frame, bytes) else frame.encode()
                channel, payload = data[0], data[1:]
                if channel == STDOUT:
                    out += payload
                elif channel == STDERR:
                    err += payload
                elif channel == ERROR:
                    status += payload
            else:
                raise ExecError(f"exec into {self.pod} timed out after {timeout:.0f} s")
        except websocket.WebSocketTimeoutException:
            raise ExecError(f"exec into {self.pod} timed out after {timeout:.0f} s") from None
        finally:
            socket.close()
        return ExecResult(
            _exit_code(bytes(status)), out.decode(errors="replace"), err.decode(errors="replace")
        )


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _exit_code(status: bytes) -> int:
    """The exec's final Status: Success, or NonZeroExitCode with the code in its causes."""
    if not status:
        return 0
    parsed = json.loads(status)
    if parsed.get("status") == "Success":
        return 0
    for cause in parsed.get("details", {}).get("causes", []):
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    return 1
