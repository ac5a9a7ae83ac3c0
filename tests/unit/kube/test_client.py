"""The operator's own API client keeps working when its token rotates (as kubelet rotates a
projected ServiceAccount token): re-read on a timer and once after a 401."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trunk_operator.kube import client as apiclient
from trunk_operator.kube.client import Api, Connection, KubeError, TokenSource


class Server(http.server.ThreadingHTTPServer):
    accepted = "new-token"
    seen: list[str]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server = self.server
        assert isinstance(server, Server)
        header = self.headers.get("Authorization", "")
        server.seen.append(header)
        ok = header == f"Bearer {server.accepted}"
        body = json.dumps({"kind": "Status" if not ok else "PodList"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def api_for(server: Server, token: TokenSource) -> Api:
    return Api(Connection(server=f"http://127.0.0.1:{server.server_address[1]}", token=token))


def test_a_401_rereads_the_token_file_and_retries_once(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("old-token\n")
    api = api_for(server, TokenSource(None, str(path)))
    api.connection.token.refresh()
    path.write_text("new-token\n")  # rotated; the old one is now refused
    assert api.request("GET", "/api/v1/pods") == {"kind": "PodList"}
    assert server.seen == ["Bearer old-token", "Bearer new-token"]


def test_a_token_that_stays_refused_is_an_error_not_a_loop(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("revoked\n")
    api = api_for(server, TokenSource("revoked", str(path)))
    with pytest.raises(KubeError) as error:
        api.request("GET", "/api/v1/pods")
    assert error.value.status == 401
    assert len(server.seen) == 2


def test_the_token_file_is_reread_on_a_timer(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("new-token\n")
    token = TokenSource("old-token", str(path))
    monkeypatch.setattr(apiclient, "TOKEN_REREAD_SECONDS", 0.0)
    assert api_for(server, token).request("GET", "/api/v1/pods") == {"kind": "PodList"}
    assert server.seen == ["Bearer new-token"]  # no 401 needed


def test_a_static_token_is_not_refreshed(server: Server) -> None:
    token = TokenSource("old-token")
    assert token.refresh() is False
    with pytest.raises(KubeError):
        api_for(server, token).request("GET", "/api/v1/pods")
    assert len(server.seen) == 1


def test_kubeconfig_token_file_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text(
        "current-context: c\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        "users: [{name: u, user: {tokenFile: token}}, {name: other, user: {token: x}}]\n"
    )
    found = apiclient._kubeconfig_token_file(str(tmp_path / "kubeconfig"))
    assert found == str(tmp_path / "token")


def test_in_cluster_server_comes_from_the_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert apiclient._in_cluster_server() == "https://10.0.0.1:443"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert apiclient._in_cluster_server() == "https://[fd00::1]:443"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert apiclient._in_cluster_server() is None
