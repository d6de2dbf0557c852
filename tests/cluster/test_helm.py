"""The chart as helm and the real apiserver see it."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from controlplane import REPO, ControlPlane, built_binary

pytestmark = pytest.mark.cluster

CHART = REPO / "helm" / "stopline"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(built_binary("helm")), *args], capture_output=True, text=True, timeout=60, check=True
    )


def test_chart_installs_the_crd_file_from_crds_unchanged() -> None:
    rendered = list(yaml.safe_load_all(helm("template", "stopline", str(CHART), "--include-crds").stdout))
    crds = [doc for doc in rendered if doc and doc["kind"] == "CustomResourceDefinition"]
    assert crds == [yaml.safe_load((REPO / "crds" / "trainingjob.yaml").read_text())]


def test_helm_template_is_accepted_by_the_apiserver(control_plane: ControlPlane) -> None:
    manifests = helm("template", "stopline", str(CHART), "--include-crds", "--namespace", "default").stdout
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifests)
    assert "customresourcedefinition.apiextensions.k8s.io/trainingjobs.stopline.dev" in result.stdout
