"""A person's resume (stopline.dev/resume), decided purely: lifecycle.resume on a TrainingJob's body."""

from __future__ import annotations

from typing import Any

import pytest

from stopline import lifecycle
from stopline.progress import JobMemory

NOW = "2026-11-22T13:00:00Z"
CHECKPOINT = {
    "uri": "/stopline/checkpoints/runs/x/ckpt.pt",
    "epoch": 5,
    "step": 500,
    "bytes": 1,
    "sha256": "0",
}


def stopped(annotations: dict[str, str] | None = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": "x", "namespace": "ns", "uid": "u1", "annotations": annotations or {}},
        "spec": {},
        "status": {
            "phase": "Stopped",
            "checkpoint": CHECKPOINT,
            "stopReason": {
                "type": "Cohort",
                "criterion": "median",
                "message": "worse",
                "epoch": 5,
                "at": NOW,
            },
            "gpuSecondsSaved": 120.0,
            "stopPath": "StopEndpoint",
            "criteria": [
                {
                    "name": "median",
                    "state": {"kind": "cohort", "epoch": 5, "stop": {"type": "Cohort"}},
                    "message": "m",
                },
                {"name": "staleAfter", "state": {"kind": "stale", "last": 1.0}, "message": "s"},
            ],
        }
        | status,
    }
    return body


def test_no_annotation_is_no_request() -> None:
    assert lifecycle.resume(stopped(), None, NOW) is None


def test_a_stopped_job_with_weights_resumes_from_its_checkpoint_epoch() -> None:
    verdict = lifecycle.resume(stopped({"stopline.dev/resume": "the sweep turned"}), None, NOW)
    assert isinstance(verdict, lifecycle.Resumption)
    change = verdict.change
    assert change.phase == "Pending"
    entry = change.fields["resumes"][-1]
    assert entry == {
        "fromEpoch": 5,
        "at": NOW,
        "reason": "Manual",
        "message": "the sweep turned",
        "stoppedBy": {"type": "Cohort", "criterion": "median", "epoch": 5},
        "request": lifecycle.request_id("the sweep turned"),
    }
    assert change.fields["resumeCount"] == 1
    # the stop moves into the entry; what it saved is taken back (resumed epochs count as run)
    assert change.fields["stopReason"] is None and change.fields["gpuSecondsSaved"] is None
    assert change.fields["stopPath"] is None
    # the criterion that fired judges on; its other state is kept
    assert change.fields["criteria"][0]["state"] == {"kind": "cohort", "epoch": 5}
    assert change.fields["criteria"][1]["state"] == {"kind": "stale", "last": 1.0}
    conditions = {c.type: (c.status, c.reason) for c in change.conditions}
    assert conditions == {
        "StopRequested": (False, "Resumed"),
        "Finished": (False, "Resumed"),
        "Running": (False, "Resumed"),
    }
    assert "from epoch 5" in verdict.message and "Cohort median" in verdict.message


def test_the_same_value_is_carried_out_once_and_a_new_value_is_a_new_request() -> None:
    first = lifecycle.resume(stopped({"stopline.dev/resume": "go"}), None, NOW)
    assert isinstance(first, lifecycle.Resumption)
    after = stopped({"stopline.dev/resume": "go"}, **first.change.fields)
    after["status"]["phase"] = "Stopped"  # stopped again later: the old request stays answered
    assert lifecycle.resume(after, None, NOW) is None
    after["metadata"]["annotations"]["stopline.dev/resume"] = "go again"
    again = lifecycle.resume(after, None, NOW)
    assert isinstance(again, lifecycle.Resumption)
    assert again.change.fields["resumeCount"] == 2 and len(again.change.fields["resumes"]) == 2


def test_a_stop_annotation_set_at_the_resume_is_answered_by_it() -> None:
    body = stopped({"stopline.dev/stop": "enough", "stopline.dev/resume": "more"})
    assert lifecycle.stop_request(body) == "enough"
    verdict = lifecycle.resume(body, None, NOW)
    assert isinstance(verdict, lifecycle.Resumption)
    resumed = stopped({"stopline.dev/stop": "enough", "stopline.dev/resume": "more"}, **verdict.change.fields)
    assert lifecycle.stop_request(resumed) is None
    resumed["metadata"]["annotations"]["stopline.dev/stop"] = "enough, really"
    assert lifecycle.stop_request(resumed) == "enough, really"


def test_the_words_are_bounded_and_printable() -> None:
    verdict = lifecycle.resume(stopped({"stopline.dev/resume": "a\nb\x00" + "x" * 10_000}), None, NOW)
    assert isinstance(verdict, lifecycle.Resumption)
    message = verdict.change.fields["resumes"][-1]["message"]
    assert (
        len(message) == lifecycle.MAX_RESUME_WORDS and message.startswith("a b?x") and message.endswith("...")
    )
    empty = lifecycle.resume(stopped({"stopline.dev/resume": ""}), None, NOW)
    assert isinstance(empty, lifecycle.Resumption)
    assert empty.change.fields["resumes"][-1]["message"] == "resumed with kubectl annotate"


@pytest.mark.parametrize(
    ("status", "governs", "cancel", "words"),
    [
        ({"phase": "Succeeded"}, None, False, "TrainingJob is Succeeded, not Stopped: it ran to the end"),
        ({"phase": "Failed"}, None, False, "TrainingJob is Failed, not Stopped"),
        ({"phase": "Cancelled"}, None, False, "a cancel keeps no weights"),
        ({"phase": "Running"}, None, False, "TrainingJob is Running, not Stopped"),
        ({"checkpoint": None}, None, False, "status.checkpoint is empty: the stop (Cohort) kept no weights"),
        (
            {},
            "spec.targetRef",
            False,
            "spec.targetRef: stopline resumes only a TrainingJob that runs its own",
        ),
        ({}, None, True, "the stopline.dev/cancel annotation is set"),
    ],
)
def test_a_refusal_says_why_and_the_fix(
    status: dict[str, Any], governs: str | None, cancel: bool, words: str
) -> None:
    annotations = {"stopline.dev/resume": "go"} | ({"stopline.dev/cancel": "x"} if cancel else {})
    verdict = lifecycle.resume(stopped(annotations, **status), governs, NOW)
    assert isinstance(verdict, lifecycle.ResumeRefusal)
    assert words in verdict.message
    assert "stopline.dev/" in verdict.message  # the fix names the annotation to remove


def test_the_resumed_runs_job_decides_nothing_while_the_next_one_is_made() -> None:
    verdict = lifecycle.resume(stopped({"stopline.dev/resume": "go"}), None, NOW)
    assert isinstance(verdict, lifecycle.Resumption)
    body = stopped({"stopline.dev/resume": "go"}, **verdict.change.fields, phase="Pending")
    body["status"]["conditions"] = lifecycle.merge_conditions([], verdict.change.conditions, NOW)
    old = {
        "metadata": {"name": "x", "uid": "j1", "creationTimestamp": "2026-11-22T12:00:00Z"},
        "spec": {"suspend": True},
        "status": {},
    }
    new = {"metadata": {"name": "x", "uid": "j2", "creationTimestamp": NOW}, "spec": {}, "status": {}}
    assert lifecycle.previous_run(body, old)  # suspended by the stop, made before the resume
    assert not lifecycle.previous_run(body, new)
    assert lifecycle.desired_status(body, old).phase is None
    complete = new | {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert lifecycle.previous_run(body, complete)


def test_a_resume_seeds_the_memory_again_with_its_count() -> None:
    assert JobMemory.seed({"resumeCount": 2}).resumes == 2
    assert JobMemory.seed({"resumes": [{}, {}, {}]}).resumes == 3
    assert JobMemory.seed({}).resumes == 0


@pytest.mark.parametrize("reported", [0, 1, 5])
def test_a_resumed_trainer_that_reports_no_epoch_yet_or_its_checkpoint_s_unfeeds_no_earlier_epoch(
    reported: int,
) -> None:
    """Else the first new epoch looks like a jump past those before the stop, and the operator warns
    EpochsMissed for epochs the stopped run's trainer reported (the resumed one's window starts later)."""
    memory = JobMemory.seed({"progress": {"epoch": 5}, "resumeCount": 1})
    assert memory.fed_epoch == 4  # an operator restart: epoch 5 may have been in progress
    memory.resumed()
    memory.in_progress(reported)
    assert memory.fed_epoch == 5 and memory.restart_clocks
    memory.in_progress(7)  # later, its own epochs in progress do count as not yet fed
    assert memory.fed_epoch == 5
