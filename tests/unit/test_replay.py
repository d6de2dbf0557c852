"""`stopline replay`: the sweep simulation, its JSON and table, and one-line errors for bad input."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stopline.cli import main

REPO = Path(__file__).resolve().parents[2]
SHARED_CURVES = REPO.parent / "shared" / "curves" / "curves.csv.gz"
JOB = """\
apiVersion: stopline.dev/v1alpha1
kind: TrainingJob
metadata: {name: sweep}
spec:
  maxEpochs: 6
  template: {spec: {containers: [{name: trainer}]}}
  objective: {metric: val_loss, mode: min}
  criteria:
  - {name: impatient, patience: {patience: 2}}
  - {name: hour, budget: {maxDuration: 1h}}
  checkpoint: {pvc: {claimName: ckpt}}
"""
# Rows out of order on purpose; job b never improves after epoch 1, job c runs 40 min epochs.
CURVES = """\
job,epoch,val_loss,seconds
a,2,0.8,60
a,1,1.0,60
b,1,0.9,60
a,3,0.7,60
b,2,0.95,60
b,3,0.96,60
b,4,0.97,60
c,1,2.0,2400
c,2,1.0,2400
c,3,0.5,2400
"""


def write(
    tmp_path: Path, job: str = JOB, curves: str = CURVES, name: str = "curves.csv"
) -> tuple[Path, Path]:
    job_file, curves_file = tmp_path / "job.yaml", tmp_path / name
    job_file.write_text(job)
    if name.endswith(".gz"):
        curves_file.write_bytes(gzip.compress(curves.encode()))
    else:
        curves_file.write_text(curves)
    return job_file, curves_file


def replay_json(capsys: pytest.CaptureFixture[str], job: Path, curves: Path) -> dict[str, Any]:
    assert main(["replay", "--job", str(job), "--curves", str(curves), "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_json_reports_each_job_and_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = replay_json(capsys, *write(tmp_path))
    a, b, c = result["jobs"]
    assert a == {
        "job": "a", "stopped": False, "stopEpoch": None, "epochsRun": 3, "epochsAvailable": 3,
        "reason": None, "criterion": None, "message": None,
        "best": {"metric": "val_loss", "value": 0.7, "epoch": 3},
    }  # fmt: skip
    assert (b["stopped"], b["stopEpoch"], b["epochsRun"], b["reason"], b["criterion"]) == (
        True, 3, 3, "Patience", "impatient",
    )  # fmt: skip
    assert b["message"] == "val_loss 0.96 has not improved on 0.9 (epoch 1) by more than 0 for 2 epochs"
    # c's epochs take 40 min: the 1h budget, on cumulative seconds, stops it after epoch 2 (80 min).
    assert (c["reason"], c["stopEpoch"], c["best"]["value"]) == ("Budget", 2, 1.0)
    assert result["summary"] == {
        "jobs": 3, "epochsRun": 8, "epochsAvailable": 10, "fractionSaved": 0.2,
        "bestOverall": {"job": "a", "metric": "val_loss", "value": 0.7, "epoch": 3},
        "bestOverallIfNoStopping": {"job": "c", "metric": "val_loss", "value": 0.5, "epoch": 3},
    }  # fmt: skip


def test_table_is_readable_and_says_what_replay_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job, curves = write(tmp_path, curves=CURVES, name="curves.csv.gz")
    assert main(["replay", "--job", str(job), "--curves", str(curves)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["job", "stop", "epochs", "reason", "criterion", "best", "val_loss"]
    assert "b    3     3/4     Patience  impatient" in out
    assert "3 jobs, 8 of 10 epochs run, 20.0% saved" in out
    assert "stale, gpuIdle and promql criteria cannot fire in replay" in out


def test_max_epochs_caps_what_a_job_would_have_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_curve = "job,epoch,val_loss\n" + "".join(f"a,{e},{1 / e}\n" for e in range(1, 11))
    result = replay_json(capsys, *write(tmp_path, curves=long_curve))
    assert (result["jobs"][0]["epochsRun"], result["jobs"][0]["epochsAvailable"]) == (6, 6)


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_replay_on_curves(example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Ten jobs: the odd ones are clearly worse and flatten early, so the cohort rule and patience both bite.
    rows = ["job,epoch,val_loss,val_accuracy,train_loss,seconds"]
    for job in range(10):
        for epoch in range(1, 41):
            loss = (
                1 / epoch**0.5
                + (0.5 if job % 2 else 0.01 * job)
                + (0.02 * epoch if job % 2 and epoch > 10 else 0)
            )
            rows.append(f"j{job},{epoch},{loss:.5f},{1 - loss / 2:.5f},{loss:.5f},600")
    (tmp_path / "c.csv").write_text("\n".join(rows))
    result = replay_json(capsys, example, tmp_path / "c.csv")
    stopped = {job["job"] for job in result["jobs"] if job["stopped"]}
    assert {"j5", "j7", "j9"} <= stopped
    assert result["summary"]["fractionSaved"] > 0.1
    assert (
        result["summary"]["bestOverall"]["job"] == result["summary"]["bestOverallIfNoStopping"]["job"] == "j0"
    )


def shared_slice(task_prefix: str, configs: int) -> list[dict[str, str]]:
    """The first `configs` curves of the first task named task_prefix... (the file is sorted by task)."""
    if not SHARED_CURVES.exists():
        pytest.skip(f"{SHARED_CURVES} is absent: the shared curves live in ../shared beside the repository")
    rows: list[dict[str, str]] = []
    seen: list[str] = []
    with gzip.open(SHARED_CURVES, "rt") as handle:
        for row in csv.DictReader(handle):
            if not row["task"].startswith(task_prefix):
                if rows:
                    break
                continue
            if row["config"] not in seen:
                if len(seen) == configs:
                    break
                seen.append(row["config"])
            rows.append(row)
    return rows


def test_replay_on_real_curves_saves_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = shared_slice("algoperf_v05/imagenet_resnet_jax", 12)
    out = io.StringIO()
    out.write("job,epoch,val_loss,val_acc,seconds\n")
    for row in rows:
        out.write(
            f"{row['config']},{row['epoch']},{row['val_loss']},{row['val_acc']},{row['epoch_seconds']}\n"
        )
    job = JOB.replace("maxEpochs: 6", "maxEpochs: 1000").replace(
        "- {name: impatient, patience: {patience: 2}}\n  - {name: hour, budget: {maxDuration: 1h}}",
        "- {name: median, cohort: {minJobs: 3, warmupEpochs: 5}}\n"
        "  - {name: patience, patience: {patience: 10}}",
    )
    result = replay_json(capsys, *write(tmp_path, job=job, curves=out.getvalue()))
    summary = result["summary"]
    assert summary["jobs"] == 12
    assert summary["epochsRun"] < summary["epochsAvailable"]
    assert {job["reason"] for job in result["jobs"] if job["stopped"]} <= {"Cohort", "Patience"}
    assert summary["bestOverall"]["value"] <= summary["bestOverallIfNoStopping"]["value"] * 1.05


BAD_JOB_KIND = JOB.replace("patience: {patience: 2}", "median: {percentile: 50}")
BAD_JOB_SPEC = JOB.replace("patience: {patience: 2}", "patience: {patience: -2}")


@pytest.mark.parametrize(
    ("job", "curves", "error"),
    [
        (JOB, "job,epoch,seconds\na,1,60\n", r"curves.csv: line 1: missing column 'val_loss'"),
        (
            JOB,
            "job,epoch,val_loss\na,1,0.5\na,2,low\n",
            r"curves.csv: line 3: column 'val_loss' is 'low', not a number",
        ),
        (
            JOB,
            "job,epoch,val_loss\na,zero,0.5\n",
            r"curves.csv: line 2: column 'epoch' is 'zero'; epochs are integers",
        ),
        (
            JOB,
            "job,epoch,val_loss\na,1,0.5\na,1,0.4\n",
            r"curves.csv: line 3: job 'a' epoch 1 already appeared on line 2",
        ),
        (JOB, "", r"curves.csv: empty file; expected a header line job,epoch,<metric>"),
        (BAD_JOB_KIND, CURVES, r"job.yaml: spec.criteria\[0\].median: unknown field"),
        (
            BAD_JOB_SPEC,
            CURVES,
            r"job.yaml: spec.criteria\[0\].patience.patience: must be an integer within 1..100000",
        ),
        ("kind: Pod\n", CURVES, r"job.yaml: expected one TrainingJob manifest"),
        ("spec: [\n", CURVES, r"job.yaml: line 2: not valid YAML"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], job: str, curves: str, error: str
) -> None:
    job_file, curves_file = write(tmp_path, job=job, curves=curves)
    assert main(["replay", "--job", str(job_file), "--curves", str(curves_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("stopline replay: error: ")
    assert str(tmp_path) in captured.err
    assert re.search(error, captured.err), captured.err


def test_missing_file_from_the_console_script_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    job_file, _ = write(tmp_path)
    missing = tmp_path / "nope.csv.gz"
    run = subprocess.run(
        [sys.executable, "-m", "stopline.cli", "replay", "--job", str(job_file), "--curves", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr == f"stopline replay: error: {missing}: no such file; check the path\n"
