"""A target's own suspend on the real apiserver: only the object of that uid is suspended, and a suspend
field whose parent is missing (a PyTorchJob without spec.runPolicy) is made, not refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from operatorharness import get
from stopline import targets
from stopline.api import TargetRef
from stopline.kube import Kube
from stopline_local.controlplane import ControlPlane
from stopline_local.workloads import TRAINING_OPERATOR_HOME, apply_crds, release_path

pytestmark = pytest.mark.cluster


def suspend(namespace: str, kind: str, api_version: str, name: str, uid: str) -> bool:
    adapter = targets.adapter_for(TargetRef(api_version, kind, name))
    assert adapter is not None

    async def run() -> bool:
        kube = await Kube.connect()
        try:
            return await targets.suspend(kube, namespace, adapter, name, uid)
        finally:
            await kube.close()

    return asyncio.run(run())


def create(plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    return dict(get(plane, namespace, manifest["kind"].lower(), manifest["metadata"]["name"]))


def test_a_job_is_suspended_only_when_the_uid_is_its_own(plane: ControlPlane, namespace: str) -> None:
    container = {"name": "trainer", "image": "trainer:1", "command": ["true"]}
    job = create(
        plane,
        namespace,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "run-a"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
        },
    )
    assert not suspend(namespace, "Job", "batch/v1", "run-a", "not-its-uid"), (
        "a Job made again under the name"
    )
    assert get(plane, namespace, "job", "run-a")["spec"]["suspend"] is False
    assert suspend(namespace, "Job", "batch/v1", "run-a", job["metadata"]["uid"])
    assert get(plane, namespace, "job", "run-a")["spec"]["suspend"] is True


def test_a_pytorchjob_without_run_policy_gets_one_with_suspend(plane: ControlPlane, namespace: str) -> None:
    what = "the Kubeflow Training Operator"
    apply_crds(
        plane, [release_path(TRAINING_OPERATOR_HOME, what, "crd", "kubeflow.org_pytorchjobs.yaml")], what
    )
    container = {"name": "pytorch", "image": "trainer:1"}
    master = {"replicas": 1, "template": {"spec": {"containers": [container]}}}
    made = create(
        plane,
        namespace,
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "ddp"},
            "spec": {"pytorchReplicaSpecs": {"Master": master}},
        },
    )
    assert "runPolicy" not in made["spec"]
    assert suspend(namespace, "PyTorchJob", "kubeflow.org/v1", "ddp", made["metadata"]["uid"])
    assert get(plane, namespace, "pytorchjob", "ddp")["spec"]["runPolicy"]["suspend"] is True
