"""`make demo` / `make demo-down`: the path a user takes, left running for you to poke at.

    python -m testbed.demo up     # cluster + real node, helm install, Asterisk pod, a trunk
    python -m testbed.demo down   # stop exactly what `up` started (handles in state.json)

`up`: a kwokctl control plane, the real kubelet node (testbed/node/), `helm install` of
charts/ with the locally built operator image, Asterisk from examples/asterisk as a real pod,
the sipp Twilio stand-in, then the three objects of examples/ applied with kubectl and a call
through the trunk. Everything lives under $TRUNKOP_CACHE/demo/; state.json holds what `down`
needs: the cluster's name and work dir, the node's lock holder (the node's own record of its
host changes is $TRUNKOP_CACHE/node/run.json) and sipp's pid.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from testbed.asterisk import ensure_image
from testbed.cluster import Cluster, cache_dir, pid_alive
from testbed.node import KubeletNode, NodeError
from testbed.operator_process import stop_pid
from testbed.release import (
    RELEASE,
    SYSTEM_NAMESPACE,
    Release,
    asterisk_objects,
    project_version,
    release_for,
    restricted_namespace,
)
from testbed.sipp import TwilioStandIn
from tools.chartgen import CHART, helm_binary

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "telephony"
CLUSTER_NAME = "trunkop-demo"
POD = "asterisk-0"
# Addresses of the demo's own: the test suite's Asterisk pods and stand-ins use others, so
# `make test` can run next to a running demo (except the in-cluster tier: one real node).
ASTERISK_IP = "127.0.10.200"
TWILIO_IP = "127.0.0.40"
TERMINATION_HOST = "acme.pstn.twilio.com"
EXAMPLES = ("acme-secret.yaml", "acme-trunk.yaml", "acme-dids.yaml")
OPERATOR = "deploy/asterisk-trunk-operator"


def demo_dir() -> Path:
    return cache_dir() / "demo"


def state_file() -> Path:
    return demo_dir() / "state.json"


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def wait_until(what: str, check: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


def up() -> int:
    if state_file().exists():
        print(f"the demo is already up ({state_file()}); `make demo-down` stops it")
        return 1
    demo_dir().mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}
    try:
        return _up(state)
    except BaseException as e:
        print("start-up failed: stopping what was started", file=sys.stderr)
        _down(state)
        if isinstance(e, NodeError):  # e.g. the test suite holds the one real node
            raise SystemExit(f"real node: {e}") from None
        raise


def _save(state: dict[str, Any]) -> None:
    state_file().write_text(json.dumps(state, indent=2))


def operator_image() -> str:
    """The image `make operator-image` built; rebuilt here only if its inputs changed (the
    script is cached by an inputs hash), quietly: make already printed its progress."""
    done = subprocess.run(
        ["bash", str(ROOT / "testbed/build-operator-image.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"building the operator image failed:\n{done.stdout}{done.stderr}")
    return f"localhost/asterisk-trunk-operator:{project_version()}"


def _up(state: dict[str, Any]) -> int:
    started = time.monotonic()
    image = operator_image()
    ensure_image()  # localhost/asterisk:22 (make image built it)

    step("control plane (etcd, kube-apiserver, controller-manager, scheduler; kwokctl)")
    workdir = demo_dir() / "cluster"
    cluster = Cluster(CLUSTER_NAME, workdir=workdir)
    state["cluster"] = {"name": CLUSTER_NAME, "workdir": str(workdir)}
    _save(state)
    cluster.start()
    kubeconfig = cluster.kubeconfig
    assert kubeconfig is not None
    state["kubeconfig"] = kubeconfig
    _save(state)

    node = KubeletNode(cluster)
    step(f"real node {node.name} (containerd + kubelet on this machine)")
    node.start()
    try:
        holder = node.detach()  # `up` exits, the node stays; the lock stays taken
    except BaseException:
        node.stop()
        raise
    assert node.record is not None
    state["node"] = {"name": node.name, "lock_holder_pid": holder, "workdir": node.record.workdir}
    _save(state)
    for ref in (image, "localhost/asterisk:22"):
        node.import_image(ref)  # podman -> containerd; kept in the cache for the next run

    chart = CHART.relative_to(ROOT)
    step(f"helm install {RELEASE} {chart} -n {SYSTEM_NAMESPACE} (image {image})")
    restricted_namespace(cluster)
    release = release_for(cluster, node, image)
    release.install()

    step(f"Twilio stand-in (sipp) answering for {TERMINATION_HOST} on {TWILIO_IP}:5060")
    secret = _example("acme-secret.yaml")
    username, password = secret["stringData"]["username"], secret["stringData"]["password"]
    (demo_dir() / "sipp").mkdir(exist_ok=True)
    standin = TwilioStandIn(
        TWILIO_IP, 5060, username, password, workdir=demo_dir() / "sipp"
    ).start()
    standin.detach()
    state["sipp_pid"] = standin.pid
    _save(state)

    step(f"kubectl apply -k examples/asterisk -n {NAMESPACE} (StatefulSet, pod {POD})")
    cluster.kubectl("create", "namespace", NAMESPACE)
    objects = asterisk_objects(cluster, node, ASTERISK_IP, {TERMINATION_HOST: TWILIO_IP})
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-",
                    input="\n---\n".join(yaml.safe_dump(o) for o in objects))  # fmt: skip
    wait_until(
        f"Asterisk answering in {POD}", lambda: "Asterisk" in rx(cluster, "core show version")
    )

    files = " ".join(f"-f examples/{name}" for name in EXAMPLES)
    step(f"kubectl apply -n {NAMESPACE} {files}")
    _apply_examples(cluster, release)

    step("a call through the trunk (originate in the pod, answered by the stand-in)")
    rx(cluster, "channel originate Local/5551234567@TwilioDynamicIVR application Wait 1")
    standin.wait_for(lambda msgs: [m for m in msgs if m.method == "BYE"], timeout=30)
    invite = standin.invites()[-1]
    verified = standin.verify_digest(password)

    print()
    show = cluster.kubectl("get", "-n", NAMESPACE, "twiliotrunks,didsegments").stdout
    print(f"$ kubectl get -n {NAMESPACE} twiliotrunks,didsegments\n{show}")
    pods = cluster.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE).stdout
    print(f"$ kubectl get pods -n {SYSTEM_NAMESPACE}\n{pods}")
    print(f'$ kubectl exec -n {NAMESPACE} {POD} -c asterisk -- asterisk -rx "pjsip show endpoints"')
    # Without the legend Asterisk prints above the table, nor its runs of blank lines.
    table = rx(cluster, "pjsip show endpoints").split("=" * 20)[-1].strip("=\n").rstrip()
    print(re.sub(r"\n{3,}", "\n\n", table) + "\n")
    print(
        f"Twilio stand-in got INVITE {invite.uri} from {invite.from_user}:"
        f" digest {'verified' if verified else 'WRONG'}, codecs {' '.join(invite.codecs)}"
    )
    print()
    print(f"Up in {time.monotonic() - started:.0f} s. Try it:")
    print(f"  export KUBECONFIG={kubeconfig}")
    print(f"  alias kubectl={cluster.bin_dir}/kubectl")
    print(f"  alias helm={helm_binary()}")
    print(f"  kubectl get -n {NAMESPACE} twiliotrunk acme -o yaml")
    print(f"  helm status {RELEASE} -n {SYSTEM_NAMESPACE}")
    print(f"  kubectl logs -n {SYSTEM_NAMESPACE} {OPERATOR}    # the operator's log")
    print("Stop everything: make demo-down")
    return 0


def rx(cluster: Cluster, command: str) -> str:
    """An Asterisk CLI command in the pod, the way the operator runs them (exec)."""
    out = cluster.kubectl(
        "exec", "-n", NAMESPACE, POD, "-c", "asterisk", "--", "asterisk", "-rx", command,
        check=False,
    )  # fmt: skip
    return str(out.stdout)


def _apply_examples(cluster: Cluster, release: Release) -> None:
    args = [a for name in EXAMPLES for a in ("-f", str(ROOT / "examples" / name))]
    cluster.kubectl("apply", "-n", NAMESPACE, *args)
    waits = [
        ("Ready", "twiliotrunk/acme"),
        ("Ready", "didsegment/acme-main"),
        ("Reachable", "twiliotrunk/acme"),  # OPTIONS answered by the stand-in
        ("Ready", f"pod/{POD}"),  # the readiness gate: delivered and verified
    ]
    for condition, obj in waits:
        done = cluster.kubectl(
            "wait", "-n", NAMESPACE, f"--for=condition={condition}", "--timeout=90s", obj,
            timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(
                f"{obj} not {condition}: {done.stderr.strip()}\n{release.diagnostics()}"
            )


def _example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    return doc


def _is_program(pid: int, program: str) -> bool:
    """pid is still `program` (recorded pids may have been recycled since `up`)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False
    return Path(argv0.decode(errors="replace")).name == program and pid_alive(pid)


def _down(state: dict[str, Any]) -> bool:
    """Undo in reverse order of `up`. Every step runs, tolerates what is already gone and
    reports its failure; state.json stays unless all succeeded, so `down` can be retried."""
    failed = False

    def attempt(what: str, action: Any) -> None:
        nonlocal failed
        try:
            action()
        except Exception as e:
            failed = True
            print(f"stopping {what} failed: {e}", file=sys.stderr)

    pid = state.get("sipp_pid")
    if pid and _is_program(pid, "sipp"):
        attempt("sipp", lambda: stop_pid(pid))
    if "cluster" in state:
        cluster = Cluster.attach(state["cluster"]["name"], state["cluster"]["workdir"])
        if "node" in state:
            # Before the cluster: the kubelet tears its pods down as the API tells it to.
            node = KubeletNode(cluster, state["node"]["name"])
            attempt("the real node", lambda: node.stop_detached(state["node"]["lock_holder_pid"]))
        attempt("the cluster", cluster.stop)
    if not failed:
        state_file().unlink(missing_ok=True)
    return not failed


def down() -> int:
    if not state_file().exists():
        print("the demo is not up")
        return 0
    if not _down(json.loads(state_file().read_text())):
        print(f"some of the demo is left; `make demo-down` again retries ({state_file()})")
        return 1
    print("demo stopped: everything `make demo` started is gone")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["up"]:
        return up()
    if argv[:1] == ["down"]:
        return down()
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
