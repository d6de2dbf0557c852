"""`stopline replay --history`: a small sweep forecast from earlier sweeps' curves (forecast.history)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stopline.cli import main

JOB = """\
apiVersion: stopline.dev/v1alpha1
kind: TrainingJob
metadata: {name: sweep}
spec:
  template: {spec: {containers: [{name: trainer}]}}
  objective: {metric: val_loss, mode: min}
  criteria:
  - {name: forecast, forecast: {minJobs: 3, history: [lr-v1]}}
  checkpoint: {pvc: {claimName: ckpt}}
"""
EARLIER = {  # three runs of an earlier sweep that ended near 0.6
    "v1-a": [1.0, 0.9, 0.82, 0.75, 0.7, 0.66, 0.63, 0.6],
    "v1-b": [1.05, 0.93, 0.85, 0.78, 0.72, 0.68, 0.65, 0.62],
    "v1-c": [0.95, 0.86, 0.79, 0.72, 0.67, 0.63, 0.6, 0.58],
}
SWEEP = {  # this sweep: one fast job, then one like the earlier ones
    "fast": [1.0, 0.7, 0.5, 0.4, 0.35, 0.3, 0.28, 0.27],
    "slow": [1.0, 0.9, 0.82, 0.75, 0.7, 0.66, 0.63, 0.6],
}


def csv(curves: dict[str, list[float]]) -> str:
    rows = ["job,epoch,val_loss"]
    rows += [
        f"{job},{epoch},{value}" for job, values in curves.items() for epoch, value in enumerate(values, 1)
    ]
    return "\n".join(rows) + "\n"


def replay(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str, job: str = JOB) -> dict[str, Any]:
    (tmp_path / "job.yaml").write_text(job)
    (tmp_path / "sweep.csv").write_text(csv(SWEEP))
    (tmp_path / "earlier.csv").write_text(csv(EARLIER))
    args = ["replay", "--job", str(tmp_path / "job.yaml"), "--curves", str(tmp_path / "sweep.csv"), "--json"]
    assert main([*args, *extra]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_a_small_sweep_is_forecast_from_the_earlier_sweeps_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_history = replay(tmp_path, capsys, "--history", str(tmp_path / "earlier.csv"))
    fast, slow = with_history["jobs"]
    assert not fast["stopped"]  # nothing to beat while it ran
    assert slow["stopped"] and slow["reason"] == "Forecast" and slow["stopEpoch"] < 8, slow
    assert "80% of 3 finished jobs" in slow["message"]  # the earlier sweep's three
    assert "the best final value of 1 ended jobs" in slow["message"]  # the value to beat is this sweep's
    assert with_history["summary"]["regret"] == 0

    alone = replay(tmp_path, capsys)
    assert not any(job["stopped"] for job in alone["jobs"])  # one finished job of its own: not forecast
    assert main(["replay", "--job", str(tmp_path / "job.yaml"), "--curves", str(tmp_path / "sweep.csv")]) == 0
    assert "criterion forecast: learns from earlier studies (lr-v1)" in capsys.readouterr().out


def test_a_history_file_no_criterion_reads_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.yaml").write_text(JOB.replace(", history: [lr-v1]", ""))
    (tmp_path / "sweep.csv").write_text(csv(SWEEP))
    (tmp_path / "earlier.csv").write_text(csv(EARLIER))
    code = main(
        ["replay", "--job", str(tmp_path / "job.yaml"), "--curves", str(tmp_path / "sweep.csv"),
         "--history", str(tmp_path / "earlier.csv")]
    )  # fmt: skip
    assert code != 0
    assert "no forecast criterion names earlier studies (forecast.history)" in capsys.readouterr().err
