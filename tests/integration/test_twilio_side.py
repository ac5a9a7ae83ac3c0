"""The Twilio end of opted-in trunks through the operator process, against a real
kube-apiserver and the REST stand-in built from Twilio's specs (no Asterisk pods in this tier:
Asterisk's side of a rotation is tested in tests/e2e)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from testbed.twilio_rest import TwilioRestStandIn
from tests.conftest import put_secret, wait_for
from tests.integration.helpers import TRUNK, trunk, with_spec
from trunk_operator.core.models import GROUP, VERSION, twilio_credential_secret

pytestmark = pytest.mark.integration

PASSWORD, ROTATED = "Initial-Passw0rd", "Rotated-Passw0rd"


def account(name: str, secret: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TwilioAccount",
        "metadata": {"name": name},
        "spec": {"accountSid": "", "secretName": secret},
    }


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind]
    return found[0] if found else {}


def read_secret(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str] | None:
    try:
        data = core.read_namespaced_secret(name, namespace).data or {}
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


@pytest.fixture
def opted_in(
    operator: Any,
    twilio_rest: TwilioRestStandIn,
    apply: Callable[..., Any],
    core: client.CoreV1Api,
    namespace: str,
) -> dict[str, Any]:
    """An account, the trunk's Secret and an opted-in trunk whose domain is the namespace's."""
    put_secret(core, namespace, "twilio-api", {"authToken": twilio_rest.account.auth_token})
    doc = account("main", "twilio-api")
    doc["spec"]["accountSid"] = twilio_rest.account.account_sid
    apply(doc)
    put_secret(core, namespace, "acme-sip", {"username": "acme-user", "password": PASSWORD})
    twilio = {"accountRef": {"name": "main"}, "credentialPropagationSeconds": 1}
    doc = with_spec(TRUNK, terminationHost=f"{namespace}.pstn.twilio.com", twilio=twilio)
    apply(doc)
    return doc


def test_an_account_and_an_opted_in_trunk_get_their_twilio_end(
    opted_in: dict[str, Any],
    twilio_rest: TwilioRestStandIn,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    domain = f"{namespace}.pstn.twilio.com"
    accepted = wait_for(
        lambda: (
            condition(
                custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "twilioaccounts", "main"
                ),
                "Ready",
            ).get("reason")
            == "CredentialsAccepted"
        ),
        timeout=60,
    )
    assert accepted
    wait_for(lambda: twilio_rest.account.credentials_of_domain(domain), timeout=60)
    assert twilio_rest.account.credentials_of_domain(domain) == {"acme-user-1": PASSWORD}
    wait_for(lambda: read_secret(core, namespace, twilio_credential_secret("acme")), timeout=60)
    active = read_secret(core, namespace, twilio_credential_secret("acme"))
    assert active == {"username": "acme-user-1", "password": PASSWORD, "generation": "1"}
    wait_for(
        lambda: (
            condition(trunk(custom, namespace, "acme"), "TwilioSynced").get("reason") == "Synced"
        ),
        timeout=60,
    )
    status = trunk(custom, namespace, "acme")["status"]
    (trunk_record,) = twilio_rest.account.find("Trunk", domain_name=domain)
    assert status["twilio"]["trunkSid"] == trunk_record["sid"]
    assert status["twilio"]["username"] == "acme-user-1"
    assert PASSWORD not in str(status)


def test_a_rotated_password_goes_to_twilio_then_to_the_credential_asterisk_uses(
    opted_in: dict[str, Any],
    twilio_rest: TwilioRestStandIn,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
) -> None:
    domain = f"{namespace}.pstn.twilio.com"
    name = twilio_credential_secret("acme")
    wait_for(lambda: read_secret(core, namespace, name), timeout=60)
    put_secret(core, namespace, "acme-sip", {"username": "acme-user", "password": "weak"})
    wait_for(
        lambda: (
            condition(trunk(custom, namespace, "acme"), "TwilioSynced").get("reason")
            == "WeakPassword"
        ),
        timeout=60,
    )
    assert twilio_rest.account.credentials_of_domain(domain) == {"acme-user-1": PASSWORD}
    put_secret(core, namespace, "acme-sip", {"username": "acme-user", "password": ROTATED})
    wait_for(
        lambda: (read_secret(core, namespace, name) or {}).get("generation") == "2", timeout=60
    )
    held = twilio_rest.account.credentials_of_domain(domain)
    assert held["acme-user-2"] == ROTATED  # Twilio had it before Asterisk's Secret changed
    # No pod serves the new credential here: the old one stays until one does.
    assert held["acme-user-1"] == PASSWORD
