"""TrainingJobs that govern a workload a user made (spec.targetRef) instead of running their own Job.

The user's batch Job runs the example trainer with the trainer contract set in its own pod template (the
token from the Secret the operator makes for the TrainingJob); stopline reads it, stops it and records the
weights, and never deletes it. Two paths: POST /stop where the trainer holds the token, the Job's own
suspend (SIGTERM) where it does not.
"""

from __future__ import annotations

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
from operatorharness import apply, exists, get, status
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet

pytestmark = pytest.mark.e2e


def user_job(
    name: str,
    governor: str,
    epochs: int = 60,
    with_token: bool = True,
    args: tuple[str, ...] = ("--sleep-per-step", "0.05"),
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A plain batch Job as a user (or an HPO tool) writes it, running the example trainer."""
    trainer = {
        "name": "train",
        "image": "ghcr.io/example/train:1",  # ignored by the local kubelet
        "command": ["python", "trainer-image/examples/train.py"],
        "args": ["--epochs", str(epochs), "--steps-per-epoch", "10", *args],
        "env": trainer_env(governor, f"runs/{name}", with_token),
        "volumeMounts": [{"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}],
    }
    pod = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 60,
        "containers": [trainer],
        "volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": CLAIM}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"backoffLimit": 0, "template": {"spec": pod}},
    }


def sweep_of_jobs(name: str, labels: dict[str, str], criteria: list[dict[str, Any]]) -> dict[str, Any]:
    """A TrainingJob that governs every Job labelled `labels` in its namespace (spec.targetSelector)."""
    sweep = governing(name, "Job", "batch/v1", "unused", criteria=criteria)
    del sweep["spec"]["targetRef"]
    sweep["spec"]["targetSelector"] = {"apiVersion": "batch/v1", "kind": "Job", "matchLabels": labels}
    sweep["spec"]["checkpoint"] = {"pvc": {"claimName": CLAIM, "path": "runs"}}
    return sweep


def test_patience_stops_a_users_job_by_post_stop_and_leaves_the_job_there(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(story, namespace, governing("watch-a", "Job", "batch/v1", "train-a", criteria=[PATIENCE]))
    wait_for_secret(story, namespace, "watch-a")
    apply(story, namespace, user_job("train-a", "watch-a"))
    stopped = finish(story, kubelet, namespace, "watch-a")
    found = stopped["status"]
    assert found["phase"] == "Stopped", found
    reason = found.get("stopReason", {})
    assert (reason.get("type"), reason.get("criterion")) == ("Patience", "plateau"), found
    assert found["stopPath"] == "StopEndpoint", found
    created = next(c for c in found["conditions"] if c["type"] == "Created")
    assert (created["status"], created["reason"]) == ("True", "TargetFound"), created
    load_weights(found["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "train-a")
    job = get(story, namespace, "job", "train-a")  # the user's Job is still there, and completed
    wait_until(
        lambda: any(
            c["type"] == "Complete"
            for c in get(story, namespace, "job", "train-a")["status"].get("conditions", [])
        ),
        DEADLINE_S,
        "the user's Job to complete: every trainer exited 0",
    )
    assert job["metadata"]["name"] == "train-a"


def test_a_trainer_without_the_token_is_stopped_by_the_jobs_own_suspend(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(story, namespace, governing("watch-b", "Job", "batch/v1", "train-b"))
    wait_for_secret(story, namespace, "watch-b")
    apply(story, namespace, user_job("train-b", "watch-b", with_token=False))
    epoch_reached(story, namespace, "watch-b", 2)
    story.kubectl("annotate", "tj", "watch-b", "stopline.dev/stop=enough", "-n", namespace)
    stopped = finish(story, kubelet, namespace, "watch-b")
    found = stopped["status"]
    assert found["phase"] == "Stopped", found
    assert found.get("stopReason", {}).get("type") == "Manual", found
    assert found["stopPath"] == "Suspend", found
    load_weights(found["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "train-b")
    job = get(story, namespace, "job", "train-b")
    assert job["spec"]["suspend"] is True, "stopped by its own suspend, and left suspended"


def test_a_target_that_is_not_there_is_named_and_waited_for(story: ControlPlane, namespace: str) -> None:
    apply(story, namespace, governing("watch-c", "Job", "batch/v1", "not-yet"))

    def waiting() -> bool:
        conditions = status(story, namespace, "watch-c").get("conditions", [])
        return any(c["type"] == "Created" and c["reason"] == "TargetNotFound" for c in conditions)

    wait_until(waiting, DEADLINE_S, "watch-c: Created False, TargetNotFound")
    found = status(story, namespace, "watch-c")
    created = next(c for c in found["conditions"] if c["type"] == "Created")
    assert "spec.targetRef: Job not-yet" in created["message"], created
    assert found["phase"] == "Pending"


def test_a_sweep_of_six_users_jobs_is_judged_as_one_cohort_and_the_worst_is_stopped(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    """An HPO tool made six Jobs labelled sweep=lr; one TrainingJob with a selector governs them all: one
    member TrainingJob each, one cohort, and only the hopeless learning rate is stopped. Epochs of ~2 s, so
    the operator (reading every second) sees every epoch of every job."""
    cohort = {"name": "median", "cohort": {"minJobs": 3, "percentile": 50, "warmupEpochs": 1}}
    apply(story, namespace, sweep_of_jobs("lr", {"sweep": "lr"}, [cohort]))
    wait_for_secret(story, namespace, "lr")  # one token for the whole sweep: the pods name the sweep's
    runs = {f"run-{index}": ("3e-3", 6) for index in range(5)} | {"run-bad": ("1e-7", 60)}
    for job, (lr, epochs) in runs.items():
        args = ("--lr", lr, "--sleep-per-step", "0.2")
        apply(story, namespace, user_job(job, "lr", epochs, args=args, labels={"sweep": "lr"}))
    members = {job: f"lr-{job}" for job in runs}
    ended = {job: finish(story, kubelet, namespace, member) for job, member in members.items()}
    bad = ended["run-bad"]["status"]
    assert (bad["phase"], bad.get("stopReason", {}).get("type")) == ("Stopped", "Cohort"), bad
    assert bad["stopPath"] == "StopEndpoint" and bad["checkpoint"]["epoch"] < 60, bad
    load_weights(bad["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "run-bad")
    assert [ended[job]["status"]["phase"] for job in runs if job != "run-bad"] == ["Succeeded"] * 5
    listed = get(story, namespace, "tj", "-l", "stopline.dev/sweep=lr")["items"]
    assert sorted(item["metadata"]["name"] for item in listed) == sorted(members.values())
    assert {item["metadata"]["labels"]["stopline.dev/study"] for item in listed} == {"lr"}
    assert status(story, namespace, "lr")["members"] == 6
    assert exists(story, namespace, "job", "run-bad"), "the sweep's workloads are never deleted"
