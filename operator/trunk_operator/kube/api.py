"""Kubernetes I/O: credentials Secrets, the rendered-state ConfigMaps and Secrets, pod exec.

Rendered state per CR: a ConfigMap with the non-secret files and a Secret with the auth
section, both owned by the CR (garbage-collected with it), labelled, and annotated with the
content hash. Files over `INLINE_LIMIT` are stored gzip'd in `binaryData`, split across extra
ConfigMaps (`-part-N`) when one object would pass the API's 1 MiB limit. Secrets are written
with this module's own client calls, never through a path that logs payloads.

The HTTP and exec client is `kube.client` (ours, not the `kubernetes` package: see there).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from trunk_operator.core.models import GROUP, VERSION
from trunk_operator.core.render import Files, files_hash
from trunk_operator.kube.client import Api, Connection, KubeError, PodExec

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


class NotOurs(Exception):
    """An object the operator would write exists and belongs to someone else."""


@dataclass(frozen=True)
class SecretRead:
    """A credentials Secret's text values and the resourceVersion they were read at."""

    data: dict[str, str]
    resource_version: str
    ours: bool = False  # labelled as the operator's (a Secret it writes)


def _ns(namespace: str, resource: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/{resource}" + (f"/{name}" if name else "")


def _custom(plural: str, namespace: str = "", name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{where}/{plural}" + (f"/{name}" if name else "")


MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class Kube:
    """The operator's API calls, synchronous; the controller runs them in worker threads."""

    def __init__(self, connection: Connection, namespaces: tuple[str, ...] = ()) -> None:
        self.connection = connection
        self.api = Api(connection)
        self.namespaces = namespaces  # empty: the whole cluster

    def _list(self, path: str, params: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """`path` (e.g. `/api/v1/pods`) cluster-wide, or in each watched namespace: with
        namespaced RBAC, a cluster-wide list is forbidden."""
        if not self.namespaces:
            return list(self.api.request("GET", path, params=params).get("items") or [])
        prefix, _, resource = path.rpartition("/")
        items: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            listed = self.api.request(
                "GET", f"{prefix}/namespaces/{namespace}/{resource}", params=params
            )
            items += listed.get("items") or []
        return items

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
        meta = secret.get("metadata", {})
        ours = (meta.get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGER
        return SecretRead(decoded, str(meta.get("resourceVersion", "")), ours)

    # -- rendered state ----------------------------------------------------------------

    def _apply(
        self, resource: str, namespace: str, body: dict[str, Any], exists: bool = False
    ) -> dict[str, str]:
        """Create, or replace when the content hash differs. Returns the previous annotations.

        Create first unless the object is known to `exist` (then read and replace).
        """
        name = body["metadata"]["name"]
        if not exists:
            try:
                self.api.request("POST", _ns(namespace, resource), body)
                return {}
            except KubeError as error:
                if error.status != 409:
                    raise
        try:
            current = self.api.request("GET", _ns(namespace, resource, name))
        except KubeError as error:
            if not (exists and error.status == 404):
                raise
            self.api.request("POST", _ns(namespace, resource), body)  # deleted by someone
            return {}
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

    def write_rendered(
        self, owner: Owner, public: Files, secret: Files, written: tuple[str, str] | None = None
    ) -> None:
        """Create or update the CR's ConfigMap(s) and Secret; unchanged content is not rewritten.

        `written`: the (ConfigMap, Secret) hashes last stored, when known: a part whose hash
        is the same is not touched, and the others are replaced without a create first (one
        change of a trunk is then two API calls, not five)."""
        digest = files_hash(public)
        public_done = written is not None and written[0] == digest
        payloads = config_map_payloads(public)
        previous_parts = 0
        for index, (data, binary) in enumerate([] if public_done else payloads):
            name = owner.base_name if index == 0 else f"{owner.base_name}-part-{index}"
            metadata = self._metadata(owner, name, digest)
            metadata["annotations"][ANNOTATION_PARTS] = str(len(payloads))
            body = {"metadata": metadata, "data": data, "binaryData": binary}
            before = self._apply("configmaps", owner.namespace, body, index == 0 and bool(written))
            if index == 0:
                previous_parts = int(before.get(ANNOTATION_PARTS, "1"))
        for index in range(len(payloads), previous_parts):  # the set shrank: drop extra parts
            with contextlib.suppress(KubeError):
                part = f"{owner.base_name}-part-{index}"
                self.api.request("DELETE", _ns(owner.namespace, "configmaps", part))
        if secret and (written is None or written[1] != secret_files_hash(secret)):
            secret_body = {
                "metadata": self._metadata(
                    owner, f"{owner.base_name}-auth", secret_files_hash(secret)
                ),
                "type": "Opaque",
                "stringData": {file_key(p): t for p, t in secret.items()},
            }
            self._apply("secrets", owner.namespace, secret_body, bool(written and written[1]))

    def write_credential_secret(self, owner: Owner, name: str, data: Mapping[str, str]) -> None:
        """The operator's Secret of the SIP credential Twilio holds for a trunk (owned by the
        trunk, labelled as the operator's: its own watch filters it out). A Secret of that name
        that is not the operator's is never replaced (NotOurs)."""
        try:
            current = self.api.request("GET", _ns(owner.namespace, "secrets", name))
        except KubeError as error:
            if error.status != 404:
                raise
        else:
            labels = current.get("metadata", {}).get("labels") or {}
            if labels.get(LABEL_MANAGED_BY) != MANAGER:
                raise NotOurs(f"Secret {name} exists and is not the operator's: rename it")
        digest = keyed_secret_hash(files_hash(dict(data)))
        body = {
            "metadata": self._metadata(owner, name, digest),
            "type": "Opaque",
            "stringData": dict(data),
        }
        self._apply("secrets", owner.namespace, body)

    def list_custom(self, plural: str) -> list[dict[str, Any]]:
        """Every object of one of our kinds, cluster-wide."""
        return self._list(_custom(plural))

    def list_pods(self) -> list[dict[str, Any]]:
        return self._list("/api/v1/pods")

    def rendered_hashes(self) -> dict[tuple[str, str, str], tuple[str, str]]:
        """(namespace, kind, name) -> (ConfigMap hash, Secret hash) of what is in the API now,
        in two list calls, so a restarted operator does not re-read every object."""
        params = {"labelSelector": f"{LABEL_MANAGED_BY}={MANAGER}"}
        found: dict[tuple[str, str, str], tuple[str, str]] = {}
        for resource in ("configmaps", "secrets"):
            for item in self._list(f"/api/v1/{resource}", params):
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
    return keyed_secret_hash(files_hash(files))


@functools.lru_cache(maxsize=1 << 16)  # asked for every CR at every plan
def keyed_secret_hash(files_digest: str) -> str:
    """secret_files_hash from the files' `files_hash` (empty files: `files_hash({})`)."""
    if files_digest == files_hash({}):
        return ""
    return hashlib.sha256(b"trunk-operator-secret\0" + files_digest.encode()).hexdigest()
