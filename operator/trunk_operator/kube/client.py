"""A small Kubernetes API and exec client: JSON over HTTPS (urllib3) and exec over WebSocket.

Why not the `kubernetes` package: importing it costs the operator memory it has no use for,
and its `stream()` swaps the request method of a shared client while an exec runs. What this
client must still do for users, as client-go does:

- credentials from a ServiceAccount or a kubeconfig, parsed by Kopf (the same ones its
  watches use);
- bearer tokens that rotate: a token file (the projected ServiceAccount token that kubelet
  rotates, or a kubeconfig's `tokenFile`) is re-read every minute, and a 401 is retried once
  with a freshly read token, for API calls and exec alike;
- retries on connection errors, 429 and 5xx with backoff (Retry-After honoured);
- errors that never quote a response body (bodies may carry Secret data).

The trade-off: no discovery, no typed models, only the calls `kube.Kube` makes.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
import websocket
import yaml

from trunk_operator.kube.exec import ExecError, ExecResult

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
TOKEN_REREAD_SECONDS = 60.0  # client-go's cached file token source re-reads about as often
RETRIES = 5

API_CALLS = 16  # API calls in flight at once (client-go bursts 10-30)


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


class TokenSource:
    """A bearer token, re-read from its file when older than `TOKEN_REREAD_SECONDS` or when
    the API server refused it (401): kubelet rotates projected tokens in place."""

    def __init__(self, token: str | None, path: str | None = None) -> None:
        self.path = path
        self._token = token
        self._read_at = time.monotonic() if token else 0.0
        self._lock = threading.Lock()

    def get(self) -> str | None:
        if self.path and time.monotonic() - self._read_at > TOKEN_REREAD_SECONDS:
            self.refresh()
        return self._token

    def refresh(self) -> bool:
        """Read the file again; whether there is a token to retry with."""
        if not self.path:
            return False
        with self._lock:
            try:
                with open(self.path) as handle:
                    self._token = handle.read().strip() or self._token
            except OSError:
                pass  # keep the last token: a rotation replaces the file, it does not remove it
            self._read_at = time.monotonic()
        return bool(self._token)


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_file: str | None = None
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    token: TokenSource = field(default_factory=lambda: TokenSource(None))


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


def _kubeconfig_token_file(kubeconfig: str | None) -> str | None:
    """The current user's `tokenFile`, which Kopf's kubeconfig parser does not read."""
    path = kubeconfig or (os.environ.get("KUBECONFIG", "").split(os.pathsep) or [""])[0]
    path = path or os.path.expanduser("~/.kube/config")
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except OSError:
        return None
    contexts = {c.get("name"): c.get("context", {}) for c in config.get("contexts") or []}
    user_name = contexts.get(config.get("current-context"), {}).get("user")
    users = {u.get("name"): u.get("user", {}) for u in config.get("users") or []}
    token_file = users.get(user_name, {}).get("tokenFile")
    if token_file and not os.path.isabs(token_file):
        token_file = os.path.join(os.path.dirname(os.path.abspath(path)), token_file)
    return token_file


def _in_cluster_server() -> str | None:
    """The API server as client-go's in-cluster config finds it: from the Service env vars
    kubelet sets, not by the name `kubernetes.default.svc` (Kopf's choice), which needs
    cluster DNS."""
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def load_config(kubeconfig: str | None = None) -> Connection:
    """In a pod: the service account; elsewhere: `kubeconfig`, KUBECONFIG or ~/.kube/config.

    Parsing is Kopf's own (the same credentials its watches use)."""
    import kopf

    settings = kopf.OperatorSettings()
    info = None if kubeconfig else kopf.login_with_service_account(settings=settings)
    token_file = SERVICE_ACCOUNT_TOKEN if info is not None else None
    if info is None:
        previous = os.environ.get("KUBECONFIG")
        if kubeconfig:
            os.environ["KUBECONFIG"] = kubeconfig
        try:
            info = kopf.login_with_kubeconfig(settings=settings)
            token_file = _kubeconfig_token_file(kubeconfig)
        finally:
            if kubeconfig:
                if previous is None:
                    os.environ.pop("KUBECONFIG", None)
                else:
                    os.environ["KUBECONFIG"] = previous
    if info is None:
        raise KubeError("no Kubernetes credentials: neither a service account nor a kubeconfig")
    token = TokenSource(info.token, token_file)
    if token_file and not info.token:
        token.refresh()
    server = info.server
    if token_file == SERVICE_ACCOUNT_TOKEN:
        server = _in_cluster_server() or server
    return Connection(
        server=server.rstrip("/"),
        ca_file=_materialize(info.ca_path, info.ca_data),
        insecure=bool(info.insecure),
        cert_file=_materialize(info.certificate_path, info.certificate_data),
        key_file=_materialize(info.private_key_path, info.private_key_data),
        token=token,
    )


class Api:
    """JSON over HTTPS to the API server; connections pooled, errors without bodies."""

    def __init__(
        self,
        connection: Connection,
        pool_size: int = API_CALLS,  # one connection per API call in flight
        *,
        retries: int = RETRIES,
        timeout: float = 60.0,
    ) -> None:
        """`retries` and `timeout` (seconds per request): leader election wants none and
        short, so that a renewal fails within its deadline instead of retrying past it."""
        self.connection = connection
        self.retries = retries
        self.pool = urllib3.PoolManager(
            maxsize=pool_size,
            cert_reqs="CERT_NONE" if connection.insecure else "CERT_REQUIRED",
            ca_certs=connection.ca_file,
            cert_file=connection.cert_file,
            key_file=connection.key_file,
            timeout=urllib3.Timeout(connect=min(10.0, timeout), read=timeout),
            retries=False,
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if token := self.connection.token.get():
            headers["Authorization"] = f"Bearer {token}"
        return headers

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
        payload = json.dumps(body).encode() if body is not None else None
        refreshed = False
        attempt = 0
        while True:
            headers = self._headers()
            if payload is not None:
                headers["Content-Type"] = content_type
            try:
                response = self.pool.request(method, url, body=payload, headers=headers)
            except urllib3.exceptions.HTTPError as error:
                if attempt < self.retries:
                    time.sleep(0.2 * 2**attempt)
                    attempt += 1
                    continue
                raise KubeError(f"{method} {path}: {type(error).__name__}") from None
            if response.status == 401 and not refreshed and self.connection.token.refresh():
                refreshed = True  # the token rotated under us: once more with the new one
                continue
            # 429 (e.g. "storage is (re)initializing" for a new CRD) and 5xx are passing states.
            if (response.status == 429 or response.status >= 500) and attempt < self.retries:
                delay = response.headers.get("Retry-After", "")
                time.sleep(min(float(delay), 5.0) if delay.isdigit() else 0.2 * 2**attempt)
                attempt += 1
                continue
            break
        if response.status >= 400:
            raise KubeError(f"{method} {path}: API error {response.status}", response.status)
        return json.loads(response.data) if response.data else {}


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

    def _connect(
        self, stdin: bool, command: list[str], sslopt: dict[str, Any], timeout: float
    ) -> websocket.WebSocket:
        for fresh_token in (False, True):
            token = self.connection.token.get()
            try:
                return websocket.create_connection(
                    self._url(command, stdin),
                    header=[f"Authorization: Bearer {token}"] if token else [],
                    subprotocols=["v5.channel.k8s.io", "v4.channel.k8s.io"],
                    sslopt=sslopt,
                    timeout=timeout,
                )
            except websocket.WebSocketBadStatusException as error:
                status = getattr(error, "status_code", 0)
                if status == 401 and not fresh_token and self.connection.token.refresh():
                    continue  # the token rotated under us: once more with the new one
                raise ExecError(f"exec into {self.pod} failed: handshake status {status}") from None
            except Exception as error:
                raise ExecError(f"exec into {self.pod} failed: {describe(error)}") from None
        raise ExecError(f"exec into {self.pod} failed: unauthorized")

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
        socket = self._connect(stdin is not None, command, sslopt, timeout)
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
