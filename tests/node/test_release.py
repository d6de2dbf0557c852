"""Issue 31's acceptance on the real node: `make release`, pushed to a real OCI registry on 127.0.0.1, then
stopline installed from that registry both ways the README gives, each time containerd pulling the operator
image by the digest dist/ names, and each time a TrainingJob stopped by a criterion with its weights kept.

    helm install stopline oci://127.0.0.1:PORT/charts/stopline --version X --plain-http
    kubectl apply --server-side -f dist/install.yaml

The release is built with the operator image only (the trainer's torch base is what `make images-base` builds
for the node tier anyway: the trainers run the trainer image built from the checkout, as in test_stories).
containerd pulls from 127.0.0.1 over plain HTTP, as it does for any loopback registry. The chart the session
may have installed from the checkout (conftest's `installed`) is uninstalled for this module and installed
again after it, so one operator acts at a time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.conftest import RELEASE_NAMESPACE
from node.test_stories import claim_on_host, epoch_reached, finish, job, weights_load_back
from stopline_local import release
from stopline_local.controlplane import REPO, TESTENV
from stopline_local.node import Node
from stopline_local.registry import running_registry

# the first test's setup runs the release (a minute or more) and maybe the trainer image's build, then the
# operator's pull and a story with deadlines of their own: more than the tier's default 600 s
pytestmark = [pytest.mark.node, pytest.mark.timeout(1500)]

VERSION = "9.8.7"
DEADLINE_S = 300  # an operator pod pulling ~300 MB from loopback and starting on two shared cores


@dataclass(frozen=True)
class Pushed:
    dist: Path
    host: str
    digest: str

    @property
    def pinned(self) -> str:
        return f"{self.host}/operator@{self.digest}"


def helm(node: Node, *args: str) -> str:
    result = subprocess.run(
        [str(TESTENV / "bin" / "helm"), f"--kubeconfig={node.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S + 60,
        check=False,
    )
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def pushed(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    """`make release` with the registry's address as REGISTRY, then `make release-push`, the registry kept
    running for the module (containerd pulls from it)."""
    with running_registry(tmp_path_factory.mktemp("registry")) as registry:
        dist, build = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("build")
        subprocess.run(
            [sys.executable, "-m", "stopline_local.release", "build", VERSION, f"--registry={registry.host}",
             "--images=operator", f"--dist={dist}", f"--build={build}"],
            check=True,
            timeout=600,
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "stopline_local.release", "push", "--plain-http", f"--dist={dist}"],
            check=True,
            timeout=300,
        )
        summary = json.loads((dist / "release.json").read_text())
        yield Pushed(dist, registry.host, summary["images"]["operator"]["digest"])
    for folder in (dist, build, registry.storage):  # ~300 MB each: the node tier watches its disk
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def alone(node: Node, operator_image: str) -> Iterator[None]:
    """No other stopline on the node while this module's run: the session's checkout install, if any, is
    uninstalled, and installed again afterwards as conftest's `installed` installs it."""
    releases = helm(node, "list", "-n", RELEASE_NAMESPACE, "-q").split()
    if "stopline" in releases:
        helm(node, "uninstall", "stopline", "-n", RELEASE_NAMESPACE, "--wait", f"--timeout={DEADLINE_S}s")
    yield
    if "stopline" in releases:
        repository, tag = operator_image.rsplit(":", 1)
        chart = str(REPO / "helm" / "stopline")
        values = f"--set=image.repository={repository},image.tag={tag}"
        helm(node, "upgrade", "--install", "stopline", chart, "-n", RELEASE_NAMESPACE, "--create-namespace",
             "--wait", "--timeout=5m", values)  # fmt: skip


@pytest.fixture
def claim(node: Node, trainer_image: str, namespace: str) -> Iterator[Path]:
    """The claim `checkpoints` in the test's namespace, bound to a hostPath folder; yields that folder."""
    with claim_on_host(node, namespace) as folder:
        yield folder


def running_operator_pulled_by_digest(node: Node, pushed: Pushed) -> None:
    """The Deployment names the image by digest, and its ready pod runs what containerd pulled for it."""
    rollout = [
        "rollout",
        "status",
        "deployment/stopline",
        "-n",
        RELEASE_NAMESPACE,
        f"--timeout={DEADLINE_S}s",
    ]
    node.plane.kubectl(*rollout, timeout=DEADLINE_S + 30)
    deployment = json.loads(
        node.kubectl("get", "deployment", "stopline", "-n", RELEASE_NAMESPACE, "-o", "json").stdout
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == pushed.pinned
    pods = json.loads(
        node.kubectl(
            "get", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/name=stopline", "-o", "json"
        ).stdout
    )["items"]
    statuses = [status for pod in pods for status in pod["status"].get("containerStatuses", [])]
    assert statuses and all(status["ready"] for status in statuses), statuses
    assert all(status["imageID"].endswith(pushed.digest) for status in statuses), statuses


def stopped_by_patience(node: Node, namespace: str, folder: Path) -> None:
    job(node, namespace, "mlp", [{"name": "plateau", "patience": {"patience": 1, "minDelta": 0.0002}}])
    epoch_reached(node, namespace, "mlp", 1)
    stopped: dict[str, Any] = finish(node, namespace, "mlp")
    assert (stopped["status"]["phase"], stopped["status"]["stopReason"]["type"]) == ("Stopped", "Patience")
    weights_load_back(folder, stopped)


def test_helm_install_from_the_registry_then_a_job_stopped_by_patience(
    node: Node, pushed: Pushed, alone: None, claim: Path, namespace: str
) -> None:
    chart = f"oci://{pushed.host}/charts/stopline"
    helm(node, "install", "stopline", chart, "--version", VERSION, "--plain-http", "-n", RELEASE_NAMESPACE,
         "--create-namespace", "--wait", f"--timeout={DEADLINE_S}s")  # fmt: skip
    try:
        running_operator_pulled_by_digest(node, pushed)
        stopped_by_patience(node, namespace, claim)
    finally:
        helm(node, "uninstall", "stopline", "-n", RELEASE_NAMESPACE, "--wait", f"--timeout={DEADLINE_S}s")


def test_kubectl_apply_of_install_yaml_then_a_job_stopped_by_patience(
    node: Node, pushed: Pushed, alone: None, claim: Path, namespace: str
) -> None:
    install = pushed.dist / "install.yaml"
    node.kubectl("apply", "--server-side", "-f", str(install))
    # removed after, but the CRD (its TrainingJobs with it) and the Namespace (the session's install uses it)
    kept = {"CustomResourceDefinition", "Namespace"}
    removable = [doc for doc in yaml.safe_load_all(install.read_text()) if doc and doc["kind"] not in kept]
    try:
        running_operator_pulled_by_digest(node, pushed)
        stopped_by_patience(node, namespace, claim)
    finally:
        node.kubectl(
            "delete", "--wait", "--ignore-not-found", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": removable}),
        )  # fmt: skip
    assert release.NAMESPACE == RELEASE_NAMESPACE  # install.yaml's namespace is the one `make deploy` uses
