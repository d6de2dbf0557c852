"""Objects that merely carry a TrainingJob's label or name are never trusted (review M1, M3, M4): only the
Job it controls (by uid) and the pods that Job controls are its own."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import pytest

from faults.support import HostileTrainer, holds, job_suspended, progress_at
from operatorharness import (
    RUNNING_AND_READY,
    SINGLE_NAME,
    WAIT_S,
    apply,
    checkpoint_message,
    condition,
    control_token,
    exists,
    get,
    manifest,
    operator,
    phase_is,
    reserve_address,
    running_trainer,
    set_pod_status,
    status,
    stop_recorded,
    terminate,
)
from stopline_local.controlplane import ControlPlane, wait_until

pytestmark = pytest.mark.faults

FAST = {"interval": "1s"}
URI = "/stopline/checkpoints/runs/resnet-lr3e-4/step-000300.pt"
ATTACKER_URI = "s3://attacker-bucket/backdoored.pt"
CONTAINERS = [{"name": "trainer", "image": "ghcr.io/someone/else:1"}]


def create(plane: ControlPlane, namespace: str, manifest_: dict[str, Any]) -> None:
    plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest_))


def test_an_impostor_pod_gets_no_scrape_no_token_and_no_say_in_the_checkpoint(
    plane: ControlPlane, namespace: str
) -> None:
    """Anyone who may create pods in the namespace labels one as the victim's rank 0; it serves NaN,
    waits for POST /stop and exits 0 with a manifest naming the attacker's weights."""
    diverged = {"name": "diverged", "divergence": {"metric": "train_loss", "nonFinite": True}}
    victim_job = manifest(criteria=[diverged], metrics=dict(FAST))
    with ExitStack() as stack:
        stack.enter_context(operator(namespace))
        victim, victim_pod = stack.enter_context(running_trainer(plane, namespace, victim_job))
        token = control_token(plane, namespace, SINGLE_NAME)
        impostor = HostileTrainer((reserve_address()[0], victim.port), mode="nan-metrics")
        stack.callback(impostor.close)
        labels = {"stopline.dev/job": SINGLE_NAME, "batch.kubernetes.io/job-completion-index": "0"}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "aaa-impostor", "labels": labels},
            "spec": {"restartPolicy": "Never", "containers": CONTAINERS},
        }
        create(plane, namespace, pod)
        ip = {"podIP": impostor.ip, "podIPs": [{"ip": impostor.ip}]}
        set_pod_status(plane, namespace, "aaa-impostor", RUNNING_AND_READY | ip)

        for epoch in (1, 2, 3):
            victim.report(epoch, epoch * 100, val_loss=1.0 / epoch, train_loss=2.0 / epoch)
            wait_until(
                progress_at(plane, namespace, SINGLE_NAME, epoch), WAIT_S, f"the victim's epoch {epoch}"
            )
        running = status(plane, namespace, SINGLE_NAME)
        assert running["phase"] == "Running"
        assert running["progress"]["metrics"]["train_loss"] == pytest.approx(2.0 / 3)

        plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
        wait_until(lambda: victim.stop_reason == "enough", WAIT_S, "the victim's POST /stop")
        stop_recorded(plane, namespace)
        terminate(plane, namespace, "aaa-impostor", checkpoint_message(9, 900, ATTACKER_URI))
        holds(
            lambda: status(plane, namespace, SINGLE_NAME)["phase"] == "Stopping",
            3,
            "Stopping while only the impostor has exited with a manifest",
        )
        terminate(plane, namespace, victim_pod, checkpoint_message(3, 300, URI))
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")

    stopped = get(plane, namespace, "tj", SINGLE_NAME)
    assert stopped["status"]["stopReason"]["type"] == "Manual"
    assert stopped["status"]["checkpoint"]["uri"] == URI
    assert condition(stopped, "Finished")["reason"] == "CheckpointSaved"
    assert impostor.scrapes == 0
    assert not any(token in (header or "") for header in impostor.authorizations)
    assert impostor.authorizations == []  # no POST /stop reached it at all


def test_a_decoy_job_with_an_owner_reference_to_a_running_training_job_changes_nothing(
    plane: ControlPlane, namespace: str
) -> None:
    """A completed Job of another name, labelled for the victim and claiming it as its controller."""
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with operator(namespace), running_trainer(plane, namespace, training_job) as (victim, _):
        victim.report(1, 100, val_loss=1.0)
        wait_until(progress_at(plane, namespace, SINGLE_NAME, 1), WAIT_S, "epoch 1 read")
        uid = get(plane, namespace, "tj", SINGLE_NAME)["metadata"]["uid"]
        owner = {
            "apiVersion": "stopline.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": SINGLE_NAME,
            "uid": uid,
            "controller": True,
        }
        decoy = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "decoy",
                "labels": {"stopline.dev/job": SINGLE_NAME},
                "ownerReferences": [owner],
            },
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", "containers": CONTAINERS}},
            },
        }
        create(plane, namespace, decoy)
        decoy_pod = wait_until(
            lambda: get(plane, namespace, "pods", "-l", "batch.kubernetes.io/job-name=decoy")["items"],
            WAIT_S,
            "the decoy Job's pod",
        )[0]["metadata"]["name"]
        terminate(plane, namespace, decoy_pod)  # exits 0: the decoy Job completes
        wait_until(
            lambda: any(
                c["type"] == "Complete" and c["status"] == "True"
                for c in get(plane, namespace, "job", "decoy").get("status", {}).get("conditions", [])
            ),
            WAIT_S,
            "the decoy Job Complete",
        )
        holds(
            phase_is(plane, namespace, SINGLE_NAME, "Running"), 5, "the victim Running after the decoy ended"
        )
        victim.report(2, 200, val_loss=0.9)
        wait_until(progress_at(plane, namespace, SINGLE_NAME, 2), WAIT_S, "the victim still read")
    assert status(plane, namespace, SINGLE_NAME)["phase"] == "Running"
    assert not any(c["type"] == "Finished" for c in status(plane, namespace, SINGLE_NAME)["conditions"])


@pytest.mark.parametrize("annotation", ["stopline.dev/cancel=wrong data", "stopline.dev/stop=enough"])
def test_a_training_job_named_like_a_foreign_job_never_suspends_it_when_stopped(
    plane: ControlPlane, namespace: str, annotation: str
) -> None:
    """A Job `nightly-etl` that stopline does not control (its pods even carry the label); a TrainingJob
    of that name cannot adopt it, and a stop or cancel of that TrainingJob leaves the Job and its pod be."""
    template = {
        "metadata": {"labels": {"stopline.dev/job": "nightly-etl"}},
        "spec": {"restartPolicy": "Never", "containers": CONTAINERS},
    }
    foreign = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "nightly-etl"},
        "spec": {"backoffLimit": 0, "template": template},
    }
    create(plane, namespace, foreign)
    foreign_pod = wait_until(
        lambda: get(plane, namespace, "pods", "-l", "batch.kubernetes.io/job-name=nightly-etl")["items"],
        WAIT_S,
        "the foreign Job's pod",
    )[0]["metadata"]["name"]
    with operator(namespace):
        training_job = manifest(
            "nightly-etl", criteria=[], metrics=dict(FAST), stopPolicy={"ackTimeout": "2s"}
        )
        apply(plane, namespace, training_job)
        plane.kubectl("annotate", "tj", "nightly-etl", "-n", namespace, annotation)
        wait_until(
            lambda: status(plane, namespace, "nightly-etl").get("phase") in ("Stopped", "Cancelled"),
            WAIT_S,
            "the TrainingJob to end",
        )
        holds(lambda: not job_suspended(plane, namespace, "nightly-etl"), 3, "the foreign Job not suspended")
    assert exists(plane, namespace, "pod", foreign_pod)
    assert "deletionTimestamp" not in get(plane, namespace, "pod", foreign_pod)["metadata"]
    assert get(plane, namespace, "job", "nightly-etl")["metadata"].get("ownerReferences") is None
