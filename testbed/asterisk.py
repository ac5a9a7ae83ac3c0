"""A real Asterisk 22 in a podman container, for tests (stdlib only).

    with AsteriskContainer("pbx", bind_ip="127.0.10.1",
                           hosts={"acme.pstn.twilio.com": "127.0.0.2"}) as ast:
        ast.write_file("/etc/asterisk/pjsip.d/acme.conf", text)
        print(ast.rx("module reload res_pjsip.so"))

The image is ``localhost/asterisk:22`` (build it with ``testbed/asterisk/build-image.sh``).
Each container runs on the host network with its own loopback bind address (SIP on
``bind_ip:port`` over UDP (``transport-udp``) and ``bind_ip:tls_port`` over TLS
(``transport-tls``), RTP on a port range of its own), so several can run at once. Its
``/etc/asterisk`` is a bind mount of a per-container copy of ``testbed/asterisk/config``
(``@BIND@``, ``@TLSBIND@``, ``@RTPSTART@``, ``@RTPEND@`` rendered), with empty, writable
``pjsip.d/`` and ``extensions.d/`` and a self-signed certificate made with the host's
``openssl`` in ``keys/``; ``config_dir`` is that directory on the host. ``tls=False`` leaves
``transport-tls`` out (an Asterisk deployment without TLS: no certificate either).

Container names are unique per run and start with ``trunkop-``; everything this module starts
is removed by name at interpreter exit, should a test forget to.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

IMAGE = "localhost/asterisk:22"
PREFIX = "trunkop-"
RUNTIME = "/usr/sbin/runc"
HERE = Path(__file__).resolve().parent
BASE_CONFIG = HERE / "asterisk" / "config"
BUILD_SCRIPT = HERE / "asterisk" / "build-image.sh"
TRANSPORT = "transport-udp"
TLS_TRANSPORT = "transport-tls"
TLS_PORT = 5061
LABEL = "trunkop.testbed"

_started: set[str] = set()
_lock = threading.Lock()


class AsteriskError(RuntimeError):
    pass


def _podman(
    *args: str, timeout: float = 120, check: bool = True, input: str | bytes | None = None
) -> subprocess.CompletedProcess:
    text = not isinstance(input, bytes)
    proc = subprocess.run(
        ["podman", *args], capture_output=True, text=text, input=input, timeout=timeout
    )
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        raise AsteriskError(f"podman {shlex.join(args)} failed ({proc.returncode}): {err.strip()}")
    return proc


def image_exists(image: str = IMAGE) -> bool:
    return _podman("image", "exists", image, check=False).returncode == 0


def ensure_image(image: str = IMAGE) -> None:
    """Build localhost/asterisk:22 if it is missing (slow the first time: minutes)."""
    if not image_exists(image):
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, timeout=1800)


def container_exists(name: str) -> bool:
    return _podman("container", "exists", name, check=False).returncode == 0


def list_containers(prefix: str = PREFIX) -> list[str]:
    """Names of all containers (running or not) whose name starts with prefix."""
    out = _podman("ps", "-a", "--format", "{{.Names}}").stdout
    return [n for n in out.split() if n.startswith(prefix)]


def started_containers() -> set[str]:
    """Names of the containers this process started and has not removed yet."""
    with _lock:
        return set(_started)


def remove_container(name: str, timeout: float = 60) -> None:
    """podman rm -f NAME, then verify it is gone (only ever by exact name)."""
    _podman("rm", "-f", "--time", "1", name, check=False, timeout=timeout)
    deadline = time.monotonic() + timeout
    while container_exists(name):
        if time.monotonic() > deadline:
            raise AsteriskError(f"container {name} still exists after podman rm -f")
        time.sleep(0.5)
        _podman("rm", "-f", "--time", "1", name, check=False, timeout=timeout)
    with _lock:
        _started.discard(name)


@atexit.register
def _cleanup_at_exit() -> None:
    for name in started_containers():
        with contextlib.suppress(Exception):
            remove_container(name)


def ensure_openssl() -> str:
    """Path of the host's openssl; apt-get installs it when missing."""
    path = shutil.which("openssl")
    if path is None:
        subprocess.run(
            ["apt-get", "install", "-y", "openssl"], check=True, timeout=600, capture_output=True
        )
        path = shutil.which("openssl")
        if path is None:
            raise AsteriskError("openssl is missing and apt-get install openssl did not help")
    return path


def make_certificate(directory: Path, common_name: str, ip: str) -> tuple[Path, Path]:
    """A self-signed RSA-2048 certificate and its unencrypted key (asterisk.crt/.key), ~0.1 s."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / "asterisk.crt", directory / "asterisk.key"
    proc = subprocess.run(
        [
            ensure_openssl(),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "3650",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-subj",
            f"/CN={common_name}",
            "-addext",
            f"subjectAltName=IP:{ip}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 or not crt.exists() or not key.exists():
        raise AsteriskError(f"openssl req failed ({proc.returncode}): {proc.stderr.strip()}")
    os.chmod(key, 0o600)
    return crt, key


def _without_section(text: str, section: str) -> str:
    """text without [section] and its lines (up to the next blank line); fails if absent."""
    kept, skipping, found = [], False, False
    for line in text.splitlines(keepends=True):
        if line.strip() == f"[{section}]":
            skipping = found = True
        elif skipping and not line.strip():
            skipping = False
        if not skipping:
            kept.append(line)
    if not found:
        raise AsteriskError(f"no [{section}] section to leave out")
    return "".join(kept)


def default_rtp_range(bind_ip: str, width: int = 200) -> tuple[int, int]:
    """A port range derived from the bind address, so that containers bound to different
    loopback addresses (127.0.10.1, 127.0.10.2, ...) never share RTP ports even when a
    socket is bound to the wildcard address (20000-49999, 150 slots)."""
    slot = int(ipaddress.ip_address(bind_ip)) % 150
    start = 20000 + slot * width
    return start, start + width - 1


ARI_PORT = 8088
# What ARI's dynamic configuration needs of the modules testbed/asterisk/config leaves out.
ARI_MODULES = (
    "res_ari.so",
    "res_ari_asterisk.so",
    "res_ari_model.so",
    "res_stasis.so",
    "res_http_websocket.so",
    "res_websocket_client.so",
)
# The trunk object types, each in pjsip.conf's files and then in memory, where ARI puts them
# (the sorcery.conf section each type is configured under).
ARI_TYPES = {
    "auth": "res_pjsip",
    "aor": "res_pjsip",
    "endpoint": "res_pjsip",
    "identify": "res_pjsip_endpoint_identifier_ip",
}


def map_types(config_dir: Path, wizards: dict[str, list[str]]) -> None:
    """sorcery.conf: `type=wizard` lines per trunk type, into its section when it exists
    (sorcery reads the first section of a name only)."""
    sections: dict[str, list[str]] = {}
    for kind, section in ARI_TYPES.items():
        sections.setdefault(section, []).extend(f"{kind}={w}" for w in wizards[kind])
    sorcery = config_dir / "sorcery.conf"
    text = sorcery.read_text()
    for section, lines in sections.items():
        header = f"[{section}]\n"
        added = header + "\n".join(lines) + "\n"
        text = text.replace(header, added, 1) if header in text else f"{text}\n{added}"
    sorcery.write_text(text)


def enable_ari(config_dir: Path, bind_ip: str, user: str, password: str) -> None:
    """ARI on bind_ip:ARI_PORT with one user, and the trunk types in memory after the files:
    what a pod needs to take its trunks over ARI (trunk_operator.pod.ari)."""
    modules = config_dir / "modules.conf"
    modules.write_text(
        "".join(
            line
            for line in modules.read_text().splitlines(keepends=True)
            if not any(line.startswith(f"noload => {m}") for m in ARI_MODULES)
        )
    )
    (config_dir / "http.conf").write_text(
        f"[general]\nenabled = yes\nbindaddr = {bind_ip}\nbindport = {ARI_PORT}\n"
    )
    (config_dir / "ari.conf").write_text(
        f"[general]\nenabled = yes\n\n[{user}]\ntype = user\nread_only = no\n"
        f"password = {password}\n"
    )
    map_types(
        config_dir,
        {kind: [f"config,pjsip.conf,criteria=type={kind}", "memory"] for kind in ARI_TYPES},
    )


class AsteriskContainer:
    """One Asterisk container. ``name`` is a base name; the container is called
    ``trunkop-<name>-<random>`` unless ``unique=False`` (then ``name`` is used as given and
    must start with ``trunkop-``)."""

    def __init__(
        self,
        name: str = "asterisk",
        bind_ip: str = "127.0.10.1",
        hosts: dict[str, str] | None = None,
        *,
        port: int = 5060,
        tls_port: int = TLS_PORT,
        tls: bool = True,
        rtp_range: tuple[int, int] | None = None,
        unique: bool = True,
        image: str = IMAGE,
        workdir: str | os.PathLike | None = None,
        ready_timeout: float = 120,
        ari: tuple[str, str] | None = None,
    ) -> None:
        if unique:
            base = name[len(PREFIX) :] if name.startswith(PREFIX) else name
            self.name = f"{PREFIX}{base}-{secrets.token_hex(3)}"
        else:
            if not name.startswith(PREFIX):
                raise ValueError(f"container names must start with {PREFIX!r}")
            self.name = name
        self.bind_ip = bind_ip
        self.port = port
        self.tls_port = tls_port
        self.tls = tls
        self.hosts: dict[str, str] = dict(hosts or {})
        self.rtp_range = rtp_range or default_rtp_range(bind_ip)
        self.image = image
        self.ready_timeout = ready_timeout
        self.ari = ari
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.config_dir = self.workdir / "etc-asterisk"

    # ---------------------------------------------------------------- lifecycle
    @property
    def bind(self) -> str:
        return f"{self.bind_ip}:{self.port}"

    @property
    def tls_bind(self) -> str:
        return f"{self.bind_ip}:{self.tls_port}"

    @property
    def ari_url(self) -> str:
        """Where ARI listens with ``ari=(user, password)``: on the container's own address."""
        return f"http://{self.bind_ip}:{ARI_PORT}/ari"

    def render_config(self) -> Path:
        """Fresh copy of the base configuration (empty pjsip.d/ and extensions.d/, a new
        self-signed certificate in keys/; without tls, no transport-tls and no certificate)."""
        if self.config_dir.exists():
            shutil.rmtree(self.config_dir)
        shutil.copytree(BASE_CONFIG, self.config_dir)
        subs = {
            "@BIND@": self.bind,
            "@TLSBIND@": self.tls_bind,
            "@RTPSTART@": str(self.rtp_range[0]),
            "@RTPEND@": str(self.rtp_range[1]),
        }
        for path in self.config_dir.glob("*.conf"):
            text = path.read_text()
            for key, value in subs.items():
                text = text.replace(key, value)
            if not self.tls and path.name == "pjsip.conf":
                text = _without_section(text, TLS_TRANSPORT)
            path.write_text(text)
        for sub in ("pjsip.d", "extensions.d"):
            (self.config_dir / sub).mkdir(mode=0o777)
            os.chmod(self.config_dir / sub, 0o777)
        if self.tls:
            make_certificate(self.config_dir / "keys", self.name, self.bind_ip)
        if self.ari:
            enable_ari(self.config_dir, self.bind_ip, *self.ari)
        return self.config_dir

    def start(self) -> AsteriskContainer:
        if not image_exists(self.image):
            raise AsteriskError(f"image {self.image} missing: run {BUILD_SCRIPT}")
        if container_exists(self.name):
            remove_container(self.name)
        self.render_config()
        args = [
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=20000:20000",
            "--network",
            "host",
            "--name",
            self.name,
            "--label",
            f"{LABEL}=1",
            "--label",
            f"{LABEL}.pid={os.getpid()}",
            "-v",
            f"{self.config_dir}:/etc/asterisk",
        ]
        for host, ip in self.hosts.items():
            args += ["--add-host", f"{host}:{ip}"]
        args += [self.image, "/usr/sbin/asterisk", "-f", "-n", "-vvv"]
        with _lock:
            _started.add(self.name)
        _podman(*args, timeout=180)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until `core show version` answers and `pjsip show transports` lists our transports
        (transport-udp on bind, and transport-tls on tls_bind unless tls=False)."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        last = ""
        while True:
            if not self.running():
                raise AsteriskError(f"{self.name} exited during startup:\n{self.logs()[-3000:]}")
            try:
                version = self.rx("core show version", timeout=20, check=False)
                if version.startswith("Asterisk "):
                    transports = self.rx("pjsip show transports", timeout=20, check=False)
                    if self._transports_up(transports):
                        return
                    last = transports
                else:
                    last = version
            except subprocess.TimeoutExpired as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise AsteriskError(
                    f"{self.name} not ready after {timeout or self.ready_timeout}s:"
                    f" {last.strip()[-500:]}\n{self.logs()[-3000:]}"
                )
            time.sleep(0.3)

    def detach(self) -> None:
        """Keep the container after this process exits (make demo); stop it by name later."""
        with _lock:
            _started.discard(self.name)

    def _transports_up(self, shown: str) -> bool:
        """`pjsip show transports` has a `Transport: ID  TYPE ... BIND` line for each (and
        none for transport-tls when tls=False)."""
        rows = {
            (words[1], words[2], words[-1])
            for words in map(str.split, shown.splitlines())
            if len(words) >= 4 and words[0] == "Transport:"
        }
        tls_row = (TLS_TRANSPORT, "tls", self.tls_bind) in rows
        return (TRANSPORT, "udp", self.bind) in rows and tls_row == self.tls

    def running(self) -> bool:
        proc = _podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "true"

    def kill(self) -> None:
        """Simulate a crash: SIGKILL Asterisk (the container stops, it is not removed)."""
        _podman("kill", "--signal", "KILL", self.name, check=False)
        deadline = time.monotonic() + 30
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)

    def restart(self) -> AsteriskContainer:
        """Replace the container by a fresh one: same name, bind address, hosts (including
        add_host() entries) and base config; pjsip.d/ and extensions.d/ are empty again."""
        remove_container(self.name)
        return self.start()

    def restart_in_place(self, timeout: float | None = None) -> AsteriskContainer:
        """Restart the container as it is: /etc/asterisk is kept (as a pod's emptyDir is when
        its container restarts), Asterisk starts again from the files there."""
        _podman("restart", "-t", "2", self.name, timeout=120)
        self.wait_ready(timeout)
        return self

    def stop(self) -> None:
        """podman rm -f NAME and verify it is gone; removes the rendered config too."""
        remove_container(self.name)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> AsteriskContainer:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- commands
    def exec(
        self, *cmd: str, input: str | bytes | None = None, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess:
        """podman exec [-i] NAME CMD..."""
        args = ["exec", *(["-i"] if input is not None else []), self.name, *cmd]
        return _podman(*args, input=input, timeout=timeout, check=check)

    def rx(self, cmd: str, timeout: float = 60, check: bool = True) -> str:
        """podman exec NAME asterisk -rx CMD; returns stdout."""
        proc = self.exec("asterisk", "-rx", cmd, timeout=timeout, check=False)
        if check and (
            proc.returncode != 0
            or "Unable to connect to remote asterisk" in proc.stdout + proc.stderr
        ):
            raise AsteriskError(
                f"asterisk -rx {cmd!r} failed ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()}"
            )
        return proc.stdout

    def write_file(self, path: str, content: str, mode: str = "0644") -> None:
        """Write a file inside the container, the way an operator would (through exec)."""
        self.exec(
            "sh",
            "-c",
            'umask 022; cat > "$1.tmp" && chmod "$2" "$1.tmp" && mv -f "$1.tmp" "$1"',
            "sh",
            path,
            mode,
            input=content,
        )

    def read_file(self, path: str) -> str:
        return self.exec("cat", path).stdout

    def remove_file(self, path: str) -> None:
        self.exec("rm", "-f", path)

    def add_host(self, name: str, ip: str) -> None:
        """Append `ip name` to the container's /etc/hosts and make Asterisk see it.

        pjsip resolves names through res_resolver_unbound, which reads /etc/hosts only when
        its configuration is (re)applied, and a reload with an unchanged resolver_unbound.conf
        is a no-op. So the file gets a new comment line and the module is reloaded; from then
        on every new request (qualify OPTIONS, INVITE) resolves the name. The mapping is kept
        for restart() (as --add-host)."""
        self.hosts[name] = ip
        self.exec(
            "sh",
            "-c",
            'printf "%s\\t%s\\n" "$1" "$2" >> /etc/hosts && '
            'printf "; hosts changed: %s %s\\n" "$2" "$1" >> '
            "/etc/asterisk/resolver_unbound.conf",
            "sh",
            ip,
            name,
        )
        out = self.rx("module reload res_resolver_unbound.so")
        if "reloaded successfully" not in out:
            raise AsteriskError(f"reloading res_resolver_unbound.so after add_host: {out.strip()}")

    def logs(self) -> str:
        proc = _podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def version(self) -> str:
        return self.rx("core show version").strip()

    def __repr__(self) -> str:
        return f"AsteriskContainer({self.name!r}, bind={self.bind!r})"
