"""Images in the real node's containerd: the pause image (``pause.c`` built with
``gcc -static`` into a FROM-scratch image, kept as a docker-archive in the cache; no
registry here) and imports from podman. Each import is labelled with what it came from, so
an image that is there already is not imported again."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from pathlib import Path

from testbed.cluster import TESTBED_DIR
from testbed.node.errors import NodeError
from testbed.node.processes import run

CTR_NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
SOURCE_LABEL = "trunkop.dev/source"  # containerd image label: what it was imported from
PAUSE_SOURCE = TESTBED_DIR / "node" / "pause.c"
PAUSE_CONTAINERFILE = 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n'


def ctr(
    socket: Path, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``ctr`` against the containerd at ``socket``, in the CRI plugin's namespace."""
    return run(
        ["ctr", "--address", str(socket), "--namespace", CTR_NAMESPACE, *args],
        check=check,
        timeout=timeout,
    )


def has_image(socket: Path, ref: str, key: str) -> bool:
    r = ctr(socket, "images", "ls", f"name=={ref}", check=False)
    return f"{SOURCE_LABEL}={key.replace(':', '-')}" in r.stdout


def import_archive(socket: Path, archive: Path, ref: str, key: str) -> None:
    if has_image(socket, ref, key):
        return
    ctr(socket, "images", "import", str(archive))
    ctr(socket, "images", "label", ref, f"{SOURCE_LABEL}={key}")


def import_from_podman(socket: Path, ref: str) -> float:
    """Copy a podman image into containerd (skipped when that image id is there already).
    Returns the seconds spent (0.0 when skipped)."""
    image_id = run(["podman", "image", "inspect", "--format", "{{.Id}}", ref]).stdout.strip()
    if has_image(socket, ref, image_id):
        return 0.0
    start = time.monotonic()
    # A pipe, not a file: the Asterisk image is 316 MB.
    save = subprocess.Popen(
        ["podman", "save", "--format", "docker-archive", ref],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert save.stdout is not None
    try:
        imp = subprocess.run(
            ["ctr", "--address", str(socket), "--namespace", CTR_NAMESPACE,
             "images", "import", "-"],
            stdin=save.stdout, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    finally:
        save.stdout.close()
        save_err = save.communicate(timeout=600)[1]
    if save.returncode != 0 or imp.returncode != 0:
        raise NodeError(
            f"importing {ref} failed: podman save {save.returncode}: "
            f"{save_err.decode(errors='replace').strip()}; ctr import {imp.returncode}: "
            f"{imp.stderr.strip()}"
        )
    ctr(socket, "images", "label", ref, f"{SOURCE_LABEL}={image_id.replace(':', '-')}")
    return time.monotonic() - start


def ensure_pause_archive(home: Path, timings: dict[str, float]) -> tuple[str, Path, str]:
    """The pause image as a docker-archive in the cache (``home``), keyed by pause.c's hash:
    (image ref, archive, source key). A build is timed in ``timings["pause build"]``."""
    digest = hashlib.sha256(PAUSE_SOURCE.read_bytes() + PAUSE_CONTAINERFILE.encode()).hexdigest()[
        :12
    ]
    ref = f"localhost/trunkop-pause:{digest}"
    archive = home / f"pause-{digest}.tar"
    if archive.exists():
        return ref, archive, f"pause-{digest}"
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        run(["gcc", "-static", "-O2", "-Wall", "-o", f"{d}/pause", str(PAUSE_SOURCE)])
        Path(d, "Containerfile").write_text(PAUSE_CONTAINERFILE)
        run(["podman", "build", "--quiet", "--tag", ref, d])
        try:
            run(["podman", "save", "--format", "docker-archive", "-o", f"{archive}.tmp", ref])
        finally:
            # The archive is the cache; the podman copy would only be clutter.
            run(["podman", "rmi", ref], check=False)
    Path(f"{archive}.tmp").replace(archive)
    timings["pause build"] = time.monotonic() - start
    return ref, archive, f"pause-{digest}"
