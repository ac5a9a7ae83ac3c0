"""The Twilio side as users run it: the operator installed with Helm on the real node, with only
the chart's RBAC, reaching Twilio's REST API (the stand-in built from its specs, on the host's
address, which the operator's pod reaches as it reaches the API server)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.node import KubeletNode
from testbed.release import (
    Release,
)
from testbed.twilio_rest import TwilioRestStandIn
from tests.conftest import wait_for
from tests.incluster.conftest import installed
from trunk_operator.core.models import GROUP, VERSION, twilio_credential_secret

pytestmark = pytest.mark.incluster

PASSWORD = "In-Cluster-Passw0rd"


@pytest.fixture(scope="module")
def rest(node_images: KubeletNode) -> Iterator[TwilioRestStandIn]:
    standin = TwilioRestStandIn()
    with socket.socket() as probe:
        probe.bind((node_images.node_ip, 0))
        port = probe.getsockname()[1]
    standin.serve(node_images.node_ip, port)
    try:
        yield standin
    finally:
        standin.close()
    assert standin.violations == []


@pytest.fixture(scope="module")
def release(
    cluster: Any,
    node_images: KubeletNode,
    operator_image: str,
    no_host_operator: None,
    rest: TwilioRestStandIn,
) -> Iterator[Release]:
    """The chart as in conftest.py, its operator pointed at the REST stand-in."""
    env = [*node_images.api_env(), {"name": "TRUNKOP_TWILIO_BASE_URL", "value": rest.url}]
    with installed(cluster, node_images, operator_image, extraEnv=env) as rel:
        yield rel


def apply(cluster: Any, namespace: str, *docs: dict[str, Any]) -> None:
    text = "\n---\n".join(json.dumps(d) for d in docs)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def get(cluster: Any, namespace: str, *what: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "-n", namespace, *what, "-o", "json", check=False)
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


def reason(obj: dict[str, Any], kind: str) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((str(c.get("reason")) for c in conditions if c["type"] == kind), "")


def test_an_opted_in_trunk_gets_its_twilio_end_with_only_the_charts_rbac(
    cluster: Any, release: Release, rest: TwilioRestStandIn, telephony: str
) -> None:
    domain = f"{telephony}.pstn.twilio.com"
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque"}
    apply(
        cluster, telephony,
        {**secret, "metadata": {"name": "twilio-api"},
         "stringData": {"authToken": rest.account.auth_token}},
        {**secret, "metadata": {"name": "acme-sip"},
         "stringData": {"username": "acme-user", "password": PASSWORD}},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TwilioAccount", "metadata": {"name": "main"},
         "spec": {"accountSid": rest.account.account_sid, "secretName": "twilio-api"}},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TwilioTrunk", "metadata": {"name": "acme"},
         "spec": {"terminationHost": domain, "credentials": {"secretName": "acme-sip"},
                  "twilio": {"accountRef": {"name": "main"},
                             "credentialPropagationSeconds": 1}}},
    )  # fmt: skip
    wait_for(
        lambda: rest.account.credentials_of_domain(domain) == {"acme-user-1": PASSWORD},
        timeout=120,
        what="the credential at Twilio",
    )
    wait_for(
        lambda: reason(get(cluster, telephony, "twiliotrunk", "acme"), "TwilioSynced") == "Synced",
        timeout=60,
        what="TwilioSynced",
    )
    account = get(cluster, telephony, "twilioaccount", "main")
    assert reason(account, "Ready") == "CredentialsAccepted"
    served = get(cluster, telephony, "secret", twilio_credential_secret("acme"))
    data = {k: base64.b64decode(v).decode() for k, v in served["data"].items()}
    assert data == {"username": "acme-user-1", "password": PASSWORD, "generation": "1"}
    log = release.operator_log()
    assert " 403" not in log and "Forbidden" not in log, log[-3000:]
    assert PASSWORD not in log and rest.account.auth_token not in log
