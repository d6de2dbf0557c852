"""The phase and conditions a TrainingJob gets from its Job: forward only, written only when they change."""

from __future__ import annotations

from typing import Any

from stopline import lifecycle
from stopline.status import patch_for

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"


def desired_status(
    training_job: dict[str, Any], job: dict[str, Any] | None, at: str, **options: Any
) -> dict[str, Any]:
    """The status after the status writer applied lifecycle's change at `at`."""
    change = lifecycle.desired_status(training_job, job, **options)
    current = training_job.get("status") or {}
    return {**current, **(patch_for(current, change, at) or {})}


def changed(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in desired.items())


def training_job(replicas: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "tj", "generation": 3},
        "spec": {"replicas": replicas},
        "status": status or {},
    }


def job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "tj"}, "status": status}


def finished(kind: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def types(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_a_job_whose_pods_wait_for_a_node_is_pending_even_though_they_count_as_active() -> None:
    status = desired_status(training_job(), job(active=1), T0)
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 3
    assert types(status) == {"Created": ("True", "ChildrenCreated")}


def test_running_needs_every_rank_ready_and_then_stays_running() -> None:
    assert desired_status(training_job(replicas=2), job(ready=1), T0)["phase"] == "Pending"
    running = desired_status(training_job(replicas=2), job(ready=2), T0)
    assert running["phase"] == "Running"
    # a preempted Job loses its pods; the phase does not go back
    assert desired_status(training_job(replicas=2, status=running), job(ready=0), T1)["phase"] == "Running"


def test_a_complete_job_succeeds_and_a_failed_one_fails_with_its_reason() -> None:
    done = desired_status(training_job(), job(conditions=[finished("Complete")]), T0)
    assert done["phase"] == "Succeeded"
    assert types(done)["Finished"] == ("True", "JobComplete")
    assert types(done)["Running"] == ("False", "JobComplete")
    failed_job = job(conditions=[finished("Failed", "BackoffLimitExceeded", "Job has reached the limit")])
    failed = desired_status(training_job(), failed_job, T0)
    assert failed["phase"] == "Failed"
    [condition] = [c for c in failed["conditions"] if c["type"] == "Finished"]
    assert condition["reason"] == "BackoffLimitExceeded"
    assert condition["message"] == "Job has reached the limit"


def test_a_finished_job_never_changes_phase_again() -> None:
    done = desired_status(training_job(), job(conditions=[finished("Complete")]), T0)
    again = desired_status(training_job(status=done), None, T1)
    assert not changed(done, again)


def test_an_invalid_spec_fails_with_the_field_and_no_job() -> None:
    status = desired_status(training_job(), None, T0, invalid_spec="spec.template.replicas: unknown field")
    assert status["phase"] == "Failed"
    [condition] = status["conditions"]
    assert (condition["type"], condition["status"]) == ("Created", "False")
    assert condition["reason"] == "InvalidSpec"
    assert condition["message"] == "spec.template.replicas: unknown field"


def test_an_unchanged_job_needs_no_write_and_keeps_the_transition_times() -> None:
    first = desired_status(training_job(), job(ready=1), T0)
    second = desired_status(training_job(status=first), job(ready=1, active=1), T1)
    assert not changed(first, second)
    assert {c["lastTransitionTime"] for c in second["conditions"]} == {T0}


def test_a_new_generation_is_a_change_to_write() -> None:
    first = desired_status(training_job(), job(), T0)
    newer = training_job(status=first)
    newer["metadata"]["generation"] = 4
    assert changed(first, desired_status(newer, job(), T1))


def test_a_finished_job_records_rank_zeros_checkpoint_and_a_failed_ranks_exit_code() -> None:
    checkpoint = {"uri": "/ckpt/final.pt", "epoch": 90, "step": 9000}
    done = desired_status(
        training_job(), job(conditions=[finished("Complete")]), T0, ending=lifecycle.Ending(checkpoint)
    )
    assert done["phase"] == "Succeeded" and done["checkpoint"] == checkpoint
    missing = lifecycle.Condition(
        "CheckpointVerified", False, "ObjectMissing", "s3://b/final.pt does not exist"
    )
    unverified = desired_status(
        training_job(),
        job(conditions=[finished("Complete")]),
        T0,
        ending=lifecycle.Ending(checkpoint, None, missing),
    )
    assert types(unverified)["CheckpointVerified"] == ("False", "ObjectMissing")
    crashed = lifecycle.Ending(failure="rank 1 exited with code 3; its last log lines: CUDA error")
    failed_job = job(conditions=[finished("Failed", "BackoffLimitExceeded", "Job has reached the limit")])
    failed = desired_status(training_job(), failed_job, T0, ending=crashed)
    [condition] = [c for c in failed["conditions"] if c["type"] == "Finished"]
    assert (
        condition["message"]
        == "Job has reached the limit; rank 1 exited with code 3; its last log lines: CUDA error"
    )


def test_a_job_completed_on_an_unrecorded_stop_ends_stopped_for_that_reason() -> None:
    """The operator sent POST /stop and restarted before writing Stopping; the trainer saved and exited
    with the decision in its termination message: Stopped for it, not Succeeded."""
    checkpoint = {"uri": "/ckpt/e7.pt", "epoch": 7, "step": 700}
    ending = lifecycle.Ending(checkpoint, stopped={"type": "Patience", "criterion": "plateau"})
    status = desired_status(
        training_job(status={"phase": "Running"}), job(conditions=[finished("Complete")]), T0, ending=ending
    )
    assert status["phase"] == "Stopped" and status["checkpoint"] == checkpoint
    assert (
        status["stopReason"]["type"],
        status["stopReason"]["criterion"],
        status["stopReason"]["epoch"],
    ) == (
        "Patience",
        "plateau",
        7,
    )
    assert types(status)["Finished"] == ("True", "CheckpointSaved")
    assert types(status)["StopRequested"] == ("True", "Patience")


def queued_job(suspend: bool, **status: Any) -> dict[str, Any]:
    """A Job a queue admits (Kueue's queue-name label), suspended or not."""
    labels = {"kueue.x-k8s.io/queue-name": "team-a"}
    return {"metadata": {"name": "tj", "labels": labels}, "spec": {"suspend": suspend}, "status": status}


def test_a_queue_holds_the_job_queued_then_admits_it_and_takes_it_back_as_preempted() -> None:
    words = "Kueue says: couldn't assign flavors to pod set main: insufficient unused quota"
    queued = desired_status(training_job(), queued_job(True), T0, queue_says=words, now=0.0)
    assert queued["phase"] == "Queued"
    admitted = find(queued, "Admitted")
    assert (admitted["status"], admitted["reason"], admitted["message"]) == ("False", "Queued", words)

    starting = desired_status(training_job(status=queued), queued_job(False, active=1), T0, now=10.0)
    assert starting["phase"] == "Pending"
    assert types(starting)["Admitted"] == ("True", "Admitted")
    running = desired_status(training_job(status=starting), queued_job(False, ready=1), T0, now=20.0)
    assert running["phase"] == "Running"

    # the queue suspends it again an hour after it started running: Preempted, and that hour is kept
    preempted = desired_status(training_job(status=running), queued_job(True), T1, now=3600.0 + 1767225600)
    assert preempted["phase"] == "Preempted"
    assert types(preempted)["Admitted"] == ("False", "Preempted")
    assert types(preempted)["Running"] == ("False", "Preempted")
    assert preempted["runSeconds"] == 3600.0

    # admitted again: Pending, then Running; the hour already run stays
    again = desired_status(training_job(status=preempted), queued_job(False, ready=1), T1, now=0.0)
    assert (again["phase"], again["runSeconds"]) == ("Running", 3600.0)
    assert types(again)["Admitted"] == ("True", "Admitted")


def test_a_job_preempted_before_its_pods_were_ready_is_preempted_not_queued() -> None:
    queued = desired_status(training_job(), queued_job(True), T0, now=0.0)
    starting = desired_status(training_job(status=queued), queued_job(False, active=1), T0, now=1.0)
    again = desired_status(training_job(status=starting), queued_job(True), T0, now=2.0)
    assert again["phase"] == "Preempted"
    assert "runSeconds" not in again  # it never ran


def test_a_queued_job_that_finishes_is_finished_not_held() -> None:
    done = queued_job(True, conditions=[finished("Complete")])
    assert desired_status(training_job(), done, T0, now=0.0)["phase"] == "Succeeded"


def find(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_a_job_that_ends_between_two_reads_keeps_its_last_epoch_in_the_curve() -> None:
    """The trainer finished epochs 2 and 3, saved and exited before the next read: rank 0's pointer
    carries their values, so status.curve ends at epoch 3 with both; an epoch already read is kept."""
    ending = lifecycle.Ending(checkpoint={"uri": "/c/e3.pt", "epoch": 3, "step": 30}, last={2: 0.4, 3: 0.25})
    done = job(conditions=[finished("Complete")])
    before = {"curve": [0.5, None], "progress": {"epoch": 2, "step": 20}}
    status = desired_status(training_job(status=before), done, T0, ending=ending)
    assert (status["phase"], status["curve"]) == ("Succeeded", [0.5, 0.4, 0.25])
    assert status["progress"] == {"epoch": 3, "step": 20}
    read = desired_status(training_job(status={"curve": [0.5, 0.4, 0.3]}), done, T0, ending=ending)
    assert read["curve"] == [0.5, 0.4, 0.3]


def test_a_failed_rank_restarts_the_job_until_max_restarts_is_used_up_counting_only_the_time_it_ran() -> None:
    """spec.failurePolicy.maxRestarts: 2. The Job failed (a rank died) after an hour of running: back to
    Pending, the restart counted, the hour in runSeconds (budgets go on from it), the reason in the
    Running condition; the failed Job, while it goes, changes nothing; the third failure is final."""
    running = desired_status(training_job(), job(ready=1), T0)
    restartable = training_job() | {"spec": {"replicas": 1, "failurePolicy": {"maxRestarts": 2}}}
    failed = job(conditions=[finished("Failed", "BackoffLimitExceeded", "Job has reached the backoff limit")])
    ending = lifecycle.Ending(failure="rank 0 exited with code 137")
    one_hour = lifecycle.seconds(T1) or 0.0
    first = desired_status(restartable | {"status": running}, failed, T1, ending=ending, now=one_hour)
    assert (first["phase"], first["restarts"], first["runSeconds"]) == ("Pending", 1, 3600.0)
    condition = next(c for c in first["conditions"] if c["type"] == "Running")
    assert (condition["status"], condition["reason"]) == ("False", "Restarting")
    assert condition["message"].startswith("restart 1 of 2 from the last checkpoint: Job has reached")
    assert "code 137" in condition["message"]
    assert lifecycle.restarting(restartable | {"status": first})
    assert desired_status(restartable | {"status": first}, failed, T1) == first  # its Job, going

    again = desired_status(restartable | {"status": first}, job(ready=1), T1)
    assert again["phase"] == "Running" and not lifecycle.restarting(restartable | {"status": again})
    second = desired_status(restartable | {"status": again}, failed, T1, ending=ending, now=one_hour)
    assert (second["phase"], second["restarts"]) == ("Pending", 2)
    third = desired_status(restartable | {"status": second | {"phase": "Running"}}, failed, T1, ending=ending)
    assert third["phase"] == "Failed"
    assert desired_status(training_job(status=running), failed, T1)["phase"] == "Failed"  # default: 0
