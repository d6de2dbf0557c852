"""TrainingJobs that govern the workloads teams already run, against the real controllers (JobSet, Kubeflow
Trainer v2, the Training Operator) beside the test apiserver, their pods run by the local kubelet.

A TrainJob of 2 nodes with torchrun's 2 processes in each (4 ranks over gloo on loopback), stopped by a
patience criterion and by `kubectl annotate`: every process stops at the same step, rank 0 saves once, the
weights load back. A JobSet and a PyTorchJob stopped by annotation; the PyTorchJob's trainer holds no token,
so its own suspend (spec.runPolicy.suspend) stops it. No target is ever deleted.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from e2e.support import (
    CHECKPOINT_MOUNT,
    CLAIM,
    DEADLINE_S,
    PATIENCE,
    epoch_reached,
    finish,
    governing,
    load_weights,
    trainer_env,
    wait_for_secret,
)
from operatorharness import apply, exists, get
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet
from stopline_local.workloads import Manager, cluster_training_runtime, train_job

pytestmark = pytest.mark.e2e

EXAMPLE = (
    "trainer-image/examples/train.py",
    "--epochs",
    "60",
    "--steps-per-epoch",
    "10",
    "--sleep-per-step",
    "0.05",
)
STOPPED_AT = re.compile(r"stopline: rank (\d+) stopping at epoch (\d+) step (\d+)")
CLAIM_VOLUME = {"name": "checkpoints", "persistentVolumeClaim": {"claimName": CLAIM}}
CLAIM_MOUNT = {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}
LOOPBACK = [{"name": "GLOO_SOCKET_IFNAME", "value": "lo"}]  # the pod IPs live on loopback


def torchrun_train_job(name: str, governor: str, with_token: bool = True) -> dict[str, Any]:
    """A TrainJob of 2 nodes, torchrun with 2 processes in each (the runtime's PET_* env gives it the node
    rank from the completion index and rank 0's address), the contract in spec.trainer.env and the claim
    through podTemplateOverrides, as docs/targets.md says."""
    job = train_job(
        name, ["python", "-m", "torch.distributed.run", "--nproc-per-node", "2", *EXAMPLE], num_nodes=2
    )
    job["spec"]["runtimeRef"]["name"] = RUNTIME
    job["spec"]["trainer"]["env"] = [*trainer_env(governor, f"runs/{name}", with_token), *LOOPBACK]
    job["spec"]["podTemplateOverrides"] = [
        {
            "targetJobs": [{"name": "node"}],
            "spec": {
                "volumes": [CLAIM_VOLUME],
                "containers": [{"name": "node", "volumeMounts": [CLAIM_MOUNT]}],
            },
        }
    ]
    return job


RUNTIME = "stopline-torch"


def stop_steps(kubelet: LocalKubelet, namespace: str, pods: list[str]) -> dict[int, tuple[int, int]]:
    """Each rank's (epoch, step) at its stop, from its pod's log (torchrun's workers share it)."""
    steps: dict[int, tuple[int, int]] = {}
    for pod in pods:
        for rank, epoch, step in STOPPED_AT.findall(kubelet.log_of(namespace, pod)):
            steps[int(rank)] = (int(epoch), int(step))
    return steps


def pod_names(plane: ControlPlane, namespace: str, selector: str) -> list[str]:
    return [pod["metadata"]["name"] for pod in get(plane, namespace, "pods", "-l", selector)["items"]]


def test_a_trainjob_of_two_torchrun_pods_is_stopped_by_patience_every_rank_at_one_step(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet, trainer_controller: Manager
) -> None:
    cluster_training_runtime(story, RUNTIME)
    apply(
        story,
        namespace,
        governing("watch-fit", "TrainJob", "trainer.kubeflow.org/v1alpha1", "fit", criteria=[PATIENCE]),
    )
    wait_for_secret(story, namespace, "watch-fit")
    apply(story, namespace, torchrun_train_job("fit", "watch-fit"))
    stopped = finish(story, kubelet, namespace, "watch-fit")["status"]
    assert (stopped["phase"], stopped.get("stopReason", {}).get("type"), stopped.get("stopPath")) == (
        "Stopped",
        "Patience",
        "StopEndpoint",
    ), stopped
    pods = pod_names(story, namespace, "jobset.sigs.k8s.io/jobset-name=fit")
    assert len(pods) == 2, pods
    steps = stop_steps(kubelet, namespace, pods)
    assert sorted(steps) == [0, 1, 2, 3] and len(set(steps.values())) == 1, f"every rank, one step: {steps}"
    checkpoint = stopped["checkpoint"]
    assert (checkpoint["epoch"], checkpoint["step"]) == next(iter(steps.values()))
    load_weights(checkpoint, kubelet.claim_folder(namespace, CLAIM) / "runs" / "fit")
    wait_until(
        lambda: any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in get(story, namespace, "trainjob", "fit")["status"].get("conditions", [])
        ),
        DEADLINE_S,
        "the TrainJob to complete by itself: every torchrun exited 0",
    )


def test_a_trainjob_without_the_token_is_stopped_by_its_own_suspend_and_keeps_the_weights(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet, trainer_controller: Manager
) -> None:
    """kubectl annotate; no trainer takes POST /stop, so stopline suspends the TrainJob: torchrun forwards
    the kubelet's SIGTERM to its workers, every rank stops at one step, rank 0 saves (torchrun then exits 1,
    as it does on SIGTERM, and the weights still count: they were saved since the stop began)."""
    cluster_training_runtime(story, RUNTIME)
    apply(story, namespace, governing("watch-sft", "TrainJob", "trainer.kubeflow.org/v1alpha1", "sft"))
    wait_for_secret(story, namespace, "watch-sft")
    apply(story, namespace, torchrun_train_job("sft", "watch-sft", with_token=False))
    epoch_reached(story, namespace, "watch-sft", 2)
    pods = pod_names(story, namespace, "jobset.sigs.k8s.io/jobset-name=sft")
    story.kubectl("annotate", "tj", "watch-sft", "stopline.dev/stop=enough", "-n", namespace)
    stopped = finish(story, kubelet, namespace, "watch-sft")["status"]
    assert (stopped["phase"], stopped.get("stopReason", {}).get("type"), stopped.get("stopPath")) == (
        "Stopped",
        "Manual",
        "Suspend",
    ), stopped
    steps = stop_steps(kubelet, namespace, pods)
    assert sorted(steps) == [0, 1, 2, 3] and len(set(steps.values())) == 1, f"every rank, one step: {steps}"
    load_weights(stopped["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "sft")
    assert get(story, namespace, "trainjob", "sft")["spec"]["suspend"] is True, "left suspended, not deleted"


def test_a_jobset_is_stopped_by_annotation_through_post_stop(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet, jobset_controller: Manager
) -> None:
    """A JobSet of one Indexed Job of 2 pods, one process each (RANK from the completion index)."""
    apply(story, namespace, governing("watch-js", "JobSet", "jobset.x-k8s.io/v1alpha2", "js"))
    wait_for_secret(story, namespace, "watch-js")
    rank = {"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    env = [
        *trainer_env("watch-js", "runs/js"),
        *LOOPBACK,
        {"name": "RANK", "valueFrom": rank},
        {"name": "WORLD_SIZE", "value": "2"},
        {"name": "MASTER_ADDR", "value": "js-workers-0-0.js"},
        {"name": "MASTER_PORT", "value": "29500"},
    ]
    container = {
        "name": "trainer",
        "image": "local-process",
        "command": ["python", *EXAMPLE],
        "env": env,
        "volumeMounts": [CLAIM_MOUNT],
    }
    pod_spec = {"restartPolicy": "Never", "containers": [container], "volumes": [CLAIM_VOLUME]}
    job = {
        "parallelism": 2,
        "completions": 2,
        "completionMode": "Indexed",
        "backoffLimit": 0,
        "template": {"spec": pod_spec},
    }
    jobset = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "js"},
        "spec": {"replicatedJobs": [{"name": "workers", "replicas": 1, "template": {"spec": job}}]},
    }
    apply(story, namespace, jobset)
    epoch_reached(story, namespace, "watch-js", 2)
    story.kubectl("annotate", "tj", "watch-js", "stopline.dev/stop=enough", "-n", namespace)
    stopped = finish(story, kubelet, namespace, "watch-js")["status"]
    assert (stopped["phase"], stopped.get("stopPath")) == ("Stopped", "StopEndpoint"), stopped
    steps = stop_steps(kubelet, namespace, pod_names(story, namespace, "jobset.sigs.k8s.io/jobset-name=js"))
    assert sorted(steps) == [0, 1] and len(set(steps.values())) == 1, steps
    load_weights(stopped["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "js")
    assert exists(story, namespace, "jobset", "js"), "the target is never deleted"


def test_a_pytorchjob_whose_trainer_has_no_token_is_stopped_by_run_policy_suspend(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet, training_operator: Manager
) -> None:
    """A PyTorchJob of one Master (the local kubelet cannot resolve its per-replica Service names, so no
    Workers here): kubectl annotate; POST /stop is refused (no token), spec.runPolicy.suspend ends it."""
    apply(story, namespace, governing("watch-pt", "PyTorchJob", "kubeflow.org/v1", "pt"))
    wait_for_secret(story, namespace, "watch-pt")
    container = {
        "name": "pytorch",
        "image": "local-process",
        "command": ["python", *EXAMPLE],
        "env": [*trainer_env("watch-pt", "runs/pt", with_token=False), *LOOPBACK],
        "volumeMounts": [CLAIM_MOUNT],
    }
    master = {
        "replicas": 1,
        "restartPolicy": "Never",
        "template": {"spec": {"containers": [container], "volumes": [CLAIM_VOLUME]}},
    }
    apply(
        story,
        namespace,
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "pt"},
            "spec": {"pytorchReplicaSpecs": {"Master": master}},
        },
    )
    epoch_reached(story, namespace, "watch-pt", 2, kubelet)
    story.kubectl("annotate", "tj", "watch-pt", "stopline.dev/stop=enough", "-n", namespace)
    stopped = finish(story, kubelet, namespace, "watch-pt")["status"]
    found = (stopped["phase"], stopped.get("stopReason", {}).get("type"), stopped.get("stopPath"))
    assert found == ("Stopped", "Manual", "Suspend"), stopped
    load_weights(stopped["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "pt")
    assert get(story, namespace, "pytorchjob", "pt")["spec"]["runPolicy"]["suspend"] is True
