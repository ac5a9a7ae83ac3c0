"""`make demo` / `make demo-down`: the whole local stack, left running for you to poke at.

    python -m testbed.demo up     # cluster, Asterisk pod, Twilio stand-in, operator, a trunk
    python -m testbed.demo down   # stop exactly what `up` started (names and pids in state)

Everything lives under $TRUNKOP_CACHE/demo/; state.json holds the handles `down` uses.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from testbed.asterisk import AsteriskContainer, container_exists, remove_container
from testbed.cluster import Cluster, cache_dir, pid_alive
from testbed.operator_process import OperatorProcess, stop_pid
from testbed.sipp import TwilioStandIn

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "telephony"
CLUSTER_NAME = "trunkop-demo"
CONTAINER = "trunkop-demo-asterisk-0"
POD = "asterisk-0"
ASTERISK_IP = "127.0.10.40"
TWILIO_IP = "127.0.0.40"
TERMINATION_HOST = "acme.pstn.twilio.com"
SITE_DIALPLAN = """\
[from-twilio]
exten => _+X.,1,NoOp(Inbound call for ${EXTEN})
 same => n,Answer()
 same => n,Playback(hello-world)
 same => n,Hangup()

[sales]
exten => 100,1,NoOp(Sales)
 same => n,Hangup()
"""


def demo_dir() -> Path:
    return cache_dir() / "demo"


def state_file() -> Path:
    return demo_dir() / "state.json"


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def wait_until(what: str, check: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}; see {demo_dir()}/operator.log")
        time.sleep(0.5)


def up() -> int:
    if state_file().exists():
        print(f"the demo is already up ({state_file()}); `make demo-down` stops it")
        return 1
    demo_dir().mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}
    try:
        return _up(state)
    except BaseException:
        print("start-up failed: stopping what was started", file=sys.stderr)
        _down(state)
        raise


def _save(state: dict[str, Any]) -> None:
    state_file().write_text(json.dumps(state, indent=2))


def _up(state: dict[str, Any]) -> int:
    started = time.monotonic()
    step("control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
    workdir = demo_dir() / "cluster"
    cluster = Cluster(CLUSTER_NAME, workdir=workdir)
    state["cluster"] = {"name": CLUSTER_NAME, "workdir": str(workdir)}
    _save(state)
    cluster.start()
    kubeconfig = cluster.kubeconfig
    assert kubeconfig is not None
    state["kubeconfig"] = kubeconfig
    _save(state)
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("create", "namespace", NAMESPACE)

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

    step("Asterisk 22 pod (podman container + Pod in the API whose exec runs in it)")
    if container_exists(CONTAINER):
        remove_container(CONTAINER)
    pbx = AsteriskContainer(
        CONTAINER,
        ASTERISK_IP,
        {TERMINATION_HOST: TWILIO_IP},
        unique=False,
        workdir=demo_dir() / "asterisk",
    )
    state["container"] = CONTAINER
    _save(state)
    pbx.start()
    pbx.detach()
    # The site's own dialplan: the contexts the example trunk and segment send calls to.
    pbx.write_file("/etc/asterisk/extensions.d/site.conf", SITE_DIALPLAN)
    pbx.rx("dialplan reload")
    cluster.add_exec_pod(NAMESPACE, POD, CONTAINER, {"app": "asterisk"})

    step("operator (trunk-operator run)")
    operator = OperatorProcess(
        kubeconfig, demo_dir() / "operator.log", verbose=False, detached=True
    ).start()
    state["operator_pid"] = operator.pid
    _save(state)

    step("kubectl apply -f examples/ (Secret, TwilioTrunk, DIDSegment)")
    for name in ("acme-secret.yaml", "acme-trunk.yaml", "acme-dids.yaml"):
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / name))
    wait = ["wait", "-n", NAMESPACE, "--for=condition=Ready", "--timeout=90s"]
    cluster.kubectl(*wait, "twiliotrunk/acme", timeout=120)
    cluster.kubectl(*wait, "didsegment/acme-main", timeout=120)
    cluster.kubectl(
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=Reachable",
        "--timeout=60s",
        "twiliotrunk/acme",
        timeout=90,
    )

    step("a call through the trunk (originate in the pod, answered by the stand-in)")
    cluster.kubectl(
        "exec",
        "-n",
        NAMESPACE,
        POD,
        "--",
        "asterisk",
        "-rx",
        "channel originate Local/5551234567@TwilioDynamicIVR application Wait 1",
    )
    standin.wait_for(lambda msgs: [m for m in msgs if m.method == "BYE"], timeout=30)
    invite = standin.invites()[-1]
    verified = standin.verify_digest(password)

    print()
    kubectl = f"{cluster.bin_dir}/kubectl"
    show = cluster.kubectl("get", "-n", NAMESPACE, "twiliotrunks,didsegments").stdout
    endpoints = cluster.kubectl(
        "exec", "-n", NAMESPACE, POD, "--", "asterisk", "-rx", "pjsip show endpoints"
    ).stdout
    print(f"$ kubectl get -n {NAMESPACE} twiliotrunks,didsegments\n{show}")
    print(f'$ kubectl exec -n {NAMESPACE} {POD} -- asterisk -rx "pjsip show endpoints"')
    print(endpoints.split("=" * 20)[-1].lstrip("=\n"))
    print(
        f"Twilio stand-in got INVITE {invite.uri} from {invite.from_user}:"
        f" digest {'verified' if verified else 'WRONG'}, codecs {' '.join(invite.codecs)}"
    )
    print()
    print(f"Up in {time.monotonic() - started:.0f} s. Try it:")
    print(f"  export KUBECONFIG={kubeconfig}")
    print(f"  alias kubectl={kubectl}")
    print(f"  kubectl get -n {NAMESPACE} twiliotrunk acme -o yaml")
    print(f"Operator log: {demo_dir()}/operator.log")
    print("Stop everything: make demo-down")
    return 0


def _example(name: str) -> dict[str, Any]:
    import yaml

    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    return doc


def _down(state: dict[str, Any]) -> None:
    for key in ("operator_pid", "sipp_pid"):
        pid = state.get(key)
        if pid and pid_alive(pid):
            stop_pid(pid)
    if state.get("container") and container_exists(state["container"]):
        remove_container(state["container"])
    if "cluster" in state:
        Cluster.attach(state["cluster"]["name"], state["cluster"]["workdir"]).stop()
    state_file().unlink(missing_ok=True)


def down() -> int:
    if not state_file().exists():
        print("the demo is not up")
        return 0
    _down(json.loads(state_file().read_text()))
    print("demo stopped: operator, sipp, Asterisk container and cluster are gone")
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
