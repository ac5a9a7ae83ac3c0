"""The in-cluster tier: the operator installed with Helm from charts/, as a pod kubelet runs
from the image built from the Dockerfile, next to Asterisk pods of examples/asterisk and
examples/asterisk-ari (testbed/release.py).

No admin kubeconfig reaches the operator: it runs with the chart's ServiceAccount and RBAC.
The test process itself drives the cluster as admin (kubectl, helm), as a user would.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.node import KubeletNode
from testbed.release import (
    RELEASE,
    SYSTEM_NAMESPACE,
    Release,
    adopt_crds,
    build_operator_image,
    release_for,
    restricted_namespace,
)
from tests.conftest import pause_host_operators


@pytest.fixture(scope="session")
def operator_image() -> str:
    return build_operator_image()


@pytest.fixture(scope="session")
def node_images(real_node: KubeletNode, operator_image: str, asterisk_image: str) -> KubeletNode:
    for image in (operator_image, asterisk_image):
        seconds = real_node.import_image(image)
        print(f"\nimport {image} into the node: {seconds:.1f} s (0.0: already there)")
    return real_node


@pytest.fixture(scope="module")
def no_host_operator() -> Iterator[None]:
    """The e2e tier's operator process is stopped meanwhile: one operator per cluster."""
    with pause_host_operators():
        yield


@contextlib.contextmanager
def installed(cluster: Any, node: KubeletNode, image: str, **values: Any) -> Iterator[Release]:
    """The chart installed into a namespace that enforces the restricted Pod Security level,
    uninstalled afterwards (its namespace gone before the next module installs again)."""
    restricted_namespace(cluster)
    rel = release_for(cluster, node, image, **values)
    adopt_crds(cluster)
    try:
        rel.install()
        yield rel
    finally:
        rel.helm("uninstall", RELEASE, "--namespace", SYSTEM_NAMESPACE, "--wait", check=False)
        cluster.kubectl(
            "delete", "namespace", SYSTEM_NAMESPACE, "--wait=true", "--timeout=180s", check=False
        )


@pytest.fixture(scope="module")
def release(
    cluster: Any, node_images: KubeletNode, operator_image: str, no_host_operator: None
) -> Iterator[Release]:
    with installed(cluster, node_images, operator_image, observeIntervalSeconds=2) as rel:
        yield rel


@pytest.fixture(scope="module")
def telephony(cluster: Any) -> Iterator[str]:
    name = f"telephony-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        # The CRs first, while the operator may still be there to release its finalizers;
        # after `helm uninstall` nobody is, so the finalizers are removed by hand.
        for kind in ("didsegments", "twiliotrunks"):
            cluster.kubectl("delete", kind, "--all", "-n", name, "--wait=false", check=False)
            listed = cluster.kubectl("get", kind, "-n", name, "-o", "name", check=False)
            for obj in listed.stdout.split():
                cluster.kubectl(
                    "patch", obj, "-n", name, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}', check=False,
                )  # fmt: skip
        cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)
