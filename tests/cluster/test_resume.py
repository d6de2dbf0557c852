"""A person's resume (stopline.dev/resume) against the real apiserver and Job controller.

The test plays the trainer and the kubelet as tests/cluster/test_stopping.py does: the stand-in's real
endpoint on 127.0.0.x, pod status patched as a kubelet would, rank 0's manifest as its termination message.
"""

from __future__ import annotations

from typing import Any

import pytest

from operatorharness import (
    RUNNING_AND_READY,
    SINGLE_NAME,
    WAIT_S,
    StandInTrainer,
    apply,
    checkpoint_message,
    condition,
    epoch_read,
    event_posted,
    events,
    get,
    manifest,
    operator,
    phase_is,
    pods,
    running_trainer,
    set_pod_status,
    status,
    stop_recorded,
    terminate,
)
from stopline_local.controlplane import ControlPlane, wait_until

pytestmark = pytest.mark.cluster

FAST = {"interval": "1s"}
URI = "/stopline/checkpoints/runs/resnet-lr3e-4/step-000200.pt"


def annotate(plane: ControlPlane, namespace: str, *pairs: str, name: str = SINGLE_NAME) -> None:
    plane.kubectl("annotate", "--overwrite", "tj", name, "-n", namespace, *pairs)


def stop_by_hand(
    plane: ControlPlane, namespace: str, trainer: StandInTrainer, pod: str, epoch: int, words: str
) -> dict[str, Any]:
    """stopline.dev/stop=words; the trainer saves at `epoch` and exits 0: Stopped with the checkpoint."""
    annotate(plane, namespace, f"stopline.dev/stop={words}")
    wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
    stop_recorded(plane, namespace)
    terminate(plane, namespace, pod, checkpoint_message(epoch, epoch * 100, URI))
    wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
    return dict(get(plane, namespace, "tj", SINGLE_NAME))


def count(plane: ControlPlane, namespace: str, reason: str) -> int:
    return sum(1 for event in events(plane, namespace, SINGLE_NAME) if event["reason"] == reason)


def test_a_stopped_job_resumes_from_its_checkpoint_once_per_request_and_stops_again(
    plane: ControlPlane, namespace: str
) -> None:
    training_job = manifest(criteria=[], metrics=dict(FAST), maxEpochs=20)
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
        for epoch in (1, 2):
            trainer.report(epoch, epoch * 100, val_loss=1.0 / epoch)
            wait_until(epoch_read(plane, namespace, epoch), WAIT_S, f"the operator reading epoch {epoch}")
        stopped = stop_by_hand(plane, namespace, trainer, pod, 2, "enough")
        first_job = get(plane, namespace, "job", SINGLE_NAME)["metadata"]["uid"]
        assert stopped["status"]["checkpoint"]["epoch"] == 2

        annotate(plane, namespace, "stopline.dev/resume=the sweep turned")
        wait_until(lambda: status(plane, namespace, SINGLE_NAME).get("resumeCount") == 1, WAIT_S, "a resume")
        resumed = get(plane, namespace, "tj", SINGLE_NAME)
        entry = resumed["status"]["resumes"][0]
        assert entry["fromEpoch"] == 2 and entry["reason"] == "Manual"
        assert entry["message"] == "the sweep turned"
        assert (
            entry["stoppedBy"]["type"] == "Manual" and entry["stoppedBy"]["criterion"] == "stopline.dev/stop"
        )
        assert resumed["status"]["phase"] in ("Pending", "Running")
        assert "stopReason" not in resumed["status"] and "gpuSecondsSaved" not in resumed["status"]
        assert resumed["status"]["checkpoint"]["epoch"] == 2  # where the trainers resume from
        assert resumed["status"]["runSeconds"] > 0  # the run the stop ended: budgets go on from it
        for type_ in ("StopRequested", "Finished"):
            found = condition(resumed, type_)
            assert (found["status"], found["reason"]) == ("False", "Resumed"), found
        wait_until(event_posted(plane, namespace, SINGLE_NAME, "Resumed", "Normal"), WAIT_S, "Event Resumed")

        # the stopped run's Job goes, a new one is made from the template, its pod runs the trainer again
        wait_until(
            lambda: (
                (job := get(plane, namespace, "jobs")["items"]) and job[0]["metadata"]["uid"] != first_job
            ),
            WAIT_S,
            "the Job made again",
        )
        wait_until(
            lambda: any(p["metadata"]["name"] != pod for p in pods(plane, namespace, SINGLE_NAME)),
            WAIT_S,
            "the new Job's pod",
        )
        second = next(
            p["metadata"]["name"] for p in pods(plane, namespace, SINGLE_NAME) if p["metadata"]["name"] != pod
        )
        ip = {"podIP": trainer.ip, "podIPs": [{"ip": trainer.ip}]}
        set_pod_status(plane, namespace, second, RUNNING_AND_READY | ip)
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Running"), WAIT_S, "phase Running again")
        trainer.report(3, 300, val_loss=0.3)
        wait_until(epoch_read(plane, namespace, 3), WAIT_S, "the operator reading epoch 3 after the resume")
        # the stop annotation still reads "enough": the resume answered it, so the job runs on
        running = status(plane, namespace, SINGLE_NAME)
        assert running["phase"] == "Running" and running["curve"][:3] == [1.0, 0.5, 0.3], running

        # the same request again (another reconcile, another annotation's change) does nothing
        annotate(plane, namespace, "example.com/touched=1")
        annotate(plane, namespace, "stopline.dev/resume=the sweep turned")
        trainer.report(4, 400, val_loss=0.25)
        wait_until(epoch_read(plane, namespace, 4), WAIT_S, "epoch 4")
        assert status(plane, namespace, SINGLE_NAME)["resumeCount"] == 1
        assert count(plane, namespace, "Resumed") == 1
        assert count(plane, namespace, "ResumeRefused") == 0  # a request carried out is not refused later

        # a new stop value stops it again, by the criteria and annotations as they stand now
        stopped_again = stop_by_hand(plane, namespace, trainer, second, 4, "enough, really")
    reason = stopped_again["status"]["stopReason"]
    assert (reason["type"], reason["message"]) == ("Manual", "enough, really")
    assert stopped_again["status"]["checkpoint"]["epoch"] == 4
    assert [entry["fromEpoch"] for entry in stopped_again["status"]["resumes"]] == [2]
    lines = plane.kubectl("get", "tj", "-n", namespace).stdout.splitlines()
    assert lines[0].split()[6] == "RESUMED" and lines[1].split()[6] == "1", lines


def test_resume_is_refused_with_why_and_the_fix_and_changes_nothing(
    plane: ControlPlane, namespace: str
) -> None:
    succeeded = manifest(name="done", criteria=[], metrics=dict(FAST))
    nothing_saved = manifest(name="unsaved", criteria=[], metrics=dict(FAST))
    target = manifest(name="governs", criteria=[], metrics=dict(FAST))
    del target["spec"]["template"]
    target["spec"]["targetRef"] = {"apiVersion": "batch/v1", "kind": "Job", "name": "someone-elses"}
    with operator(namespace):
        with running_trainer(plane, namespace, succeeded) as (trainer, pod):
            trainer.report(1, 100, val_loss=1.0)
            terminate(plane, namespace, pod, checkpoint_message(1, 100, URI))
            wait_until(phase_is(plane, namespace, "done", "Succeeded"), WAIT_S, "done: Succeeded")
        with running_trainer(plane, namespace, nothing_saved) as (trainer, pod):
            annotate(plane, namespace, "stopline.dev/stop=now", name="unsaved")
            wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
            terminate(plane, namespace, pod)  # exited 0 without a manifest
            wait_until(phase_is(plane, namespace, "unsaved", "Stopped"), WAIT_S, "unsaved: Stopped")
        apply(plane, namespace, target)
        before = {name: status(plane, namespace, name) for name in ("done", "unsaved")}
        for name in ("done", "unsaved", "governs"):
            annotate(plane, namespace, "stopline.dev/resume=please", name=name)
        for name, words in (
            ("done", "TrainingJob is Succeeded, not Stopped: it ran to the end"),
            ("unsaved", "status.checkpoint is empty"),
            ("governs", "spec.targetRef: stopline resumes only a TrainingJob that runs its own Job"),
        ):
            wait_until(
                event_posted(plane, namespace, name, "ResumeRefused"), WAIT_S, f"{name}: ResumeRefused"
            )
            refused = [e for e in events(plane, namespace, name, "Warning") if e["reason"] == "ResumeRefused"]
            assert len(refused) == 1 and refused[0]["message"].startswith(words), refused
            assert "stopline.dev/resume-" in refused[0]["message"] or name == "governs"
        annotate(plane, namespace, "example.com/touched=1", name="done")  # another reconcile: refused once
        for name in ("done", "unsaved"):
            after = status(plane, namespace, name)
            assert "resumes" not in after and after["phase"] == before[name]["phase"]
    assert len([e for e in events(plane, namespace, "done") if e["reason"] == "ResumeRefused"]) == 1
