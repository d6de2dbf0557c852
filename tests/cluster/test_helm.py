"""The chart as helm and the real apiserver see it, and the operator running with only the chart's RBAC."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from controlplane import REPO, ControlPlane, built_binary, wait_until
from operatorharness import (
    SINGLE_NAME,
    WAIT_S,
    checkpoint_message,
    manifest,
    operator,
    phase_is,
    running_trainer,
    status,
    terminate,
)

pytestmark = pytest.mark.cluster

CHART = REPO / "helm" / "stopline"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(built_binary("helm")), *args], capture_output=True, text=True, timeout=60, check=check
    )


def test_chart_installs_the_crd_file_from_crds_unchanged() -> None:
    rendered = list(yaml.safe_load_all(helm("template", "stopline", str(CHART), "--include-crds").stdout))
    crds = [doc for doc in rendered if doc and doc["kind"] == "CustomResourceDefinition"]
    assert crds == [yaml.safe_load((REPO / "crds" / "trainingjob.yaml").read_text())]


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="defaults"),
        pytest.param(
            ["--set", "watchNamespaces={team-a,team-b}", "--set", "serviceMonitor.enabled=false"],
            id="namespaced",
        ),
        pytest.param(["--set", "dashboard.enabled=false", "--set", "verbose=true"], id="no-dashboard"),
    ],
)
def test_helm_template_is_accepted_by_the_apiserver(control_plane: ControlPlane, values: list[str]) -> None:
    for team in ("team-a", "team-b"):  # a namespaced install puts Roles there; they must exist
        control_plane.kubectl("create", "namespace", team, check=False)
    manifests = helm(
        "template", "stopline", str(CHART), "--include-crds", "--namespace", "default", *values
    ).stdout
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=manifests)
    assert "customresourcedefinition.apiextensions.k8s.io/trainingjobs.stopline.dev" in result.stdout
    assert "deployment.apps/stopline" in result.stdout


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("rbac.creat=true", "rbac: Additional property creat is not allowed"),
        ("imagePullPolicy=Always", "Additional property imagePullPolicy is not allowed"),
        ("replicaCount=2", "replicaCount"),
    ],
)
def test_the_values_schema_rejects_a_misspelt_or_unsafe_value_naming_it(setting: str, complaint: str) -> None:
    result = helm("template", "stopline", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


def as_service_account(
    plane: ControlPlane, namespace: str, release: str, values: list[str], folder: Path
) -> Path:
    """Install the chart's ServiceAccount and RBAC, as `helm install` would, and return a kubeconfig that
    authenticates with that ServiceAccount's token: the operator then has exactly the chart's rights."""
    only = ["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"]
    rendered = helm("template", release, str(CHART), "--namespace", namespace, *only, *values).stdout
    plane.kubectl("apply", "-f", "-", input=rendered)
    token = plane.kubectl("create", "token", f"{release}-stopline", "-n", namespace).stdout.strip()
    return plane.write_kubeconfig(folder / "operator-kubeconfig", token)


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_the_operator_with_only_the_charts_rbac_stops_a_job_and_can_do_nothing_else(
    crd_installed: ControlPlane,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scope: str,
) -> None:
    plane, release = crd_installed, namespace  # a release per test: its ClusterRole name is unique
    values = ["--set", f"watchNamespaces={{{namespace}}}"] if scope == "namespaced" else []
    kubeconfig = as_service_account(plane, namespace, release, values, tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    try:
        training_job = manifest(criteria=[], metrics={"interval": "1s"})
        with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
            trainer.report(1, 100, val_loss=1.0)
            plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
            wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
            terminate(plane, namespace, pod, checkpoint_message(1, 100, "/ckpt/step-000100.pt"))
            wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
        assert status(plane, namespace, SINGLE_NAME)["checkpoint"]["uri"] == "/ckpt/step-000100.pt"

        def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
            return plane.kubectl(f"--kubeconfig={kubeconfig}", *args, "-n", namespace, check=False)

        forbidden = [
            # never the TrainingJob's spec or annotations: GitOps tools would see drift
            as_operator("annotate", "tj", SINGLE_NAME, "touched=yes"),
            as_operator("get", "secrets"),  # a token Secret is read by name, never listed
            as_operator("delete", "job", SINGLE_NAME),
            as_operator("create", "configmap", "x"),
        ]
        for refused in forbidden:
            assert refused.returncode != 0
            assert "forbidden" in refused.stderr.lower(), refused.stderr
        assert as_operator("get", "tj", SINGLE_NAME).returncode == 0  # the check is about rights, not access
    finally:
        if scope == "cluster":
            for kind in ("clusterrolebinding", "clusterrole"):
                plane.kubectl("delete", kind, f"{release}-stopline", "--ignore-not-found", check=False)
