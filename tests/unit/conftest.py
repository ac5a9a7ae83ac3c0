from pathlib import Path
from typing import Any

import pytest
import yaml

from trunk_operator.runtime import status_writer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


@pytest.fixture
def trunk_body() -> dict[str, Any]:
    return load_example("acme-trunk.yaml")


@pytest.fixture
def segment_body() -> dict[str, Any]:
    return load_example("acme-dids.yaml")


@pytest.fixture
def delivering_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that look at every state a status goes through (the grace has its own)."""
    monkeypatch.setattr(status_writer, "DELIVERING_GRACE", 0.0)
