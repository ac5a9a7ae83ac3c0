"""`make demo` / `make demo-down`: the path a user takes, left running for you to poke at.

    python -m testbed.demo up     # cluster + real node, helm install, Asterisk pod, a trunk
    python -m testbed.demo down   # stop exactly what `up` started (handles in state.json)

`up`: a kwokctl control plane, the real kubelet node (testbed/node/), Twilio's stand-ins (its
REST API built from its specs, on the host's address the operator's pod reaches, and its SIP
side: sipp behind a gate that checks digests against that REST state; testbed/twilio_process.py)
with the trunk a user made by hand, `helm install` of charts/ with the locally built operator
image, Asterisk from examples/asterisk as a real pod, then the three objects of examples/
applied with kubectl and a call through the trunk; then its Twilio end handed to the operator
(examples/twilio) and its password rotated, with a call after each step. Everything lives under
$TRUNKOP_CACHE/demo/; state.json holds what `down` needs: the cluster's name and work dir, the
node's lock holder (the node's own record of its host changes is $TRUNKOP_CACHE/node/run.json)
and the Twilio stand-ins' pid.
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
from testbed.demo_twilio import Twilio
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
from tools.chartgen import CHART, helm_binary

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "telephony"
CLUSTER_NAME = "trunkop-demo"
POD = "asterisk-0"
# Addresses of the demo's own: the test suite's Asterisk pods and stand-ins use others, so
# `make test` can run next to a running demo (except the in-cluster tier: one real node).
ASTERISK_IP = "127.0.10.200"
TWILIO_IP = "127.0.0.40"  # Twilio's SIP side (the gate; sipp behind it on 5070)
TWILIO_REST_PORT = 8910  # Twilio's REST API, on the host's address (node_ip)
TERMINATION_HOST = "acme.pstn.twilio.com"
ROTATED = "Rotated;Passw0rd-2026"
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

    secret = _example("acme-secret.yaml")
    username, password = secret["stringData"]["username"], secret["stringData"]["password"]
    rest = f"{node.node_ip}:{TWILIO_REST_PORT}"
    step(f"Twilio stand-ins: REST API on {rest}, SIP side for {TERMINATION_HOST} on {TWILIO_IP}")
    twilio = Twilio.start(demo_dir(), rest, TWILIO_IP)
    state["twilio_pid"] = twilio.pid
    _save(state)
    twilio.trunk_by_hand(TERMINATION_HOST, username, password)

    chart = CHART.relative_to(ROOT)
    step(f"helm install {RELEASE} {chart} -n {SYSTEM_NAMESPACE} (image {image})")
    restricted_namespace(cluster)
    extra_env = [*node.api_env(), {"name": "TRUNKOP_TWILIO_BASE_URL", "value": twilio.url}]
    release = release_for(cluster, node, image, extraEnv=extra_env)
    release.install()

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
    call = _call(cluster, twilio)

    print()
    show = cluster.kubectl("get", "-n", NAMESPACE, "twiliotrunks,didsegments").stdout
    print(f"$ kubectl get -n {NAMESPACE} twiliotrunks,didsegments\n{show}")
    pods = cluster.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE).stdout
    print(f"$ kubectl get pods -n {SYSTEM_NAMESPACE}\n{pods}")
    print(f'$ kubectl exec -n {NAMESPACE} {POD} -c asterisk -- asterisk -rx "pjsip show endpoints"')
    # Without the legend Asterisk prints above the table, nor its runs of blank lines.
    table = rx(cluster, "pjsip show endpoints").split("=" * 20)[-1].strip("=\n").rstrip()
    print(re.sub(r"\n{3,}", "\n\n", table) + "\n")
    print(call)
    print()
    _twilio_side(cluster, twilio)
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


def _call(cluster: Cluster, twilio: Twilio) -> str:
    """One call out through the trunk; what Twilio's SIP side made of its credentials."""
    seen = len(twilio.decisions())
    rx(cluster, "channel originate Local/5551234567@TwilioDynamicIVR application Wait 1")
    wait_until("the call at Twilio's SIP side", lambda: len(twilio.decisions()) > seen, 30)
    decision = twilio.decisions()[-1]
    verdict = "accepted" if decision["accepted"] else f"REFUSED ({decision['reason']})"
    return f"Twilio got the call from Asterisk as {decision['username']}: digest {verdict}"


def _twilio_side(cluster: Cluster, twilio: Twilio) -> None:
    """The trunk's Twilio end handed to the operator, then a rotation, a call after each."""
    docs = list(yaml.safe_load_all((ROOT / "examples/twilio/account.yaml").read_text()))
    docs[0]["stringData"] = {"authToken": twilio.auth_token}  # the stand-in's account
    docs[1]["spec"]["accountSid"] = twilio.account_sid
    trunk = _example("twilio/acme-trunk.yaml")
    trunk["spec"]["twilio"].update(credentialPropagationSeconds=5, rotationGraceSeconds=5)
    step("kubectl apply -f examples/twilio/account.yaml -f examples/twilio/acme-trunk.yaml"
         " (propagation and grace shortened to 5 s)")  # fmt: skip
    objects = "\n---\n".join(yaml.safe_dump(d) for d in (*docs, trunk))
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=objects)
    _wait_generation(cluster, 1)
    print(_call(cluster, twilio))
    step("rotation: kubectl patch secret acme-sip (a new password, as a vault would)")
    patch = json.dumps({"stringData": {"password": ROTATED}})
    cluster.kubectl("patch", "-n", NAMESPACE, "secret", "acme-sip", "-p", patch)
    _wait_generation(cluster, 2)
    list_sid = _status(cluster)["twilio"]["credentialListSid"]
    wait_until(
        "the old credential removed from Twilio",
        lambda: twilio.usernames(list_sid) == ["acme-trunk-2"],
        60,
    )
    print(_call(cluster, twilio))
    print()
    conditions = (
        'jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\\n"}{end}'
    )
    for args in (
        ("get", "-n", NAMESPACE, "twilioaccounts,twiliotrunks"),
        ("get", "-n", NAMESPACE, "twiliotrunk", "acme", "-o", conditions),
        ("get", "-n", NAMESPACE, "twiliotrunk", "acme", "-o", "jsonpath={.status.twilio}"),
        ("get", "events", "-n", NAMESPACE, "--field-selector", "involvedObject.name=acme",
         "--sort-by=.lastTimestamp", "-o", "custom-columns=REASON:.reason,MESSAGE:.message"),
    ):  # fmt: skip
        shown = " ".join(a if " " not in a and "{" not in a else f"'{a}'" for a in args)
        print(f"$ kubectl {shown}\n{cluster.kubectl(*args).stdout.rstrip()}\n")


def _status(cluster: Cluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "-n", NAMESPACE, "twiliotrunk", "acme", "-o", "json")
    return dict(json.loads(out.stdout).get("status") or {})


def _wait_generation(cluster: Cluster, generation: int) -> None:
    """Until acme is Ready with the credential of that generation at both ends."""

    def done() -> bool:
        status = _status(cluster)
        ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
        twilio = status.get("twilio") or {}
        return (
            bool(ready and ready[0]["status"] == "True") and twilio.get("generation") == generation
        )

    wait_until(f"acme Ready with credential generation {generation}", done, 120)


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

    pid = state.get("twilio_pid")
    if pid and pid_alive(pid):
        attempt("the Twilio stand-ins", lambda: stop_pid(pid))
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
