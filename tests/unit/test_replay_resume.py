"""`stopline replay` with spec.resumePolicy: the study's resume rule asked whenever a job ends, as the
operator asks it, and the jobs it resumes run on under their own criteria (stopline.replay.resumes)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stopline import api
from stopline.cli import main
from stopline.criteria.resume import ResumeSettings, SweepJob
from stopline.replay.curves import Curve
from stopline.replay.resumes import SweepRun, unfired

JOB = """\
apiVersion: stopline.dev/v1alpha1
kind: TrainingJob
metadata: {name: sweep}
spec:
  maxEpochs: 8
  template: {spec: {containers: [{name: trainer}]}}
  objective: {metric: val_loss, mode: min}
  criteria:
  - {name: f, forecast: {probability: 0.01, minJobs: 2}}
  - {name: p, patience: {patience: 2}}
  resumePolicy: {minJobs: 2}
  checkpoint: {pvc: {claimName: ckpt}}
"""
NO_RESUME = JOB.replace("  resumePolicy: {minJobs: 2}\n", "")
# fast learns early and levels off; slow stays slow. late and stalls start like slow, so the forecast (fast
# and slow finished) stops both at epoch 1; bloomer starts like nothing finished (no forecast), runs to its
# end and improves late: new evidence on which the rule brings late and stalls back. late ends the sweep's
# best; stalls levels off, and its patience stops it again.
JOBS = {
    "fast": (1.0, 0.8, 0.7, 0.65, 0.62, 0.61, 0.605, 0.60),
    "slow": (1.5, 1.4, 1.3, 1.2, 1.15, 1.1, 1.05, 1.0),
    "late": (1.5, 1.4, 1.3, 1.2, 0.9, 0.6, 0.4, 0.3),
    "stalls": (1.5, 1.4, 1.3, 1.3, 1.3, 1.3, 1.3, 1.3),
    "bloomer": (3.0, 2.9, 2.8, 2.7, 1.0, 0.6, 0.5, 0.45),
}
CURVES = "job,epoch,val_loss\n" + "".join(
    f"{job},{epoch},{value}\n" for job, values in JOBS.items() for epoch, value in enumerate(values, 1)
)


def replay_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], job: str, *extra: str, curves: str = CURVES
) -> dict[str, Any]:
    job_file, curves_file = tmp_path / "job.yaml", tmp_path / "curves.csv"
    job_file.write_text(job, encoding="utf-8")
    curves_file.write_text(curves, encoding="utf-8")
    assert main(["replay", "--job", str(job_file), "--curves", str(curves_file), "--json", *extra]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def by_job(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job"]: job for job in result["jobs"]}


def test_without_a_resume_policy_the_forecast_loses_the_late_bloomer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = replay_json(tmp_path, capsys, NO_RESUME)
    jobs = by_job(result)
    assert (jobs["late"]["stopEpoch"], jobs["late"]["reason"]) == (1, "Forecast")
    assert (jobs["stalls"]["stopEpoch"], jobs["stalls"]["reason"]) == (1, "Forecast")
    assert all("resumes" not in job for job in result["jobs"])
    assert "resumedJobs" not in result["summary"]
    assert result["summary"]["bestOverall"]["job"] == "bloomer"
    assert result["summary"]["regret"] == pytest.approx(0.5)  # 0.45 kept where 0.3 was there to have


def test_the_resume_rule_brings_the_late_bloomer_back_and_it_ends_the_sweeps_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = replay_json(tmp_path, capsys, JOB)
    jobs = by_job(result)
    late = jobs["late"]
    assert (late["stopped"], late["stopEpoch"], late["epochsRun"], late["reason"]) == (False, None, 8, None)
    [resume] = late["resumes"]
    assert resume["fromEpoch"] == 1 and resume["toEpoch"] == 8
    assert (
        resume["probability"] > 0.02
        and "at or above the 2.0% bound: resume from epoch 1" in resume["message"]
    )
    assert late["best"] == {"metric": "val_loss", "value": 0.3, "epoch": 8}
    # The ones that never stopped were never resumed; bloomer ran to its end unforecast.
    assert [jobs[name]["resumes"] for name in ("fast", "slow", "bloomer")] == [[], [], []]
    summary = result["summary"]
    assert summary["bestOverall"]["job"] == "late" and summary["regret"] == 0
    # late's 7 epochs after its resume and stalls' 4 count as run
    assert (summary["resumedJobs"], summary["resumes"], summary["resumedEpochs"]) == (2, 2, 11)
    assert summary["epochsRun"] == 8 * 3 + 8 + 5 == sum(job["epochsRun"] for job in result["jobs"])


def test_a_resumed_job_its_criteria_stop_again_ends_stopped_by_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stalls = by_job(replay_json(tmp_path, capsys, JOB))["stalls"]
    [resume] = stalls["resumes"]
    assert (resume["fromEpoch"], resume["toEpoch"]) == (1, 5)
    # its final decision: patience, judged on from the state it carried (its best, 1.3 at epoch 3)
    assert (stalls["stopped"], stalls["stopEpoch"], stalls["reason"], stalls["criterion"]) == (
        True,
        5,
        "Patience",
        "p",
    )
    assert stalls["message"] == "val_loss 1.3 has not improved on 1.3 (epoch 3) by more than 0 for 2 epochs"


def test_the_table_and_the_page_show_the_resumes_json_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "sweep.html"
    summary = replay_json(tmp_path, capsys, JOB, "--html", str(page))["summary"]
    text = page.read_text(encoding="utf-8")
    figures = dict(re.findall(r' data-([a-z-]+)="([^"]*)"', text.split("<svg", 1)[0]))
    assert json.loads(html.unescape(figures["resumed-jobs"])) == summary["resumedJobs"]
    assert json.loads(html.unescape(figures["resumes"])) == summary["resumes"]
    assert json.loads(html.unescape(figures["resumed-epochs"])) == summary["resumedEpochs"]
    assert '<path class="resumed"' in text and 'data-job="late" data-epoch="1"' in text
    job_file = tmp_path / "job.yaml"
    assert main(["replay", "--job", str(job_file), "--curves", str(tmp_path / "curves.csv")]) == 0
    table = capsys.readouterr().out
    assert (
        "5 jobs, 37 of 40 epochs run, 7.5% saved, 2 jobs resumed (2 resumes, 11 epochs run after a resume)"
        in (table)
    )
    assert "  late: resumed from epoch 1 to 8: P(beat best)=" in table


def test_by_task_the_totals_count_the_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = CURVES.splitlines()[1:]
    curves = "task,job,epoch,val_loss\n" + "".join(f"{task},{row}\n" for task in ("t1", "t2") for row in rows)
    summary = replay_json(tmp_path, capsys, JOB, curves=curves)["summary"]
    assert (summary["resumedJobs"], summary["resumes"], summary["resumedEpochs"]) == (4, 4, 22)
    assert summary["regretMax"] == 0


def test_a_schedule_column_keeps_the_rule_within_one_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # bloomer, on another schedule, is no evidence for late and stalls: they stay stopped.
    rows = CURVES.splitlines()[1:]
    curves = "job,epoch,val_loss,schedule\n" + "".join(
        f"{row},{'cosine' if row.startswith('bloomer') else 'step'}\n" for row in rows
    )
    result = replay_json(tmp_path, capsys, JOB, curves=curves)
    assert result["summary"]["resumedJobs"] == 0
    assert by_job(result)["late"]["stopEpoch"] == 1


def test_unfired_drops_only_the_fired_decision() -> None:
    states: dict[str, dict[str, object]] = {
        "f": {"kind": "forecast", "best": 1.5, "stop": {"type": "Forecast"}},
        "p": {"kind": "patience"},
    }
    assert unfired(states) == {"f": {"kind": "forecast", "best": 1.5}, "p": {"kind": "patience"}}


def test_the_rule_is_asked_with_every_ended_job_and_the_sweeps_clock() -> None:
    parsed = api.parse_spec(yaml.safe_load(JOB)["spec"])
    assert isinstance(parsed.resume_policy, ResumeSettings)
    run = SweepRun(parsed, {"val_loss"}, parsed.resume_policy)
    for name in ("fast", "slow", "late"):
        values = JOBS[name]
        run.start(
            Curve(name, rows={e: {"val_loss": v} for e, v in enumerate(values, 1)}, seconds={1: 10.0}), 8
        )
        run.ask()
    assert run.now() == 30.0  # the seconds of every epoch run (one recorded epoch per job here)
    late = run.sweep_job(run.members[2])
    assert (late.phase, late.resumable, late.budget, late.schedule, late.epoch) == (
        "stopped",
        True,
        8,
        None,
        1,
    )
    assert late.stop_chance is not None and late.stop_chance < 0.01  # the forecast's chance it stopped on


class AlwaysAsks(SweepRun):
    """The rule asked with plan() at every end, without the shortcut that skips a sure empty answer."""

    def _quiet(self, jobs: list[SweepJob], settings: ResumeSettings) -> bool:
        return False


def test_skipping_a_sure_empty_answer_changes_nothing() -> None:
    parsed = api.parse_spec(yaml.safe_load(JOB)["spec"])
    # more jobs: stops after the shortcut's state was set, a stopped job that is best so far, finishes
    jobs = dict(JOBS)
    jobs |= {"late2": JOBS["late"], "stalls2": JOBS["stalls"], "fast2": JOBS["fast"], "slow2": JOBS["slow"]}
    outcomes = []
    for kind in (SweepRun, AlwaysAsks):
        run = kind(parsed, {"val_loss"}, parsed.resume_policy)
        for name, values in jobs.items():
            run.start(Curve(name, rows={e: {"val_loss": v} for e, v in enumerate(values, 1)}), 8)
            run.ask()
        outcomes.append([(m.curve.job, m.run, m.decision, m.resumes) for m in run.members])
    assert outcomes[0] == outcomes[1]
    assert any(resumes for *_, resumes in outcomes[0])
