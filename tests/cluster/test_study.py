"""`stopline study` against the real apiserver: a study's TrainingJobs whose status the test writes as the
operator would (the status subresource, through kubectl), read back by the command into --json and the page,
rendered in headless Chromium (issue 30). The hostile study holds what the apiserver lets through: curves at
its 10,000-value limit of extreme values, markup and control characters in a stop's words, epochs out of
range, another objective."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from operatorharness import apply, manifest
from pages import Page, dom_in_chromium
from stopline.cli import main
from stopline.replay import live
from stopline_local.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

STUDY = "lr-sweep"
HOSTILE = '<script>alert(1)</script>"&<img src=x onerror=alert(2)>'


def member(
    plane: ControlPlane,
    namespace: str,
    name: str,
    status: dict[str, Any],
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> None:
    """A TrainingJob of the study, then its status written to the status subresource as the operator does
    (the patch through stdin: a status near the apiserver's limits is longer than one argument may be)."""
    job = manifest(name, **spec)
    job["metadata"]["labels"] = {"stopline.dev/study": STUDY} if labels is None else labels
    apply(plane, namespace, job)
    status_patch(plane, namespace, name, status)


def status_patch(
    plane: ControlPlane, namespace: str, name: str, status: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    patch = ("patch", "tj", name, "-n", namespace, "--subresource=status", "--type=merge")
    return plane.kubectl(*patch, "--patch-file=/dev/stdin", input=json.dumps({"status": status}), check=check)


def study(capsys: pytest.CaptureFixture[str], page: Path, *args: str) -> dict[str, Any]:
    assert main(["study", *args, "--json", "--html", str(page)]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_a_live_study_reads_back_as_written_one_curve_per_job(
    plane: ControlPlane, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = {"type": "Cohort", "criterion": "median", "message": "worse than the median of 3 jobs"}
    member(plane, namespace, "lr-1e-1", {
        "phase": "Stopped", "curve": [2.0, 1.9, 1.95, 1.97],
        "stopReason": stop | {"epoch": 4}, "checkpoint": {"epoch": 4, "uri": "/stopline/checkpoints/a.pt"},
    }, maxEpochs=12)  # fmt: skip
    member(plane, namespace, "lr-1e-2", {
        "phase": "Succeeded", "curve": [1.0 / epoch for epoch in range(1, 13)], "checkpoint": {"epoch": 12},
    }, maxEpochs=12)  # fmt: skip
    member(plane, namespace, "lr-1e-3", {
        "phase": "Stopped", "curve": [1.5, 1.2, None, 1.1, 1.05, 1.04],
        "stopReason": {"type": "Forecast", "criterion": "forecast", "message": "0.3% to beat", "epoch": 6},
        "checkpoint": {"epoch": 6},
    }, maxEpochs=12)  # fmt: skip
    member(plane, namespace, "lr-1e-4", {
        "phase": "Running", "curve": [1.8, 1.6, 1.5], "progress": {"epoch": 3, "step": 300},
    }, maxEpochs=12)  # fmt: skip
    member(plane, namespace, "other-study", {"phase": "Running", "curve": [0.01]}, labels={"team": "x"})

    page_file = tmp_path / "study.html"
    result = study(capsys, page_file, STUDY, "-n", namespace)
    jobs = {job["job"]: job for job in result["jobs"]}
    assert sorted(jobs) == ["lr-1e-1", "lr-1e-2", "lr-1e-3", "lr-1e-4"]  # the study's, not the namespace's
    written = {
        "lr-1e-1": (True, 4, 4, "Cohort", "median", "Stopped", 4, False),
        "lr-1e-2": (False, None, 12, None, None, "Succeeded", 12, False),
        "lr-1e-3": (True, 6, 6, "Forecast", "forecast", "Stopped", 6, False),
        "lr-1e-4": (False, None, 3, None, None, "Running", None, True),
    }
    for name, (stopped, stop_epoch, run, reason, criterion, phase, weights, running) in written.items():
        job = jobs[name]
        assert (
            job["stopped"], job["stopEpoch"], job["epochsRun"], job["reason"], job["criterion"], job["phase"],
            job["weightsEpoch"], job["running"], job["epochsAvailable"],
        ) == (stopped, stop_epoch, run, reason, criterion, phase, weights, running, 12)  # fmt: skip
    summary = result["summary"]
    assert (summary["jobs"], summary["stopped"], summary["running"], summary["skipped"]) == (4, 2, 1, [])
    assert (summary["epochsRun"], summary["epochsAvailable"], summary["epochsSaved"]) == (25, 48, 8 + 6)
    assert summary["bestOverall"] == {"job": "lr-1e-2", "metric": "val_loss", "value": 1 / 12, "epoch": 12}

    page = Page(dom_in_chromium(page_file, tmp_path / "profile"))  # as a browser renders it, offline
    figures = page.figures["sweep-0-figures"]
    assert (figures["jobs"], figures["stopped"], figures["running"], figures["epochs-saved"]) == (4, 2, 1, 14)
    assert figures["best-job"] == "lr-1e-2" and figures["fraction-saved"] == summary["fractionSaved"]
    section = page.sections["sweep-0"]
    assert sorted(curve["data-job"] for curve in section["curves"]) == sorted(jobs)  # one curve per job
    marks = sorted(
        (mark["data-job"], mark["data-epoch"], mark["data-criterion"]) for mark in section["stops"]
    )
    assert marks == [("lr-1e-1", "4", "median"), ("lr-1e-3", "6", "forecast")]
    assert [group["class"] for group in section["running"]] == ["job running"]

    # the same jobs chosen by a label selector instead of the study's name
    by_selector = study(
        capsys, tmp_path / "selected.html", "-l", f"stopline.dev/study={STUDY}", "-n", namespace
    )
    assert by_selector["jobs"] == result["jobs"]


def test_a_hostile_study_leaves_out_only_what_cannot_be_read_and_escapes_every_word(
    plane: ControlPlane, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extreme = [(1e308 if epoch % 3 else -1e308) if epoch % 7 else None for epoch in range(live.MAX_CURVE)]
    message = HOSTILE + "\u001b[2J" * 50 + "x" * 200_000
    member(plane, namespace, "extreme", {
        "phase": "Stopped", "curve": extreme,
        "stopReason": {"type": "Manual", "criterion": HOSTILE, "message": message, "epoch": 999_999_999},
        "checkpoint": {"epoch": -3},
    }, maxEpochs=1_000_000)  # fmt: skip
    member(plane, namespace, "accuracy", {"phase": "Succeeded", "curve": [0.5, 0.9]},
           objective={"metric": "val_accuracy", "mode": "max"})  # fmt: skip
    member(plane, namespace, "no-status", {})
    member(plane, namespace, "plain", {"phase": "Succeeded", "curve": [1.0, 0.5]})
    # what the apiserver itself refuses never reaches the command: strings in a curve, a longer curve
    for refused in (["1.0", "x"], [1.0] * (live.MAX_CURVE + 1)):
        refusal = status_patch(plane, namespace, "plain", {"curve": refused}, check=False)
        assert refusal.returncode != 0, refusal.stdout

    page_file = tmp_path / "hostile.html"
    result = study(capsys, page_file, STUDY, "-n", namespace)
    summary = result["summary"]
    assert summary["skipped"] == [
        {"job": "accuracy", "why": "its objective val_accuracy (max) is not the study's, val_loss (min)"}
    ]
    jobs = {job["job"]: job for job in result["jobs"]}
    assert sorted(jobs) == ["extreme", "no-status", "plain"]
    extreme_job = jobs["extreme"]
    assert (extreme_job["epochsRun"], extreme_job["stopEpoch"], extreme_job["weightsEpoch"]) == (
        10_000,
        10_000,
        None,
    )
    assert extreme_job["best"] == {"metric": "val_loss", "value": -1e308, "epoch": 4}
    assert len(extreme_job["message"]) == live.MAX_MESSAGE and "\u001b" not in extreme_job["message"]
    assert (jobs["no-status"]["epochsRun"], jobs["no-status"]["running"]) == (0, True)

    text = page_file.read_text(encoding="utf-8")
    assert "<script" not in text and "<img" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert len(text) < 200_000  # a 10,000-value curve is thinned to the page's points, the message bounded
    page = Page(text)
    assert sorted(curve["data-job"] for curve in page.sections["sweep-0"]["curves"]) == sorted(jobs)
    ((_, _, criterion),) = [
        (m["data-job"], m["data-epoch"], m["data-criterion"]) for m in page.sections["sweep-0"]["stops"]
    ]
    assert criterion == HOSTILE  # the attribute holds the words, escaped in the file, as they were written
    assert page.figures["sweep-0-figures"]["skipped"] == 1


def test_no_training_job_of_that_study_is_one_line_and_exit_2(
    plane: ControlPlane, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["study", "nothing-here", "-n", namespace]) == 2
    assert capsys.readouterr().err == (
        "stopline study: error: no TrainingJobs match stopline.dev/study=nothing-here in namespace "
        f"{namespace}; check the name, -n and that the CRD is installed "
        "(kubectl get tj -n NAMESPACE --show-labels)\n"
    )
