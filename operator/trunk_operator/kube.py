"""Kubernetes I/O: credentials Secrets, the rendered-state ConfigMaps and Secrets, pod exec.

Rendered state per CR: a ConfigMap with the non-secret files and a Secret with the auth
section, both owned by the CR (garbage-collected with it), labelled, and annotated with the
content hash. Files over `INLINE_LIMIT` are stored gzip'd in `binaryData`, split across extra
ConfigMaps (`-part-N`) when one object would pass the API's 1 MiB limit. Secrets are written
with this module's own client calls, never through a path that logs payloads.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL

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


class KubeError(RuntimeError):
    """An API call failed; the message never quotes a response body."""


def describe(error: BaseException) -> str:
    """An error in words that cannot carry a payload (bodies may hold Secret data)."""
    if isinstance(error, ApiException):
        return f"API error {error.status}" if error.status else "API connection error"
    return type(error).__name__


def load_config() -> client.ApiClient:
    """In a pod: the service account; elsewhere: KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    """Thin synchronous wrapper; the controller calls it from worker threads."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api_client = api_client or client.ApiClient()
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)

    # -- credentials -------------------------------------------------------------------

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise KubeError(f"reading Secret {namespace}/{name}: {describe(error)}") from None
        except Exception as error:
            # Whatever went wrong, its text may quote the response: the Secret itself.
            raise KubeError(f"reading Secret {namespace}/{name}: {describe(error)}") from None
        decoded = {}
        for key, value in (secret.data or {}).items():
            try:
                decoded[key] = base64.b64decode(value).decode()
            except UnicodeDecodeError:
                continue  # not text: treated as missing, reported as SecretKeyMissing
        return decoded

    # -- rendered state ----------------------------------------------------------------

    def _apply(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, str]:
        """Create, or replace when the content hash differs. Returns the previous annotations.

        Create first: new objects are the common case (one call); responses are not decoded.
        """
        name = body["metadata"]["name"]
        try:
            _done(getattr(self.core, f"create_namespaced_{kind}")(namespace, body, **RAW))
            return {}
        except ApiException as error:
            if error.status != 409:
                raise KubeError(f"creating {kind} {namespace}/{name}: {describe(error)}") from None
        current = getattr(self.core, f"read_namespaced_{kind}")(name, namespace)
        annotations = dict(current.metadata.annotations or {})
        if annotations.get(ANNOTATION_HASH) != body["metadata"]["annotations"][ANNOTATION_HASH]:
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            _done(getattr(self.core, f"replace_namespaced_{kind}")(name, namespace, body, **RAW))
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
            before = self._apply("config_map", owner.namespace, body)
            if index == 0:
                previous_parts = int(before.get(ANNOTATION_PARTS, "1"))
        for index in range(len(payloads), previous_parts):  # the set shrank: drop extra parts
            with contextlib.suppress(ApiException):
                self.core.delete_namespaced_config_map(
                    f"{owner.base_name}-part-{index}", owner.namespace
                )
        if secret:
            secret_body = {
                "metadata": self._metadata(owner, f"{owner.base_name}-auth", _keyed_hash(secret)),
                "type": "Opaque",
                "stringData": {file_key(p): t for p, t in secret.items()},
            }
            self._apply("secret", owner.namespace, secret_body)

    def list_custom(self, plural: str) -> list[dict[str, Any]]:
        """Every object of one of our kinds, cluster-wide, as plain dicts."""
        found = self.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        return list(cast(dict[str, Any], found)["items"])

    def list_pods(self) -> list[dict[str, Any]]:
        """Every pod, as plain dicts with the API's own (camelCase) keys."""
        pods = self.core.list_pod_for_all_namespaces()
        return list(self.api_client.sanitize_for_serialization(pods)["items"])

    def rendered_hashes(self) -> dict[tuple[str, str, str], tuple[str, str]]:
        """(namespace, kind, name) -> (ConfigMap hash, Secret hash) of what is in the API now,
        in two list calls, so a restarted operator does not re-read every object."""
        selector = f"{LABEL_MANAGED_BY}={MANAGER}"
        found: dict[tuple[str, str, str], tuple[str, str]] = {}
        for cm in self.core.list_config_map_for_all_namespaces(label_selector=selector).items:
            meta = cm.metadata
            if meta is None or (meta.name or "").rsplit("-part-", 1)[0] != meta.name:
                continue
            labels, annotations = meta.labels or {}, meta.annotations or {}
            key = (meta.namespace or "", labels.get(LABEL_KIND, ""), labels.get(LABEL_NAME, ""))
            found[key] = (annotations.get(ANNOTATION_HASH, ""), "")
        for secret in self.core.list_secret_for_all_namespaces(label_selector=selector).items:
            meta = secret.metadata
            if meta is None:
                continue
            labels, annotations = meta.labels or {}, meta.annotations or {}
            key = (meta.namespace or "", labels.get(LABEL_KIND, ""), labels.get(LABEL_NAME, ""))
            if key in found:
                found[key] = (found[key][0], annotations.get(ANNOTATION_HASH, ""))
        return found

    # -- status ------------------------------------------------------------------------

    def patch_status(self, kind_plural: str, namespace: str, name: str, status: dict) -> None:
        try:
            _done(
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, kind_plural, name, {"status": status}, **RAW
                )
            )
        except ApiException as error:
            if error.status != 404:  # deleted meanwhile
                raise

    def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> None:
        """Replace the finalizer list; the resourceVersion makes a concurrent change a 409."""
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        try:
            _done(
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, body, **RAW
                )
            )
        except ApiException as error:
            if error.status not in (404, 409):  # gone, or changed: the next event retries
                raise KubeError(f"finalizer on {plural}/{name}: {describe(error)}") from None

    def event(self, owner: Owner, event_type: str, reason: str, message: str) -> None:
        now = datetime.now(UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{owner.name}.", namespace=owner.namespace),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=owner.kind,
                name=owner.name,
                namespace=owner.namespace,
                uid=owner.uid,
            ),
            type=event_type,
            reason=reason,
            message=message[:1000],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=MANAGER),
            reporting_component=MANAGER,
        )
        try:
            _done(self.core.create_namespaced_event(owner.namespace, body, **RAW))
        except ApiException as error:  # events are best effort
            log.warning("could not record event %s on %s: %s", reason, owner.name, error.status)

    # -- exec --------------------------------------------------------------------------

    def pod_exec(self, namespace: str, pod: str, container: str) -> PodExec:
        # `stream()` swaps the request method of the ApiClient it is given while it runs:
        # every exec gets its own client, so no other thread's call turns into a WebSocket.
        own = client.CoreV1Api(client.ApiClient(self.api_client.configuration))
        return PodExec(own, namespace, pod, container)


RAW: dict[str, Any] = {"_preload_content": False}  # writes: the response is not decoded


def _done(response: Any) -> None:
    """Read and release a raw response, so its connection goes back to the pool."""
    response.read()
    response.release_conn()


def secret_files_hash(files: Mapping[str, str]) -> str:
    """What annotates a rendered Secret: changes with its files, is not a plain hash of them."""
    return _keyed_hash(files) if files else ""


def _keyed_hash(files: Mapping[str, str]) -> str:
    """A hash that changes with the secret files without being a plain hash of them."""
    return hashlib.sha256(b"trunk-operator-secret\0" + files_hash(files).encode()).hexdigest()


class PodExec:
    """`Exec` over the API server's exec subresource (WebSocket; needs get+create pods/exec)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, pod: str, container: str) -> None:
        self.core, self.namespace, self.pod, self.container = core, namespace, pod, container

    def __call__(self, command: list[str], stdin: bytes | None, timeout: float) -> ExecResult:
        try:
            response = stream(
                self.core.connect_get_namespaced_pod_exec,
                self.pod,
                self.namespace,
                container=self.container,
                command=command,
                stdin=stdin is not None,
                stdout=True,
                stderr=True,
                tty=False,
                _preload_content=False,
                binary=True,
            )
        except ApiException as error:
            raise ExecError(
                f"exec into {self.pod} refused: {error.status} {error.reason}"
            ) from None
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        try:
            if stdin is not None:
                for chunk in _chunks(stdin, 256 * 1024):
                    response.write_stdin(chunk)
            while response.is_open():
                if time.monotonic() > deadline:
                    raise ExecError(f"exec into {self.pod} timed out after {timeout:.0f} s")
                response.update(timeout=1)
                out += response.read_channel(STDOUT_CHANNEL) or b""
                err += response.read_channel(STDERR_CHANNEL) or b""
            out += response.read_channel(STDOUT_CHANNEL) or b""
            err += response.read_channel(STDERR_CHANNEL) or b""
            status = response.read_channel(ERROR_CHANNEL)
        finally:
            response.close()
        return ExecResult(
            _exit_code(status), out.decode(errors="replace"), err.decode(errors="replace")
        )


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _exit_code(error_channel: bytes | str | None) -> int:
    """The exec status message: Success, or NonZeroExitCode with the code in details."""
    import json

    if not error_channel:
        return 0
    status = json.loads(error_channel)
    if status.get("status") == "Success":
        return 0
    for cause in status.get("details", {}).get("causes", []):
        if cause.get("reason") == "ExitCode":
            return int(cause["message"])
    return 1
