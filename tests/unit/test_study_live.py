"""`stopline study`: a live study's TrainingJobs read from their status into replay's JSON, table and page;
every field is remote input, so a job whose status no parser can read is left out, saying which and why."""

from __future__ import annotations

import math
from typing import Any

from pages import Page
from stopline import replay
from stopline.replay import live

HOSTILE = '<script>alert(1)</script>"&'


def training_job(name: str, status: object, max_epochs: int | None = 10, metric: str = "val_loss") -> Any:
    spec: dict[str, Any] = {"objective": {"metric": metric, "mode": "min"}}
    if max_epochs is not None:
        spec["maxEpochs"] = max_epochs
    return {"metadata": {"name": name, "labels": {"stopline.dev/study": "s"}}, "spec": spec, "status": status}


def curve(epochs: int, start: float = 1.0) -> list[float]:
    return [start / epoch for epoch in range(1, epochs + 1)]


STUDY = [
    training_job(
        "stopped",
        {
            "phase": "Stopped",
            "curve": [2.0, 1.9, 1.85, 1.84],  # the trainer reported epoch 4 before it acknowledged the stop
            "stopReason": {
                "type": "Cohort",
                "criterion": "median",
                "message": "worse than the median",
                "epoch": 3,
            },
            "checkpoint": {"epoch": 4, "uri": "/stopline/checkpoints/stopped/ckpt.pt"},
        },
    ),
    training_job(
        "done",
        {
            "phase": "Succeeded",
            "curve": curve(10),
            "checkpoint": {"epoch": 10},
            "resumeCount": 1,  # the study's resume rule took its stop at epoch 3 back
            "resumes": [{"fromEpoch": 3, "reason": "ResumeRule", "probability": 0.085, "message": "P"}],
        },
    ),
    training_job("running", {"phase": "Running", "curve": [*curve(4, 1.5), None], "progress": {"epoch": 5}}),
    training_job("pending", {"phase": "Pending"}, max_epochs=None),
    training_job("failed", {"phase": "Failed", "curve": curve(2, 3.0)}),
]


def test_each_job_is_what_its_status_says_and_the_counts_follow() -> None:
    study = live.read_study(STUDY, "s", "ns")
    result = study.as_json()
    jobs = {job["job"]: job for job in result["jobs"]}  # type: ignore[attr-defined]
    assert list(jobs) == ["done", "failed", "pending", "running", "stopped"]  # by name
    assert jobs["stopped"] | {"best": None} == {
        "job": "stopped",
        "stopped": True,
        "stopEpoch": 3,  # the epoch the criterion decided at, not the last one reported
        "epochsRun": 4,
        "epochsAvailable": 10,
        "reason": "Cohort",
        "criterion": "median",
        "message": "worse than the median",
        "best": None,
        "phase": "Stopped",
        "running": False,
        "weightsEpoch": 4,
        "maxEpochs": 10,
        "resumes": [],
    }
    assert jobs["done"]["resumes"] == [{"fromEpoch": 3, "reason": "ResumeRule", "probability": 0.085}]
    assert jobs["stopped"]["best"] == {"metric": "val_loss", "value": 1.84, "epoch": 4}
    assert (jobs["running"]["running"], jobs["running"]["epochsRun"], jobs["running"]["stopped"]) == (
        True,
        5,
        False,
    )
    assert (jobs["pending"]["epochsRun"], jobs["pending"]["epochsAvailable"], jobs["pending"]["best"]) == (
        0,
        0,
        None,
    )
    assert jobs["failed"]["running"] is False and jobs["failed"]["stopped"] is False
    assert result["summary"] == {
        "jobs": 5,
        "epochsRun": 4 + 10 + 5 + 0 + 2,
        "epochsAvailable": 10 + 10 + 10 + 0 + 10,
        "fractionSaved": round(6 / 40, 6),  # only the stopped job's 6 epochs left: running ones still run
        "bestOverall": {"job": "done", "metric": "val_loss", "value": 0.1, "epoch": 10},
        "bestOverallIfNoStopping": None,  # a live study never ran what the stopped jobs would have
        "regret": None,
        "study": "s",
        "namespace": "ns",
        "stopped": 1,
        "running": 2,  # Pending counts as running: not ended, not stopped
        "resumedJobs": 1,
        "epochsSaved": 6,
        "skipped": [],
    }


def test_the_page_is_replays_with_one_curve_per_job_the_stop_where_decided_and_running_jobs_marked() -> None:
    study = live.read_study(STUDY, "s", "ns")
    page = Page(replay.render_page(study.page("study s")))
    summary = study.as_json()["summary"]
    assert isinstance(summary, dict)
    assert page.figures["sweep-0-figures"] == {
        "jobs": 5,
        "stopped": 1,
        "running": 2,
        "resumed-jobs": 1,
        "epochs-run": summary["epochsRun"],
        "epochs-available": summary["epochsAvailable"],
        "epochs-saved": 6,
        "fraction-saved": summary["fractionSaved"],
        "best-job": "done",
        "skipped": 0,
    }
    section = page.sections["sweep-0"]
    assert sorted(curve["data-job"] for curve in section["curves"]) == [
        "done",
        "failed",
        "pending",
        "running",
        "stopped",
    ]
    assert [(s["data-job"], s["data-epoch"], s["data-criterion"]) for s in section["stops"]] == [
        ("stopped", "3", "median")
    ]
    assert len(section["running"]) == 2
    assert [(mark["data-job"], mark["data-epoch"]) for mark in section["resumed"]] == [("done", "3")]
    text = replay.render_page(study.page("study s"))
    assert text.count('<g class="job failed">') == 1 and "failed or cancelled" in text  # not "ran to its end"


def test_a_hostile_status_leaves_out_only_its_job_saying_why_and_text_is_escaped_and_bounded() -> None:
    hostile_stop = {
        "type": "Manual",
        "criterion": HOSTILE,
        "message": HOSTILE + "\x1b[2J" + "x" * 5000,
        "epoch": 10**9,
    }
    items: list[object] = [
        training_job("strings", {"curve": [1.0, "2.0", 3.0]}),
        training_job("huge", {"curve": [1.0] * 20_000}),
        training_job("not-a-list", {"curve": {"1": 1.0}}),
        training_job("status-text", "Running"),
        training_job("reason-text", {"stopReason": "Manual"}),
        training_job("other-objective", {"curve": [0.5]}, metric="val_acc"),
        training_job("no-objective", {"curve": [0.5]}) | {"spec": None},
        training_job("sweep", {"phase": "Running", "members": 3}) | {"spec": {"targetSelector": {}}},
        "not an object",
        {"metadata": {"name": 7}},
        training_job(
            "nan",
            {"phase": "Running", "curve": [1.0, math.nan, math.inf, None, 0.5], "resumes": "twice"},
        ),
        training_job(
            "odd-fields",
            {
                "phase": 3,
                "progress": "5",
                "checkpoint": [],
                "stopReason": hostile_stop,
                "resumes": [7, {"fromEpoch": "2", "reason": HOSTILE, "probability": True}] * 300,
            },
            max_epochs=-1,
        ),
    ]
    study = live.read_study(items, "s", "ns")
    result = study.as_json()
    summary = result["summary"]
    assert isinstance(summary, dict)
    assert summary["skipped"] == [
        {"job": "(no name)", "why": "not a TrainingJob with a metadata.name"},
        {"job": "(no name)", "why": "not a TrainingJob with a metadata.name"},
        {"job": "huge", "why": "status.curve has 20000 values, more than the 10000 a TrainingJob keeps"},
        {"job": "no-objective", "why": "spec.objective.metric is not a metric's name"},
        {"job": "not-a-list", "why": "status.curve is an object, not a list"},
        {"job": "other-objective", "why": "its objective val_acc (min) is not the study's, val_loss (min)"},
        {"job": "reason-text", "why": "status.stopReason is a string, not an object"},
        {"job": "status-text", "why": "status is a string, not an object"},
        {"job": "strings", "why": "status.curve[1] is a string, not a number or null"},
        {"job": "sweep", "why": "a sweep (spec.targetSelector): its member TrainingJobs are the jobs"},
    ]
    jobs = {job["job"]: job for job in result["jobs"]}  # type: ignore[attr-defined]
    assert list(jobs) == ["nan", "odd-fields"]
    assert jobs["nan"]["best"] == {"metric": "val_loss", "value": 0.5, "epoch": 5}  # NaN and Inf: no value
    odd = jobs["odd-fields"]
    assert (odd["phase"], odd["stopEpoch"], odd["epochsRun"], odd["maxEpochs"], odd["weightsEpoch"]) == (
        None,
        0,  # an epoch out of range is no epoch: the stop sits at the epochs it ran, none
        0,
        None,
        None,
    )
    assert len(odd["message"]) == live.MAX_MESSAGE and "\x1b" not in odd["message"]
    assert jobs["nan"]["resumes"] == [] and len(odd["resumes"]) == live.MAX_RESUMES  # bounded, read as absent
    assert odd["resumes"][-1] == {"fromEpoch": None, "reason": HOSTILE[: live.MAX_WORD], "probability": None}
    text = replay.render_page(study.page(f"study {HOSTILE}"))
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;" in text
    page = Page(text)
    assert page.figures["sweep-0-figures"]["skipped"] == 10
    assert sorted(curve["data-job"] for curve in page.sections["sweep-0"]["curves"]) == ["nan", "odd-fields"]
    assert sum("left out" in note for note in study.notes()) == 10
    assert "strings: left out, status.curve[1] is a string" in study.table()


def test_the_studys_objective_is_the_one_most_jobs_share() -> None:
    items = [
        training_job("a", {}, metric="val_acc"),
        training_job("b", {}),
        training_job("c", {}),
    ]
    study = live.read_study(items, "s", "ns")
    assert (study.metric, [job.name for job in study.jobs], [skip.job for skip in study.skipped]) == (
        "val_loss",
        ["b", "c"],
        ["a"],
    )


def test_extreme_values_are_drawn_inside_the_chart() -> None:
    """Any finite value is remote input: a span of +-1e308 or a flat curve at 1e308 overflows no scale."""
    for values in ([1e308, -1e308, 1e308, -1.7e308], [1e308, 1e308], [1.79e308, 1.79e308]):
        study = live.read_study([training_job("x", {"phase": "Succeeded", "curve": values})], "s", "ns")
        (curve,) = Page(replay.render_page(study.page("s"))).sections["sweep-0"]["curves"]
        coordinates = [float(c) for point in curve["points"].split() for c in point.split(",")]
        assert len(coordinates) == 2 * len(values), curve["points"]
        assert all(0 <= c <= 760 for c in coordinates), curve["points"]
