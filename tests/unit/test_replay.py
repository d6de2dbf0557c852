"""`stopline replay`: the sweep simulation, its JSON and table, and one-line errors for bad input."""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stopline import replay
from stopline.cli import main
from stopline.replay import sweep as replay_sweep
from stopline_local.demo import first_jobs

REPO = Path(__file__).resolve().parents[2]
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
    tmp_path: Path, job: str = JOB, curves: str | bytes = CURVES, name: str = "curves.csv"
) -> tuple[Path, Path]:
    job_file, curves_file = tmp_path / "job.yaml", tmp_path / name
    job_file.write_text(job, encoding="utf-8")
    data = curves.encode() if isinstance(curves, str) else curves
    curves_file.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
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
        "regret": 0.4,
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
    assert (
        "the stops lost the sweep's best: c was stopped at epoch 2 and would have reached 0.5; "
        "the best kept, 0.7, is 40.00% worse"
    ) in out
    assert "stale, gpuIdle and promql criteria cannot fire in replay" in out


def test_max_epochs_caps_what_a_job_would_have_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_curve = "job,epoch,val_loss\n" + "".join(f"a,{e},{1 / e}\n" for e in range(1, 11))
    result = replay_json(capsys, *write(tmp_path, curves=long_curve))
    assert (result["jobs"][0]["epochsRun"], result["jobs"][0]["epochsAvailable"]) == (6, 6)


RECOMMENDED = REPO / "examples" / "recommended-policy.yaml"  # learns from a study's finished jobs: below
RESUMABLE = REPO / "examples" / "resumable-sweep.yaml"  # the same forecast, its stops resumable: below


@pytest.mark.parametrize(
    "example",
    sorted(set((REPO / "examples").glob("*.yaml")) - {RECOMMENDED, RESUMABLE}),
    ids=lambda p: p.name,
)
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


@pytest.mark.parametrize("policy", [RECOMMENDED, RESUMABLE], ids=lambda p: p.name)
def test_the_recommended_policy_stops_jobs_like_finished_losers_and_keeps_the_best(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 60 jobs of 40 epochs on power-law curves: every third is good (floor 0 to 0.06), the others level
    # off 0.5 higher. The forecast needs finished jobs like a job before it judges it, so the first jobs
    # run to the end; later ones stop once enough like them finished and they will not beat j0.
    rows = ["job,epoch,val_loss"]
    for job in range(60):
        floor = 0.001 * job if job % 3 == 0 else 0.5 + 0.001 * job
        rows += [f"j{job},{epoch},{floor + epoch**-0.5:.5f}" for epoch in range(1, 41)]
    (tmp_path / "c.csv").write_text("\n".join(rows))
    result = replay_json(capsys, policy, tmp_path / "c.csv")
    summary = result["summary"]
    assert summary["bestOverall"]["job"] == summary["bestOverallIfNoStopping"]["job"] == "j0"
    assert summary["fractionSaved"] > 0.8
    stops = [job for job in result["jobs"] if job["stopped"]]
    assert all(job["reason"] == "Forecast" for job in stops)
    assert "the chance it beats 0.158" in stops[0]["message"]
    assert summary["regret"] == 0
    assert main(["replay", "--job", str(policy), "--curves", str(tmp_path / "c.csv")]) == 0
    assert (
        "the stops kept the sweep's best (j0): no stopped job would have beaten it" in capsys.readouterr().out
    )


PUBLIC_HEADER = "task,config,epoch,val_loss,val_acc,train_loss,epoch_seconds\n"


def public_rows(task: str, jobs: int) -> str:
    """A recorded task's first jobs as the public curves file has them: task,config,...,epoch_seconds."""
    return "".join(
        ",".join(row[column] for column in PUBLIC_HEADER.strip().split(",")) + "\n"
        for row in first_jobs(task, jobs)
    )


def test_replay_on_real_curves_saves_epochs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = JOB.replace("maxEpochs: 6", "maxEpochs: 1000").replace(
        "- {name: impatient, patience: {patience: 2}}\n  - {name: hour, budget: {maxDuration: 1h}}",
        "- {name: median, cohort: {minJobs: 3, warmupEpochs: 5}}\n"
        "  - {name: patience, patience: {patience: 10}}",
    )
    curves = PUBLIC_HEADER + public_rows("algoperf_v05/imagenet_resnet_jax", 12)
    result = replay_json(capsys, *write(tmp_path, job=job, curves=curves))
    (sweep,) = result["tasks"]
    summary = sweep["summary"]
    assert (sweep["task"], summary["jobs"]) == ("algoperf_v05/imagenet_resnet_jax", 12)
    assert summary["epochsRun"] < summary["epochsAvailable"]
    assert {job["reason"] for job in sweep["jobs"] if job["stopped"]} <= {"Cohort", "Patience"}
    assert summary["bestOverall"]["value"] <= summary["bestOverallIfNoStopping"]["value"] * 1.05


def test_each_task_of_a_public_curves_file_is_a_sweep_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Curve collections name a job by config, unique within its task only (both tasks have r0000...), and
    # record epoch_seconds: each task is replayed alone, as if it were the only one in the file.
    job = RECOMMENDED.read_text().replace("{metric: val_loss, mode: min}", "{metric: val_acc, mode: max}")
    tasks = ("baker2018/metaqnn_cifar10", "baker2018/resnet_cifar10")
    both = replay_json(
        capsys, *write(tmp_path, job=job, curves=PUBLIC_HEADER + "".join(public_rows(t, 40) for t in tasks))
    )
    assert [sweep["task"] for sweep in both["tasks"]] == list(tasks)
    for task, sweep in zip(tasks, both["tasks"], strict=True):
        alone_file = tmp_path / f"{task.replace('/', '-')}.csv"
        alone_file.write_text(PUBLIC_HEADER + public_rows(task, 40))
        alone = replay_json(capsys, tmp_path / "job.yaml", alone_file)["tasks"][0]
        assert sweep == alone
        assert [job["job"] for job in sweep["jobs"]] == [f"r{n:04d}" for n in range(40)]
    saved = [sweep["summary"]["fractionSaved"] for sweep in both["tasks"]]
    assert all(fraction > 0 for fraction in saved)
    summary = both["summary"]
    assert (summary["tasks"], summary["jobs"]) == (2, 80)
    assert summary["fractionSavedMeanOfTasks"] == pytest.approx(sum(saved) / 2, abs=1e-6)
    regrets = {sweep["task"]: sweep["summary"]["regret"] for sweep in both["tasks"]}
    assert summary["regretMax"] == max(regrets.values())
    assert regrets[summary["worstTask"]] == summary["regretMax"]
    # --task replays one of them; the table heads each sweep with its task and ends with the summary.
    assert main(["replay", "--job", str(tmp_path / "job.yaml"), "--curves", str(tmp_path / "curves.csv"),
                 "--task", tasks[1]]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith(f"== task {tasks[1]} (40 jobs)\n")
    assert tasks[0] not in out
    assert re.search(r"^1 task: \d+\.\d% of epochs saved \(mean of tasks\), worst task's regret", out, re.M)


def test_epoch_seconds_is_the_clock_of_a_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    curves = "task,config,epoch,val_loss,epoch_seconds\n" + "".join(
        f"t,c{job},{epoch},{1 / epoch},1500\n" for job in range(2) for epoch in range(1, 6)
    )
    result = replay_json(capsys, *write(tmp_path, curves=curves))
    # 25 min epochs against the 1h budget: each job stops after its third epoch (75 min).
    assert [(job["reason"], job["stopEpoch"]) for job in result["tasks"][0]["jobs"]] == [("Budget", 3)] * 2


BAD_JOB_KIND = JOB.replace("patience: {patience: 2}", "median: {percentile: 50}")
BAD_JOB_SPEC = JOB.replace("patience: {patience: 2}", "patience: {patience: -2}")
HEADER = "job,epoch,val_loss,seconds\n"
EPOCH_RULE = "epochs are integers from 1 to 1000000, written with the digits 0-9"
SECONDS_RULE = "write the seconds the epoch took, from 0 to 1000000000"


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
        # PyYAML raises ValueError, RecursionError and AttributeError besides YAMLError on these.
        ("kind: TrainingJob\nat: 2001-13-14\n", CURVES, r"job.yaml: not valid YAML \(ValueError: month"),
        ("spec: " + "[" * 2000 + "]" * 2000, CURVES, r"job.yaml: not valid YAML \(RecursionError"),
        ("at: !!timestamp soon\n", CURVES, r"job.yaml: not valid YAML \(AttributeError"),
        ("#" * (3 << 20), CURVES, r"job.yaml: larger than 2 MiB, and a TrainingJob manifest is far smaller"),
        # Epochs: ASCII digits only (str.isdigit() takes '²' and int() then fails), 1..1000000.
        (JOB, HEADER + "a,²,0.5,60\n", rf"line 2: column 'epoch' is '²'; {EPOCH_RULE}"),
        (JOB, HEADER + "a,\u0663,0.5,60\n", rf"line 2: column 'epoch' is '\u0663'; {EPOCH_RULE}"),
        (JOB, HEADER + "a,1_000,0.5,60\n", rf"line 2: column 'epoch' is '1_000'; {EPOCH_RULE}"),
        (JOB, HEADER + f"a,{10**29},0.5,60\n", rf"line 2: column 'epoch' is '{10**29}'; {EPOCH_RULE}"),
        (JOB, HEADER + "a,1000001,0.5,60\n", rf"line 2: column 'epoch' is '1000001'; {EPOCH_RULE}"),
        (JOB, HEADER + "a,0,0.5,60\n", rf"line 2: column 'epoch' is '0'; {EPOCH_RULE}"),
        # Metric cells: decimal notation that fits a float, or nan/inf spelled out.
        (JOB, HEADER + "a,1,1e999,60\n", r"line 2: column 'val_loss' is '1e999', beyond the largest float"),
        (JOB, HEADER + "a,1,1_000,60\n", r"line 2: column 'val_loss' is '1_000', not a number; write a"),
        (JOB, HEADER + "a,1,\u0661.5,60\n", r"line 2: column 'val_loss' is '\u0661.5', not a number"),
        # seconds: finite, 0..1e9, else the budget's clock is NaN or runs backwards.
        (JOB, HEADER + "a,1,0.5,nan\n", rf"line 2: column 'seconds' is 'nan', not a number; {SECONDS_RULE}"),
        (JOB, HEADER + "a,1,0.5,inf\n", rf"line 2: column 'seconds' is 'inf', not a number; {SECONDS_RULE}"),
        (JOB, HEADER + "a,1,0.5,-60\n", rf"line 2: column 'seconds' is '-60', out of range; {SECONDS_RULE}"),
        (JOB, HEADER + "a,1,0.5,1e10\n", r"line 2: column 'seconds' is '1e10', out of range"),
        (JOB, HEADER + "a,1,0.5,1e999\n", r"line 2: column 'seconds' is '1e999', beyond the largest float"),
        # A repeated column name would silently keep the last value.
        (
            JOB,
            "job,epoch,val_loss,seconds,val_loss\na,1,0.5,60,0.4\n",
            r"line 1: column 5 is named 'val_loss' like column 3; give each column its own name",
        ),
        # Job names are printed: NUL, an ANSI escape or a bidi override is refused, and shown escaped.
        (JOB, HEADER + "a\x00b,1,0.5,60\n", r"line 2: column 'job' is 'a\\x00b', with a control"),
        (JOB, HEADER + "\x1b[2J\x1b[31mred,1,0.5,60\n", r"column 'job' is '\\x1b\[2J\\x1b\[31mred'"),
        (JOB, HEADER + "\u202eevil,1,0.5,60\n", r"column 'job' is '\\u202eevil', with a control"),
        (JOB, "job,epoch,\x1b[31m\n", r"line 1: missing column 'val_loss'.*\(found: job,epoch,\\x1b\[31m\)"),
        # A cell past csv's 128 KiB limit: one long line, or a quoted cell over many lines.
        (JOB, HEADER + "a,1," + "9" * 200_000 + ",60\n", r"line 2: longer than 65536 bytes \(column 3 by"),
        (
            JOB,
            HEADER + 'a,1,"' + ("9" * 1000 + "\n") * 200 + '",60\n',
            r"line 132: not valid CSV \(field larger than field limit \(131072\)\); check the quotes",
        ),
        (JOB, HEADER.encode() + b"a,1,0.5,60\nb\xff,1,0.5,60\n", r"line 3: not UTF-8 text \(invalid start"),
        # The public curves format: task and config name a curve; either may repeat in the other.
        (
            JOB,
            "task,config,epoch,val_loss\nt,a,1,0.5\nu,a,1,0.5\nt,a,1,0.4\n",
            r"line 4: task 't' config 'a' epoch 1 already appeared on line 2; keep one row per config",
        ),
        (JOB, "task,config,epoch,val_loss\nt\x1b[2J,a,1,0.5\n", r"line 2: column 'task' is 't\\x1b\[2J'"),
        (JOB, "task,epoch,val_loss\nt,1,0.5\n", r"line 1: missing column 'job'; .*or task,config,epoch"),
        (
            JOB,
            "config,epoch,val_loss,epoch_seconds\na,1,0.5,-1\n",
            r"line 2: column 'epoch_seconds' is '-1', out of range",
        ),
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
    assert captured.err.rstrip("\n").isprintable(), "control characters reach the terminal"
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


def test_nan_and_inf_are_metric_values_but_never_the_best(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A trainer reports nan and inf (the divergence criterion fires on them), so they are data, not errors.
    curves = HEADER + "a,1,nan,60\na,2,0.5,0\na,3,inf,60\na,0000004,-Inf,60\nb,1000000,+0.4,\n"
    result = replay_json(
        capsys, *write(tmp_path, job=JOB.replace("maxEpochs: 6", "maxEpochs: 1000000"), curves=curves)
    )
    a, b = result["jobs"]
    assert (a["epochsRun"], a["best"]) == (4, {"metric": "val_loss", "value": 0.5, "epoch": 2})
    assert b["best"] == {"metric": "val_loss", "value": 0.4, "epoch": 1000000}


def test_truncated_gzip_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job_file, curves_file = write(tmp_path, name="curves.csv.gz")
    curves_file.write_bytes(curves_file.read_bytes()[:-12])
    assert main(["replay", "--job", str(job_file), "--curves", str(curves_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stopline replay: error: {curves_file}: line 11: not a whole gzip file (")
    assert len(err.splitlines()) == 1


def gzip_members(*parts: tuple[bytes, int]) -> bytes:
    """A gzip file as concatenated members (one per distinct part, repeated): a bomb built in milliseconds."""
    compress = functools.cache(gzip.compress)
    return b"".join(compress(data) * times for data, times in parts)


def padded_rows(count: int) -> list[tuple[bytes, int]]:
    """Valid rows padded with 60,000 spaces each: ~4,500 of them pass 256 MiB; padding is all they hold."""
    parts = [(b"job,epoch,val_loss\n", 1)]
    for epoch in range(1, count + 1):
        parts += [(b"a,%d," % epoch, 1), (b" " * 60_000, 1), (b"0.5\n", 1)]
    return parts


# The replay runs in a fresh child of a fresh Python: its peak RSS is that child's alone.
MEASURE_RSS = (
    "import json, resource, subprocess, sys\n"
    "run = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024\n"
    "print(json.dumps([run.returncode, peak_mb, run.stderr]))\n"
)
RSS_BOUND_MB = 100  # a normal replay peaks near 20 MB; reading a 48 MiB bomb whole took 257 MB


@pytest.mark.parametrize(
    ("bomb", "error"),
    [
        ((), None),  # the normal CURVES: the baseline the bound is measured against
        (((b"job,epoch,val_loss\na,1,", 1), (b"9" * (1 << 20), 48)), "line 2: longer than 65536 bytes"),
        (
            ((b"job,epoch,val_loss\na,1,0.5\n", 1), (b"\n" * (1 << 20), 300)),
            "line 2000001: more than 2000000",
        ),
        (tuple(padded_rows(5000)), "more than 256 MiB once decompressed; replay fewer jobs at a time"),
    ],
    ids=["normal", "one-48MiB-line", "300MiB-of-blank-lines", "260MiB-of-padded-rows"],
)
def test_gzip_bomb_is_refused_in_bounded_memory(
    tmp_path: Path, bomb: tuple[tuple[bytes, int], ...], error: str | None
) -> None:
    job_file, curves_file = write(tmp_path, name="curves.csv.gz")
    if bomb:
        curves_file.write_bytes(gzip_members(*bomb))
    command = [
        sys.executable,
        "-m",
        "stopline.cli",
        "replay",
        "--job",
        str(job_file),
        "--curves",
        str(curves_file),
    ]
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE_RSS, *command], capture_output=True, text=True, check=True
    ).stdout
    code, peak_mb, stderr = json.loads(measured)
    assert peak_mb < RSS_BOUND_MB, f"peak RSS {peak_mb} MB"
    if error is None:
        assert (code, stderr) == (0, "")
        return
    assert code == 2
    assert stderr.startswith(f"stopline replay: error: {curves_file}: ") and error in stderr, stderr
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr


def test_a_reader_that_leaves_early_is_no_error(tmp_path: Path) -> None:
    # `stopline replay --json ... | head`: 2,000 jobs print far more than a pipe holds.
    curves = "job,epoch,val_loss\n" + "".join(f"j{job},1,0.5\n" for job in range(2000))
    job_file, curves_file = write(tmp_path, curves=curves)
    command = [
        sys.executable,
        "-m",
        "stopline.cli",
        "replay",
        "--job",
        str(job_file),
        "--curves",
        str(curves_file),
        "--json",
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.readline() == b"{\n"
        child.stdout.close()
        stderr = child.stderr.read()
        assert child.wait(timeout=60) == 0, stderr
    assert stderr == b""


@pytest.mark.parametrize(
    ("curves", "task", "error"),
    [
        (PUBLIC_HEADER + "t,a,1,0.5,,,60\n", "u", r"curves.csv: no task 'u'; the file has t$"),
        (CURVES, "t", r"curves.csv: no column 'task', so --task 't' names nothing; drop --task$"),
    ],
)
def test_a_task_the_file_lacks_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], curves: str, task: str, error: str
) -> None:
    job_file, curves_file = write(tmp_path, curves=curves)
    assert main(["replay", "--job", str(job_file), "--curves", str(curves_file), "--task", task]) == 2
    assert re.search(error, capsys.readouterr().err.rstrip("\n"))


def test_a_task_without_the_objective_metric_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    curves = PUBLIC_HEADER + "t,a,1,0.5,,,60\nu,a,1,,0.4,,60\n"
    job_file, curves_file = write(tmp_path, curves=curves)
    assert main(["replay", "--job", str(job_file), "--curves", str(curves_file)]) == 0
    out = capsys.readouterr().out
    assert "note: task u: no val_loss values, so no job there was judged on the objective" in out
    assert "task t:" not in out


def test_progress_hears_every_job_of_every_task(tmp_path: Path) -> None:
    curves = PUBLIC_HEADER + "".join(f"{task},c{job},1,0.5,,,60\n" for task in "tu" for job in range(3))
    job_file, curves_file = write(tmp_path, curves=curves)
    heard: list[tuple[int, int]] = []
    replay.replay(job_file, curves_file, progress=lambda done, total: heard.append((done, total)))
    assert heard == [(done, 6) for done in range(1, 7)]


def test_columns_no_criterion_watches_may_hold_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A sweep's export often carries its hyperparameters: only the objective and the metrics the criteria
    # watch are read as numbers.
    curves = "job,epoch,val_loss,schedule,seconds\n" + "".join(
        f"{job},{epoch},{1 / epoch},cosine warm-up,60\n" for job in "ab" for epoch in range(1, 4)
    )
    result = replay_json(capsys, *write(tmp_path, curves=curves))
    assert [job["epochsRun"] for job in result["jobs"]] == [3, 3]
    watched = JOB.replace(
        "{name: impatient, patience: {patience: 2}}", "{name: t, threshold: {metric: schedule, value: 1}}"
    )
    job_file, curves_file = write(tmp_path, job=watched, curves=curves)
    assert main(["replay", "--job", str(job_file), "--curves", str(curves_file)]) == 2
    assert "line 2: column 'schedule' is 'cosine warm-up', not a number" in capsys.readouterr().err


# A cohort rule that never finds its minJobs peers: it compares each epoch with every earlier job and stops
# none, so job k of a sweep of 5-epoch jobs costs 5 * (k - 1) comparisons.
NEVER_ENOUGH_PEERS = JOB.replace(
    "{name: impatient, patience: {patience: 2}}", "{name: median, cohort: {minJobs: 1000}}"
)


def sweep_rows(jobs: int, header: str = "job,epoch,val_loss", extra: str = "") -> str:
    """`jobs` jobs of 5 improving epochs each, with `extra` appended to every row."""
    return f"{header}\n" + "".join(
        f"j{job},{epoch},{job + 1 / epoch}{extra}\n" for job in range(jobs) for epoch in range(1, 6)
    )


def test_a_replay_stops_before_the_job_that_takes_it_past_its_peer_comparisons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # N14: each job is compared with every job before it, so a sweep costs the square of its jobs. Ten
    # jobs make 5 * (0 + 1 + ... + 9) = 225 comparisons; the eleventh would add 50 more.
    monkeypatch.setattr(replay_sweep, "PEER_COMPARISONS_MAX", 225, raising=False)
    ten_jobs = replay_json(capsys, *write(tmp_path, job=NEVER_ENOUGH_PEERS, curves=sweep_rows(10)))
    assert len(ten_jobs["jobs"]) == 10
    job_file, curves_file = write(tmp_path, job=NEVER_ENOUGH_PEERS, curves=sweep_rows(20))
    assert main(["replay", "--job", str(job_file), "--curves", str(curves_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"stopline replay: error: {curves_file}: job 11 of 20 ('j10') would take the replay past 225 "
        "comparisons of an epoch with an earlier job's curve (the cohort, rungs and forecast criteria "
        "compare each epoch with every earlier job, so the cost grows with the square of the jobs); replay "
        "fewer jobs at a time (split the file by job)\n"
    )


def test_a_file_sure_to_pass_the_limit_is_refused_before_any_job_runs(tmp_path: Path) -> None:
    # N14's file: many one-epoch jobs. Even if each stopped at its first epoch, n of them would make
    # n * (n - 1) / 2 comparisons, past the limit here: refused at once, before minutes of replay.
    jobs = next(n for n in itertools.count(2) if n * (n - 1) // 2 > replay.PEER_COMPARISONS_MAX)
    curves = "job,epoch,val_loss\n" + "".join(f"j{job},1,{job % 97 / 97}\n" for job in range(jobs))
    job_file, curves_file = write(tmp_path, job=RECOMMENDED.read_text(), curves=curves)
    heard: list[int] = []
    with pytest.raises(replay.ReplayError) as refused:
        replay.replay(job_file, curves_file, progress=lambda done, total: heard.append(done))
    assert str(refused.value).startswith(
        f"{curves_file}: {jobs} jobs, even if each stopped at its first epoch, would take the replay past "
        f"{replay.PEER_COMPARISONS_MAX:,} comparisons"
    )
    assert heard == []


def test_criteria_that_read_no_earlier_job_and_curves_they_cannot_read_cost_no_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_sweep, "PEER_COMPARISONS_MAX", 0, raising=False)
    # Patience and budgets judge each job on its own curve alone.
    assert len(replay_json(capsys, *write(tmp_path, curves=sweep_rows(30)))["jobs"]) == 30
    # The cohort rule watches train_loss, which no job recorded: it has no earlier curve to compare with.
    job = NEVER_ENOUGH_PEERS.replace("minJobs: 1000", "minJobs: 1000, metric: train_loss")
    curves = sweep_rows(30, header="job,epoch,val_loss,train_loss", extra=",")
    assert len(replay_json(capsys, *write(tmp_path, job=job, curves=curves))["jobs"]) == 30
