"""The real node's tier (`make test-node`): pods in containerd through a real kubelet, as root.

One node per run (its addresses are fixed), started by the first test that asks for it; the images are
built from the Dockerfiles (stopline_local.images, bases from `make images-base`) and loaded into it once.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from stopline_local import images
from stopline_local.controlplane import REPO, TESTENV
from stopline_local.node import Node

RELEASE_NAMESPACE = "stopline-system"


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    started = Node().start(say=lambda line: print(f"node: {line}", flush=True))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def operator_image(node: Node) -> str:
    """The operator image, built from operator/Dockerfile and loaded into the node."""
    return _built(node, "operator")


@pytest.fixture(scope="session")
def trainer_image(node: Node) -> str:
    """The trainer image (torch), built from trainer-image/Dockerfile and loaded into the node."""
    return _built(node, "trainer")


def _built(node: Node, which: str) -> str:
    dockerfile, tag, base = images.PLANS[which]
    archive = images.build_image(dockerfile, tag, {"BASE": base}, images.IMAGES / "out" / f"{which}.tar")
    node.ctr("images", "import", str(archive))
    return tag


@pytest.fixture
def namespace(node: Node) -> Iterator[str]:
    name = f"n-{uuid.uuid4().hex[:8]}"
    node.kubectl("create", "namespace", name)
    yield name
    node.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def installed(node: Node, operator_image: str) -> str:
    """The CRD, then `helm install` of the chart with the operator image, as `make deploy` does; returns the
    release's namespace once the operator's Deployment is available (the chart's readiness probe passed)."""
    node.plane.install_crd(REPO / "crds" / "trainingjob.yaml")
    repository, tag = operator_image.rsplit(":", 1)
    subprocess.run(
        [
            str(TESTENV / "bin" / "helm"),
            f"--kubeconfig={node.kubeconfig}",
            "upgrade",
            "--install",
            "stopline",
            str(REPO / "helm" / "stopline"),
            "-n",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout=5m",
            f"--set=image.repository={repository},image.tag={tag}",
        ],
        check=True,
    )
    return RELEASE_NAMESPACE
