"""The operator (in-process, kopf.testing.KopfRunner) against the real apiserver and Job controller.

There is no kubelet and no scheduler in this tier: the Job controller's pods stay Pending with no node.
The tests stand in for the kubelet by patching the pods' status subresource (Running and Ready, then
Succeeded or Failed), and the real Job controller turns that into the Job's status and conditions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
import yaml

from operatorharness import (
    RUNNING_AND_READY,
    SINGLE,
    SINGLE_NAME,
    WAIT_S,
    checkpoint_message,
    condition,
    event_posted,
    exists,
    get,
    operator,
    phase_is,
    pods,
    set_pod_status,
    terminate,
)
from stopline_local.controlplane import REPO, ControlPlane, free_port, wait_until

pytestmark = pytest.mark.cluster

SWEEP = REPO / "examples" / "sweep-member-s3.yaml"
SWEEP_NAME = "resnet-sweep-lr1e-3"


def start_single_rank_job(plane: ControlPlane, namespace: str) -> str:
    """Apply the single-GPU example and wait for its (Pending) pod; the pod's name."""
    plane.kubectl("apply", "-n", namespace, "-f", str(SINGLE))
    wait_until(lambda: len(pods(plane, namespace, SINGLE_NAME)) == 1, WAIT_S, "the Job controller's pod")
    return str(pods(plane, namespace, SINGLE_NAME)[0]["metadata"]["name"])


def test_a_single_rank_job_gets_its_secret_and_job_and_is_pending(
    plane: ControlPlane, namespace: str
) -> None:
    with operator(namespace):
        plane.kubectl("apply", "-n", namespace, "-f", str(SINGLE))
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Pending"), WAIT_S, "phase Pending")
        training_job = get(plane, namespace, "tj", SINGLE_NAME)
        uid = training_job["metadata"]["uid"]
        job = get(plane, namespace, "job", SINGLE_NAME)
        secret = get(plane, namespace, "secret", f"{SINGLE_NAME}-stopline-control")
        for child in (job, secret):
            [reference] = child["metadata"]["ownerReferences"]
            assert (reference["kind"], reference["uid"], reference["controller"]) == (
                "TrainingJob",
                uid,
                True,
            )
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["STOPLINE_JOB"]["value"] == SINGLE_NAME
        assert env["STOPLINE_CHECKPOINT_URI"]["value"] == "/stopline/checkpoints/runs/resnet-lr3e-4"
        assert (
            env["STOPLINE_CONTROL_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
        )
        assert "completionMode" not in job["spec"] or job["spec"]["completionMode"] == "NonIndexed"
        assert not exists(plane, namespace, "service", SINGLE_NAME)
        assert condition(training_job, "Created")["status"] == "True"
        assert training_job["status"]["observedGeneration"] == training_job["metadata"]["generation"] == 1
        table = plane.kubectl("get", "tj", SINGLE_NAME, "-n", namespace).stdout
        assert "PHASE" in table and "Pending" in table

    # the operator wrote only status: no annotation of its own, no new generation
    after = get(plane, namespace, "tj", SINGLE_NAME)
    assert set(after["metadata"].get("annotations", {})) <= {
        "kubectl.kubernetes.io/last-applied-configuration"
    }
    assert "finalizers" not in after["metadata"]
    assert after["metadata"]["generation"] == 1


def test_a_two_rank_job_gets_a_headless_service_and_an_indexed_job(
    plane: ControlPlane, namespace: str
) -> None:
    with operator(namespace):
        plane.kubectl("apply", "-n", namespace, "-f", str(SWEEP))
        wait_until(phase_is(plane, namespace, SWEEP_NAME, "Pending"), WAIT_S, "phase Pending")
        service = get(plane, namespace, "service", SWEEP_NAME)
        job = get(plane, namespace, "job", SWEEP_NAME)
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["labels"]["stopline.dev/study"] == "resnet-sweep"
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == (
        "Indexed",
        2,
        2,
    )


def test_a_restarted_operator_adopts_the_children_it_made_and_writes_nothing(
    plane: ControlPlane, namespace: str
) -> None:
    with operator(namespace):
        start_single_rank_job(plane, namespace)
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Pending"), WAIT_S, "phase Pending")
    before = get(plane, namespace, "tj", SINGLE_NAME)
    job_uid = get(plane, namespace, "job", SINGLE_NAME)["metadata"]["uid"]
    token = get(plane, namespace, "secret", f"{SINGLE_NAME}-stopline-control")["data"]

    with operator(namespace) as runner:
        # a second job, created after the restart, shows the new operator has worked through its queue
        plane.kubectl("apply", "-n", namespace, "-f", str(SWEEP))
        wait_until(phase_is(plane, namespace, SWEEP_NAME, "Pending"), WAIT_S, "the new job's phase Pending")
    # the resume of the first job and the creation of the second both ran
    assert runner.output.count("Handler 'run_training_job' succeeded") == 2, runner.output
    jobs = get(plane, namespace, "jobs", "-l", f"stopline.dev/job={SINGLE_NAME}")["items"]
    assert [j["metadata"]["uid"] for j in jobs] == [job_uid]
    assert get(plane, namespace, "secret", f"{SINGLE_NAME}-stopline-control")["data"] == token
    after = get(plane, namespace, "tj", SINGLE_NAME)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_a_restarted_operator_finishes_what_a_crash_left_undone(plane: ControlPlane, namespace: str) -> None:
    """A crash between creating the Secret and the Job: the Job is made on restart, the token kept."""
    with operator(namespace):
        start_single_rank_job(plane, namespace)
    token = get(plane, namespace, "secret", f"{SINGLE_NAME}-stopline-control")["data"]
    plane.kubectl("delete", "job", SINGLE_NAME, "-n", namespace, "--wait=true")
    with operator(namespace):
        wait_until(lambda: exists(plane, namespace, "job", SINGLE_NAME), WAIT_S, "the Job made again")
    assert get(plane, namespace, "secret", f"{SINGLE_NAME}-stopline-control")["data"] == token


def test_the_phase_follows_the_pods_to_succeeded_with_the_final_checkpoint(
    plane: ControlPlane, namespace: str
) -> None:
    """A job run to the end shows where its final weights are, as a stopped one does."""
    with operator(namespace):
        pod = start_single_rank_job(plane, namespace)
        set_pod_status(plane, namespace, pod, RUNNING_AND_READY)
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Running"), WAIT_S, "phase Running")
        terminate(plane, namespace, pod, checkpoint_message(90, 9000, "/stopline/checkpoints/final.pt"))
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Succeeded"), WAIT_S, "phase Succeeded")
    training_job = get(plane, namespace, "tj", SINGLE_NAME)
    assert condition(training_job, "Finished")["reason"] == "JobComplete"
    assert condition(training_job, "Running")["status"] == "False"
    checkpoint = training_job["status"]["checkpoint"]
    assert (checkpoint["uri"], checkpoint["epoch"], checkpoint["step"]) == (
        "/stopline/checkpoints/final.pt",
        90,
        9000,
    )


def test_a_failed_pod_fails_the_training_job_with_the_jobs_reason(
    plane: ControlPlane, namespace: str
) -> None:
    with operator(namespace):
        pod = start_single_rank_job(plane, namespace)
        terminate(plane, namespace, pod, "Traceback (most recent call last): ...", exit_code=3)
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Failed"), WAIT_S, "phase Failed")
        wait_until(
            event_posted(plane, namespace, SINGLE_NAME, "BackoffLimitExceeded"), WAIT_S, "a Warning Event"
        )
    finished = condition(get(plane, namespace, "tj", SINGLE_NAME), "Finished")
    assert (finished["status"], finished["reason"]) == ("True", "BackoffLimitExceeded")
    assert "rank 0 exited with code 3" in finished["message"]


def test_a_spec_the_crd_lets_through_but_stopline_cannot_run_fails_naming_the_field(
    plane: ControlPlane, namespace: str
) -> None:
    """The template keeps unknown fields for the apiserver; parse_spec does not, and says which one."""
    manifest = yaml.safe_load(SINGLE.read_text())
    manifest["spec"]["template"]["replicas"] = 2  # a Deployment habit: not a PodTemplateSpec field
    with operator(namespace):
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Failed"), WAIT_S, "phase Failed")
        wait_until(event_posted(plane, namespace, SINGLE_NAME, "InvalidSpec"), WAIT_S, "a Warning Event")
    created = condition(get(plane, namespace, "tj", SINGLE_NAME), "Created")
    assert (created["status"], created["reason"]) == ("False", "InvalidSpec")
    assert created["message"].startswith("spec.template.replicas: unknown field")
    assert not exists(plane, namespace, "job", SINGLE_NAME)
    assert not exists(plane, namespace, "secret", f"{SINGLE_NAME}-stopline-control")


def test_a_template_the_apiserver_refuses_as_a_pod_fails_with_the_apiservers_words(
    plane: ControlPlane, namespace: str
) -> None:
    """spec.template keeps unknown fields, so only the Job's create finds a malformed container."""
    manifest = yaml.safe_load(SINGLE.read_text())
    manifest["spec"]["template"]["spec"]["containers"][0]["args"] = ["--lr", 0.001]  # YAML's unquoted 1e-3
    with operator(namespace):
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Failed"), WAIT_S, "phase Failed")
        wait_until(event_posted(plane, namespace, SINGLE_NAME, "InvalidSpec"), WAIT_S, "a Warning Event")
    created = condition(get(plane, namespace, "tj", SINGLE_NAME), "Created")
    assert (created["status"], created["reason"]) == ("False", "InvalidSpec")
    assert created["message"].startswith("spec.template: the apiserver refused the trainer's Job:")
    assert "args" in created["message"], created["message"]
    assert not exists(plane, namespace, "job", SINGLE_NAME)


def test_the_stopline_operator_command_serves_healthz_and_metrics_runs_jobs_and_stops_on_sigterm(
    plane: ControlPlane, namespace: str
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    healthz, metrics = f"http://{listen}/healthz", f"http://{listen}/metrics"
    command = [sys.executable, "-m", "stopline.cli", "operator", "-n", namespace, "--listen", listen]
    process = subprocess.Popen(
        command, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:

        def healthy() -> bool:
            with urllib.request.urlopen(healthz, timeout=2) as response:
                return bool(response.status == 200)

        wait_until(healthy, WAIT_S, "the operator's /healthz")
        plane.kubectl("apply", "-n", namespace, "-f", str(SINGLE))
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Pending"), WAIT_S, "phase Pending")
        assert exists(plane, namespace, "job", SINGLE_NAME)

        def pending_counted() -> bool:
            with urllib.request.urlopen(metrics, timeout=2) as response:
                return 'stopline_training_jobs{phase="Pending"} 1.0' in response.read().decode()

        wait_until(pending_counted, WAIT_S, "the operator's /metrics counting one Pending job")
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, output


def test_a_missing_checkpoint_claim_shows_as_a_condition_naming_the_field(
    plane: ControlPlane, namespace: str
) -> None:
    """The example's PVC does not exist in a fresh namespace: the pods would wait with no word to the user."""

    def claim_condition() -> Any:
        conditions = get(plane, namespace, "tj", SINGLE_NAME).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "CheckpointTarget"), None)

    with operator(namespace):
        plane.kubectl("apply", "-n", namespace, "-f", str(SINGLE))
        missing = wait_until(claim_condition, WAIT_S, "condition CheckpointTarget")
    assert (missing["status"], missing["reason"]) == ("False", "ClaimNotFound")
    assert missing["message"].startswith("spec.checkpoint.pvc.claimName: PersistentVolumeClaim 'checkpoints'")
    assert get(plane, namespace, "tj", SINGLE_NAME)["status"]["phase"] == "Pending"
