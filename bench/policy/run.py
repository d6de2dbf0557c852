"""Stop policies on real learning curves: GPU-epochs saved versus the sweep's lost final quality.

Each task of bench/policy/curves/curves.csv.gz (licences beside it) is one sweep; its configs are the
jobs, run one after another in file order (the cohort is the jobs before). Ours runs through the real
engine (stopline.replay.replay_job); the peers run their own code: Lightning's EarlyStopping and Optuna's
MedianPruner, both at their defaults.
Run: .venv/bin/python bench/policy/run.py [--max-configs N] [--curves PATH]   (all 8,084 curves: ~2 min)
"""

from __future__ import annotations

import argparse
import csv
import gzip
import math
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from lightning.pytorch.callbacks import EarlyStopping
from matplotlib.figure import Figure

from stopline import api
from stopline.criteria import CohortCurve
from stopline.replay import Curve, replay_job

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "out"
OURS: dict[str, list[dict[str, object]]] = {
    "stopline patience 5": [{"name": "p", "patience": {"patience": 5}}],
    "stopline patience 10, minDelta 0.1% rel.": [
        {"name": "p", "patience": {"patience": 10, "minDelta": 0.001, "minDeltaMode": "relative"}}
    ],
    "stopline cohort median (defaults)": [{"name": "c", "cohort": {}}],
    "stopline cohort median, warmup 3 + patience 10": [
        {"name": "c", "cohort": {"warmupEpochs": 3}},
        {"name": "p", "patience": {"patience": 10}},
    ],
}


@dataclass
class Task:
    name: str
    metric: str
    mode: api.Mode
    jobs: list[Curve]


def load(path: Path, max_configs: int | None) -> list[Task]:
    """Tasks with their configs in file order; val_loss (min) where the task has it, else val_acc (max)."""
    raw: dict[str, dict[str, Curve]] = {}
    with gzip.open(path, "rt") as handle:
        for row in csv.DictReader(handle):
            curve = raw.setdefault(row["task"], {}).setdefault(row["config"], Curve(row["config"]))
            curve.rows[int(row["epoch"])] = {
                k: float(row[k]) for k in ("val_loss", "val_acc") if row[k] != ""
            }
            if row["epoch_seconds"]:
                curve.seconds[int(row["epoch"])] = float(row["epoch_seconds"])
    tasks = []
    for name, configs in raw.items():
        jobs = list(configs.values())
        has_loss = any("val_loss" in values for job in jobs for values in job.rows.values())
        if max_configs is not None and len(jobs) > max_configs:
            keep = set(random.Random(name).sample(range(len(jobs)), max_configs))
            jobs = [job for index, job in enumerate(jobs) if index in keep]
        tasks.append(Task(name, "val_loss" if has_loss else "val_acc", "min" if has_loss else "max", jobs))
    return tasks


def values(task: Task, job: Curve) -> list[float]:
    return [job.rows[e].get(task.metric, math.nan) for e in sorted(job.rows)]


def ours(criteria: list[dict[str, object]]) -> Callable[[Task], list[int]]:
    def run(task: Task) -> list[int]:
        spec = api.parse_spec(
            {
                "template": {"spec": {"containers": [{"name": "trainer"}]}},
                "objective": {"metric": task.metric, "mode": task.mode},
                "checkpoint": {"pvc": {"claimName": "bench"}},
                "criteria": criteria,
            }
        )
        cohort: list[CohortCurve] = []
        runs = []
        for job in task.jobs:
            ran, decision = replay_job(spec, job, tuple(cohort), max(job.rows))
            values = {e: row[task.metric] for e, row in job.rows.items() if e <= ran and task.metric in row}
            cohort.append(CohortCurve(job.job, task.metric, values, stopped=decision is not None))
            runs.append(ran)
        return runs

    return run


def lightning_defaults(task: Task) -> list[int]:
    runs = []
    for job in task.jobs:
        callback = EarlyStopping("m", mode=task.mode)  # patience 3, min_delta 0, check_finite True
        curve = values(task, job)
        stop = next(
            (e for e, v in enumerate(curve, 1) if callback._evaluate_stopping_criteria(torch.tensor(v))[0]),
            len(curve),
        )
        runs.append(stop)
    return runs


def optuna_median_defaults(task: Task) -> list[int]:
    """MedianPruner() as users write it: trial.report(value, epoch), prune when should_prune()."""
    study = optuna.create_study(
        direction="minimize" if task.mode == "min" else "maximize", pruner=optuna.pruners.MedianPruner()
    )
    runs = []
    for job in task.jobs:
        trial, curve = study.ask(), values(task, job)
        stop = None
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
            if trial.should_prune():
                stop = epoch
                break
        if stop is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif math.isfinite(curve[-1]):
            study.tell(trial, curve[-1])
        else:  # a diverged run: optuna refuses NaN objective values, a failed trial is what users record
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        runs.append(stop or len(curve))
    return runs


def no_stopping(task: Task) -> list[int]:
    return [len(job.rows) for job in task.jobs]


@dataclass
class TaskScore:
    run: int
    available: int
    regret: float  # relative loss of the sweep's best final metric, > 0 is worse
    jobs: int
    jobs_lost: int  # stopped jobs whose value at the stop is > 1% worse than their own final value


def worse_by(value: float, reference: float, mode: api.Mode) -> float:
    """How much worse value is than reference, relative to |reference| (negative when better)."""
    gap = value - reference if mode == "min" else reference - value
    return gap / abs(reference) if reference else gap


def score(task: Task, runs: list[int]) -> TaskScore:
    finals, stopped_values, lost = [], [], 0
    for job, ran in zip(task.jobs, runs, strict=True):
        curve = values(task, job)
        final, at_stop = curve[-1], curve[ran - 1]
        finals.append(final)
        stopped_values.append(at_stop)
        if (
            ran < len(curve)
            and math.isfinite(final)
            and (not math.isfinite(at_stop) or worse_by(at_stop, final, task.mode) > 0.01)
        ):
            lost += 1
    pick = min if task.mode == "min" else max
    best_final = pick(v for v in finals if math.isfinite(v))
    best_stopped = pick(v for v in stopped_values if math.isfinite(v))
    return TaskScore(
        sum(runs),
        sum(len(job.rows) for job in task.jobs),
        worse_by(best_stopped, best_final, task.mode),
        len(runs),
        lost,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=Path, default=REPO / "bench" / "policy" / "curves" / "curves.csv.gz")
    parser.add_argument(
        "--max-configs",
        type=int,
        default=0,
        help="a seeded sample of at most N configs per task (default: all)",
    )
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)  # optuna on a curve that is all NaN
    started = time.monotonic()
    tasks = load(args.curves, args.max_configs or None)
    total = sum(len(task.jobs) for task in tasks)
    print(f"{args.curves}: {len(tasks)} tasks, {total} curves")
    if args.max_configs:
        print(f"  at most {args.max_configs} configs per task, a seeded sample (--max-configs)")
    policies: dict[str, Callable[[Task], list[int]]] = {
        "no stopping": no_stopping,
        "Lightning EarlyStopping defaults": lightning_defaults,
        "Optuna MedianPruner defaults": optuna_median_defaults,
        **{name: ours(criteria) for name, criteria in OURS.items()},
    }
    rows = []
    for name, policy in policies.items():
        clock = time.monotonic()
        scores = [score(task, policy(task)) for task in tasks]
        regrets = [s.regret * 100 for s in scores]
        run, available = sum(s.run for s in scores), sum(s.available for s in scores)
        rows.append(
            (
                name,
                1 - run / available,
                statistics.mean(1 - s.run / s.available for s in scores),
                statistics.median(regrets),
                statistics.mean(regrets),
                max(regrets),
                sum(r > 1 for r in regrets),
                sum(s.jobs_lost for s in scores),
                time.monotonic() - clock,
            )
        )
        print(f"  {name}: {rows[-1][-1]:.0f} s")
    header = (
        "| policy | epochs saved (pooled) | saved (mean of tasks) | regret median | regret mean "
        "| regret max | tasks > 1% regret | jobs lost > 1% |"
    )
    print("\n" + header + "\n|" + "---|" * 8)
    for name, pooled, mean_saved, med, mean, worst, tasks_over, lost in (row[:8] for row in rows):
        print(
            f"| {name} | {pooled:.1%} | {mean_saved:.1%} | {med:.2f}% | {mean:.2f}% | {worst:.2f}% "
            f"| {tasks_over}/{len(tasks)} | {lost}/{total} |"
        )
    OUT.mkdir(exist_ok=True)
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for name, _, mean_saved, _, mean, *_ in rows:
        axes.scatter(mean_saved * 100, mean, s=50, label=name)
    axes.legend(fontsize=8)
    axes.set_xlabel("GPU-epochs saved, mean over tasks (%)")
    axes.set_ylabel("mean regret of the sweep's best final metric over tasks (%)")
    axes.set_title(f"Stop policies on {len(tasks)} real sweeps ({total} curves)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(OUT / "saved_vs_regret.png", dpi=120)
    print(f"\nplot: {OUT / 'saved_vs_regret.png'}  (total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
