"""The chart, rendered by the helm that `make binaries` builds; no cluster needed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tools.chartgen import CHART, GenerationError, helm_binary
from tools.chartgen import helm as run_helm

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> Callable[..., subprocess.CompletedProcess[str]]:
    try:
        helm_binary()
    except GenerationError as error:  # `make test` builds it; a bare pytest run may not have
        missing = str(error)
    else:
        return run_helm
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def render(helm: Callable[..., subprocess.CompletedProcess[str]]) -> Render:
    """`helm template` with `--set`-style values; the objects it renders."""

    def _render(*values: str, namespace: str = "trunkop-system") -> list[dict[str, Any]]:
        args = ["template", "trunkop", str(CHART), "--namespace", namespace]
        for value in values:
            args += ["--set", value]
        return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]

    return _render


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]
