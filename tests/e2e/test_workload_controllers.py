"""The real workload controllers of JobSet, Kubeflow Trainer v2 and the Kubeflow Training Operator beside the
test apiserver (stopline_local.workloads), their pods run by the local kubelet. No operator runs here: each
story pins down what a controller makes of its object (Jobs, pods, their labels and env), which stopline's
support for these kinds would rely on. How long each controller takes to be ready is printed (`-s`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.support import DEADLINE_S
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet
from stopline_local.workloads import (
    JOBSET_NAME_LABEL,
    Manager,
    cluster_training_runtime,
    jobset,
    pytorch_job,
    train_job,
)

pytestmark = pytest.mark.e2e

# a pod's process: prints the env its controller gave it, then exits (SHOW_ENV) or runs until its SIGTERM
# (UNTIL_STOPPED)
PRINT_ENV = (
    "import os, json; print('env', json.dumps({k: v for k, v in sorted(os.environ.items()) if k.startswith("
    "('PET_', 'MASTER_', 'WORLD_', 'RANK', 'JOB_COMPLETION_', 'PYTORCH_', 'NODE_'))}), flush=True)"
)
SHOW_ENV = ("python", "-c", PRINT_ENV)
UNTIL_STOPPED = ("python", "-c", PRINT_ENV + "\nimport time\nwhile True:\n    time.sleep(0.1)")


def items(plane: ControlPlane, namespace: str, kind: str, *selector: str) -> list[dict[str, Any]]:
    found = plane.kubectl("get", kind, "-n", namespace, *selector, "-o", "json")
    return list(json.loads(found.stdout)["items"])


def create(plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> None:
    plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def condition(obj: dict[str, Any], kind: str) -> str:
    """The status of `obj`'s condition `kind` ("" when it has none)."""
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), "")


def show(what: str, obj: dict[str, Any], kubelet: LocalKubelet | None = None) -> None:
    """Print what a controller put on an object: its labels, its owners; a pod's env, as its spec says and
    as its process printed it (PRINT_ENV, once it has)."""
    metadata = obj["metadata"]
    owners = [f"{owner['kind']}/{owner['name']}" for owner in metadata.get("ownerReferences", [])]
    print(f"{what} {metadata['name']}: owners {owners}\n  labels {metadata.get('labels', {})}")
    for container in obj["spec"].get("containers", []):
        print(f"  container {container['name']} env {container.get('env', [])}")
    if kubelet is not None:
        namespace, name = metadata["namespace"], metadata["name"]
        wait_until(lambda: "env {" in kubelet.log_of(namespace, name), DEADLINE_S, f"{name}'s env printed")
        print(f"  printed {kubelet.log_of(namespace, name).strip()}")


def details(plane: ControlPlane, namespace: str, kubelet: LocalKubelet, *managers: Manager) -> str:
    objects = plane.kubectl("get", "all", "-n", namespace, "-o", "wide", check=False).stdout
    return "\n".join([objects, kubelet.logs(), *(manager.log_tail() for manager in managers)])


def test_a_jobset_runs_both_pods_of_its_replicated_job_to_completion(
    control_plane: ControlPlane, namespace: str, kubelet: LocalKubelet, jobset_controller: Manager
) -> None:
    plane = control_plane
    create(plane, namespace, jobset("pair", SHOW_ENV, pods=2))
    wait_until(
        lambda: (
            condition(
                items(plane, namespace, "jobsets", "--field-selector=metadata.name=pair")[0], "Completed"
            )
            == "True"
        ),
        DEADLINE_S,
        "JobSet pair Completed",
        details=lambda: details(plane, namespace, kubelet, jobset_controller),
    )
    jobs = items(plane, namespace, "jobs", f"--selector={JOBSET_NAME_LABEL}=pair")
    assert [job["metadata"]["name"] for job in jobs] == ["pair-workers-0"]
    assert jobs[0]["status"]["succeeded"] == 2
    pods = items(plane, namespace, "pods", f"--selector={JOBSET_NAME_LABEL}=pair")
    assert sorted(pod["status"]["phase"] for pod in pods) == ["Succeeded", "Succeeded"]
    show("Job", jobs[0])
    for pod in pods:
        show("pod", pod, kubelet)


def test_a_trainjob_becomes_a_jobset_whose_two_pods_a_suspend_removes_a_resume_brings_back_and_a_delete_ends(
    control_plane: ControlPlane,
    namespace: str,
    kubelet: LocalKubelet,
    jobset_controller: Manager,
    trainer_controller: Manager,
) -> None:
    plane = control_plane
    runtime = cluster_training_runtime(plane)
    create(plane, namespace, train_job("fit", UNTIL_STOPPED, num_nodes=2, runtime=runtime))

    def why() -> str:
        return details(plane, namespace, kubelet, jobset_controller, trainer_controller)

    def running() -> list[dict[str, Any]]:
        pods = items(plane, namespace, "pods", f"--selector={JOBSET_NAME_LABEL}=fit")
        alive = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
        return alive if [pod["status"].get("phase") for pod in alive] == ["Running"] * 2 else []

    pods = wait_until(running, DEADLINE_S, "the TrainJob's 2 pods Running", details=why)
    (made,) = items(plane, namespace, "jobsets")
    assert made["metadata"]["name"] == "fit"
    assert [(owner["kind"], owner["name"]) for owner in made["metadata"]["ownerReferences"]] == [
        ("TrainJob", "fit")
    ]
    jobs = items(plane, namespace, "jobs", f"--selector={JOBSET_NAME_LABEL}=fit")
    assert [job["metadata"]["name"] for job in jobs] == ["fit-node-0"]
    show("JobSet", made)
    show("Job", jobs[0])
    for pod in pods:
        show("pod", pod, kubelet)

    plane.kubectl(
        "patch", "trainjob", "fit", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_until(
        lambda: not items(plane, namespace, "pods", f"--selector={JOBSET_NAME_LABEL}=fit"),
        DEADLINE_S,
        "the suspended TrainJob's pods gone",
        details=why,
    )
    suspended = items(plane, namespace, "jobsets")[0]
    assert suspended["spec"]["suspend"] is True
    plane.kubectl(
        "patch", "trainjob", "fit", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    resumed = wait_until(running, DEADLINE_S, "the resumed TrainJob's 2 pods Running", details=why)
    assert {pod["metadata"]["uid"] for pod in resumed}.isdisjoint(pod["metadata"]["uid"] for pod in pods)
    plane.kubectl("delete", "trainjob", "fit", "-n", namespace, "--wait=false")
    wait_until(
        lambda: not items(plane, namespace, "pods", f"--selector={JOBSET_NAME_LABEL}=fit"),
        DEADLINE_S,
        "the deleted TrainJob's pods gone (owned through its JobSet and Job)",
        details=why,
    )


def test_a_pytorchjob_runs_its_master_and_worker_to_success(
    control_plane: ControlPlane, namespace: str, kubelet: LocalKubelet, training_operator: Manager
) -> None:
    plane = control_plane
    create(plane, namespace, pytorch_job("pair", SHOW_ENV, workers=1))
    why = lambda: details(plane, namespace, kubelet, training_operator)  # noqa: E731
    wait_until(
        lambda: condition(items(plane, namespace, "pytorchjobs")[0], "Succeeded") == "True",
        DEADLINE_S,
        "PyTorchJob pair Succeeded",
        details=why,
    )

    def ended() -> list[dict[str, Any]]:  # the master's success ends the job; the worker may still be exiting
        pods = items(plane, namespace, "pods", "--selector=training.kubeflow.org/job-name=pair")
        return pods if [pod["status"].get("phase") for pod in pods] == ["Succeeded"] * 2 else []

    pods = wait_until(ended, DEADLINE_S, "the PyTorchJob's master and worker Succeeded", details=why)
    assert sorted(pod["metadata"]["name"] for pod in pods) == ["pair-master-0", "pair-worker-0"]
    for pod in pods:
        show("pod", pod, kubelet)
