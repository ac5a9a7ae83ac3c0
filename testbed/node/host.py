"""What the real node changes on the host, recorded and undone.

The kubelet and containerd change the host whatever we configure; ``HostRecord.take()``
records the state before the node starts and ``undo_host_changes()`` undoes what is new:
sysctls, the CNI bridge, ``/kubepods`` cgroups, fixed paths
(``/var/lib/kubelet/device-plugins``, ``/var/log/containers``, ``/var/lib/cni``,
``/run/containerd``), mounts under our own directories, KUBE-*/CNI-* iptables chains (kubelet
is told not to create them; removed if they appear anyway). The record is also written to
the cache (``save_record()``), so a run that died without ``stop()`` is undone by the next
``start()`` (``undo_stale_run()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from testbed.cluster import pid_alive
from testbed.node.config import BRIDGE, CNI_NETWORK
from testbed.node.errors import NodeError
from testbed.node.processes import cmdline, run

# Set by kubelet (setupKernelTunables, whatever the config says) or by the CNI bridge
# plugin (forwarding, as the pods' gateway).
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
)
# Paths kubelet, containerd or CNI use whatever we configure. Deepest first.
FIXED_PATHS = (
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/opt/containerd",
    "/run/netns",
)
# In these, every entry that appears while the node runs is the node's.
KUBELET_OWNED = ("/var/lib/kubelet/device-plugins", "/var/lib/kubelet", "/var/log/containers",
                 "/var/log/pods")  # fmt: skip
# Only kubelet's: our CNI config adds no iptables rules (no ipMasq, no portmap), and CNI-*
# chains may be podman's (its CNI backend) and in use.
CHAIN_PREFIXES = ("KUBE-",)
FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
IPTABLES_NFT_TABLES = {f"{fam} {t}" for fam in ("ip", "ip6") for t in IPTABLES_TABLES}


# ------------------------------------------------------------------ host inspection


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount in our mount namespace, in mount order."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        out.append((_unescape(left.split()[4]), right.split()[0] if right else ""))
    return out


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def mounts_under(roots: Iterable[str]) -> list[str]:
    roots = [r for r in roots if r]
    return [mp for mp, _ in _mountinfo() if _under(mp, roots)]


def cgroup_mounts() -> list[str]:
    return [mp for mp, fstype in _mountinfo() if fstype in ("cgroup", "cgroup2")]


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    out = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            out[name] = _sysctl_path(name).read_text().strip()
    return out


def iptables_chains() -> dict[str, list[str]]:
    """'iptables filter' -> user-defined chains (listing creates nothing, also with nft)."""
    out: dict[str, list[str]] = {}
    for binary in ("iptables", "ip6tables"):
        if shutil.which(binary) is None:
            continue
        for table in IPTABLES_TABLES:
            r = run([binary, "-w", "5", "-t", table, "-S"], check=False, timeout=30)
            if r.returncode == 0:
                out[f"{binary} {table}"] = [
                    line.split()[1] for line in r.stdout.splitlines() if line.startswith("-N ")
                ]
    return out


def nft_tables() -> list[str]:
    if shutil.which("nft") is None:
        return []
    r = run(["nft", "list", "tables"], check=False, timeout=30)
    return [
        line[len("table ") :].strip() for line in r.stdout.splitlines() if line.startswith("table ")
    ]


def netns_names() -> list[str]:
    d = Path("/run/netns")
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def host_address() -> str:
    """The host's own IPv4 address (the default route's interface): the node's InternalIP,
    and the address pods use to reach the API server."""
    r = run(["ip", "-4", "-o", "route", "show", "default"], check=False)
    words = r.stdout.split()
    devs = [words[words.index("dev") + 1]] if "dev" in words else []
    for dev_args in ([*(["dev", devs[0]] if devs else [])], []):
        out = run(["ip", "-4", "-o", "addr", "show", *dev_args, "scope", "global"], check=False)
        for line in out.stdout.splitlines():
            parts = line.split()
            if "inet" in parts:
                return parts[parts.index("inet") + 1].split("/")[0]
    raise NodeError("no global IPv4 address on this host")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a TIME_WAIT left by the previous kubelet is not a listener.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- the record


@dataclass
class HostRecord:
    """What the host looked like before the node started (and the pids it started)."""

    workdir: str
    containerd_root: str
    sysctls: dict[str, str]
    chains: dict[str, list[str]]
    nft_tables: list[str]
    netns: list[str]
    kubepods_before: list[str]  # cgroup mount points that already had /kubepods
    paths: dict[str, list[str] | None]  # fixed path -> its entries, None if it was absent
    bridge_existed: bool
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def take(cls, workdir: Path, containerd_root: Path) -> HostRecord:
        paths: dict[str, list[str] | None] = {}
        for p in FIXED_PATHS:
            d = Path(p)
            paths[p] = sorted(e.name for e in d.iterdir()) if d.is_dir() else None
        return cls(
            workdir=str(workdir),
            containerd_root=str(containerd_root),
            sysctls=read_sysctls(),
            chains=iptables_chains(),
            nft_tables=nft_tables(),
            netns=netns_names(),
            kubepods_before=[m for m in cgroup_mounts() if Path(m, "kubepods").exists()],
            paths=paths,
            bridge_existed=Path("/sys/class/net", BRIDGE).exists(),
        )

    def our_roots(self) -> list[str]:
        """Directories only this node writes to: every mount below them is ours."""
        roots = [self.workdir, self.containerd_root]
        roots += [p for p, entries in self.paths.items() if entries is None]
        return roots

    # ---- what is new since the record (= what the node left) ----
    def new_chains(self) -> dict[str, list[str]]:
        now = iptables_chains()
        out = {}
        for key, chains in now.items():
            new = [
                c for c in chains
                if c not in self.chains.get(key, []) and c.startswith(CHAIN_PREFIXES)
            ]  # fmt: skip
            if new:
                out[key] = new
        return out

    def new_kubepods(self) -> list[Path]:
        return [
            Path(m, "kubepods")
            for m in cgroup_mounts()
            if m not in self.kubepods_before and Path(m, "kubepods").exists()
        ]

    def changed_sysctls(self) -> dict[str, tuple[str, str]]:
        now = read_sysctls()
        changed = {k: (v, now[k]) for k, v in self.sysctls.items() if k in now and now[k] != v}
        if any(k in changed for k in FORWARDING) and self._podman_networking_appeared():
            # podman (netavark) set up bridge networking meanwhile and needs forwarding on:
            # turning it off would break its containers. Forwarding stays as podman wants.
            for k in FORWARDING:
                changed.pop(k, None)
        return changed

    def _podman_networking_appeared(self) -> bool:
        return any(
            c.startswith("NETAVARK") and c not in self.chains.get(key, [])
            for key, chains in iptables_chains().items()
            for c in chains
        )

    def new_paths(self) -> list[str]:
        """Entries of the fixed paths that appeared while the node ran, and are its own."""
        out: list[str] = []
        for p, before in self.paths.items():
            d = Path(p)
            if before is None:
                if d.exists() or d.is_symlink():
                    out.append(p)
            elif not d.is_dir():
                continue
            elif p in KUBELET_OWNED:
                out += [str(e) for e in d.iterdir() if e.name not in before]
            elif p == "/run/netns":  # containerd names its namespaces cni-<uuid>
                out += [
                    str(e)
                    for e in d.iterdir()
                    if e.name not in before and e.name.startswith("cni-")
                ]
            elif p == "/var/lib/cni":  # libcni's cache: <network>-<container id>-<ifname>
                for sub in ("results", "networks"):
                    ours = list(Path(p, sub).glob(f"{CNI_NETWORK}*"))
                    others = [e for e in Path(p, sub).glob("*") if e not in ours]
                    if sub not in before and not others and Path(p, sub).exists():
                        out.append(str(Path(p, sub)))
                    else:
                        out += [str(e) for e in ours]
        return sorted(set(out))

    def leftovers(self) -> list[str]:
        found = [f"process {pid}: {cmdline(pid)[:100]}" for pid in sorted(node_pids(self))]
        found += [f"mount {m}" for m in mounts_under(self.our_roots())]
        found += [
            f"netns {n}" for n in netns_names() if n not in self.netns and n.startswith("cni-")
        ]
        if not self.bridge_existed and Path("/sys/class/net", BRIDGE).exists():
            found.append(f"interface {BRIDGE}")
        found += [f"{k} chain {c}" for k, cs in self.new_chains().items() for c in cs]
        found += [f"cgroup {p}" for p in self.new_kubepods()]
        found += [
            f"sysctl {k}={new} (was {old})" for k, (old, new) in self.changed_sysctls().items()
        ]
        found += [f"path {p}" for p in self.new_paths()]
        if Path(self.workdir).exists():
            found.append(f"work dir {self.workdir}")
        return found


# ------------------------------------------------------------------------------- the undo


def alive_and_ours(pid: int, record: HostRecord) -> bool:
    # Recorded pids are only ours while their command line names our work dir (pids recycle).
    return pid_alive(pid) and record.workdir in cmdline(pid)


def node_pids(record: HostRecord) -> set[int]:
    """Processes of the node: the recorded ones, shims (their command line names our socket,
    which lives in the work dir) and everything in the /kubepods cgroups we created."""
    pids = {pid for pid in record.pids.values() if alive_and_ours(pid, record)}
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != me and record.workdir in cmdline(int(d.name)):
            pids.add(int(d.name))
    for kubepods in record.new_kubepods():
        for procs in kubepods.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in procs.read_text().split())
    return {p for p in pids if pid_alive(p)}


def undo_host_changes(record: HostRecord, log: Callable[[str], None]) -> None:
    """Undo everything the node changed on the host, as far as it is new since ``record``.

    Order matters: processes first (they hold mounts and cgroups), then mounts, then the
    directories and cgroups they were in.
    """
    for _ in range(3):
        pids = node_pids(record)
        if not pids:
            break
        log(f"killing leftover node processes {sorted(pids)}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)

    # Mounts below our own directories (kubelet's rshared root bind, volumes, container
    # rootfs, sandbox shm and netns): lazily, innermost first.
    for _ in range(5):
        mounts = mounts_under(record.our_roots())
        if not mounts:
            break
        for mp in reversed(mounts):
            run(["umount", "-l", mp], check=False)
    for name in netns_names():
        if name not in record.netns and name.startswith("cni-"):
            path = Path("/run/netns", name)
            run(["umount", "-l", str(path)], check=False)
            path.unlink(missing_ok=True)

    if not record.bridge_existed and Path("/sys/class/net", BRIDGE).exists():
        run(["ip", "link", "delete", BRIDGE], check=False)

    _undo_iptables(record, log)

    for name, (old, new) in record.changed_sysctls().items():
        log(f"sysctl {name}: {new} -> {old}")
        with contextlib.suppress(OSError):
            _sysctl_path(name).write_text(old)

    for kubepods in record.new_kubepods():
        dirs = sorted((p for p in kubepods.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, kubepods]:
            for _ in range(50):  # a cgroup is busy for a moment after its last task exits
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)

    if not mounts_under(record.our_roots()):
        for p in record.new_paths():
            path = Path(p)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree(record.workdir, ignore_errors=True)
    else:
        # Deleting through a mount could delete what a hostPath volume points at.
        log(f"mounts remain, not deleting directories: {mounts_under(record.our_roots())}")


def _undo_iptables(record: HostRecord, log: Callable[[str], None]) -> None:
    for key, chains in record.new_chains().items():
        binary, table = key.split()
        rules = run([binary, "-w", "5", "-t", table, "-S"], check=False).stdout.splitlines()
        for rule in rules:  # jumps into the new chains first, then the chains
            words = shlex.split(rule)
            if words[:1] == ["-A"] and any(
                words[i] in ("-j", "-g") and words[i + 1] in chains for i in range(len(words) - 1)
            ):
                run([binary, "-w", "5", "-t", table, "-D", *words[1:]], check=False)
        for chain in chains:
            run([binary, "-w", "5", "-t", table, "-F", chain], check=False)
        for chain in chains:
            log(f"{binary} -t {table} -X {chain}")
            run([binary, "-w", "5", "-t", table, "-X", chain], check=False)
    # iptables-nft creates whole nft tables on first use; drop those we caused, if empty.
    for table in nft_tables():
        if table in record.nft_tables or table not in IPTABLES_NFT_TABLES:
            continue
        listing = run(["nft", "list", "table", *table.split()], check=False).stdout
        rules = [
            line for line in (raw.strip() for raw in listing.splitlines())
            if line and not line.startswith(("table ", "chain ", "type ", "}"))
        ]  # fmt: skip
        if not rules:
            log(f"nft delete table {table}")
            run(["nft", "delete", "table", *table.split()], check=False)


# ------------------------------------------------------------------ the record in the cache


def save_record(record: HostRecord, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1))
    tmp.replace(path)


def load_record(path: Path) -> HostRecord | None:
    """The record saved at ``path``; None when there is none or it is unreadable."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        return HostRecord(**json.loads(path.read_text()))
    return None


def undo_stale_run(path: Path, log: Callable[[str], None]) -> None:
    """A previous run died without stop(): undo its host changes with its record."""
    if not path.exists():
        return
    try:
        stale = HostRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        log(f"ignoring unreadable {path}: {e}")
        path.unlink()
        return
    log(f"undoing the host changes of a previous run ({stale.workdir})")
    undo_host_changes(stale, log)
    left = stale.leftovers()
    if left:
        raise NodeError(f"a previous real node left things that could not be undone: {left}")
    path.unlink()
