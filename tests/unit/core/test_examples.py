"""Every custom resource in examples/ is valid against the models the CRDs come from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from trunk_operator.core.models import DIDSegmentSpec, TwilioAccountSpec, TwilioTrunkSpec
from trunk_operator.core.twilio import password_problem

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MODELS: dict[str, type[BaseModel]] = {
    "TwilioTrunk": TwilioTrunkSpec,
    "DIDSegment": DIDSegmentSpec,
    "TwilioAccount": TwilioAccountSpec,
}
DOCUMENTS = [
    (path, doc)
    for path in sorted(EXAMPLES.rglob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if isinstance(doc, dict) and doc.get("kind") in MODELS
]


@pytest.mark.parametrize(
    ("path", "doc"), DOCUMENTS, ids=[f"{p.relative_to(EXAMPLES)}:{d['kind']}" for p, d in DOCUMENTS]
)
def test_example_is_valid(path: Path, doc: dict) -> None:
    MODELS[doc["kind"]].model_validate(doc["spec"])


def test_every_kind_has_an_example() -> None:
    assert {doc["kind"] for _, doc in DOCUMENTS} == set(MODELS)


def test_the_example_password_is_one_twilio_takes() -> None:
    """examples/twilio's trunk rotates it on both ends: Twilio must accept it."""
    secret = yaml.safe_load((EXAMPLES / "acme-secret.yaml").read_text())
    assert password_problem(secret["stringData"]["password"]) is None
