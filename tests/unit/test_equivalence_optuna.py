"""cohort (compare=best, reference=value, includeStopped=false) takes optuna PercentilePruner's decisions.

The mapping, read from optuna/pruners/_percentile.py: a trial reports epoch e as step e (1-based).
- PercentilePruner prunes only when `step >= n_warmup_steps`; warmupEpochs w (no decision at 1..w) is
  n_warmup_steps = w + 1. (Reporting 0-based steps, `trial.report(v, epoch - 1)`, it is w.)
- It compares the trial's best intermediate value over all its steps (warm-up included) with
  nanpercentile(values of COMPLETE trials at this step, percentile), 100 - percentile for maximize:
  pruned trials never count (includeStopped=false), and the percentile counts from the best end.
- minJobs k is n_min_trials = k (k completed trials must have reported this step); n_startup_trials
  (completed trials in all) is then implied by it for any value <= k, so it is set to k too.
- MedianPruner is PercentilePruner(50.0, ...).
"""

from __future__ import annotations

import random
from typing import Literal

import optuna
import pytest

from stopline.criteria import CohortCurve
from unit.specs import run_curve, spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUDIES = 150
Direction = Literal["minimize", "maximize"]


def optuna_stop_epochs(
    curves: list[list[float]],
    direction: Direction,
    percentile: float,
    min_jobs: int,
    warmup: int,
) -> list[int | None]:
    pruner = optuna.pruners.PercentilePruner(
        percentile, n_startup_trials=min_jobs, n_warmup_steps=warmup + 1, n_min_trials=min_jobs
    )
    study = optuna.create_study(direction=direction, pruner=pruner)
    stops: list[int | None] = []
    for curve in curves:
        trial = study.ask()
        stop = None
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if trial.should_prune():
                stop = epoch
                break
        study.tell(trial, state=optuna.trial.TrialState.PRUNED) if stop else study.tell(trial, curve[-1])
        stops.append(stop)
    return stops


def our_stop_epochs(
    curves: list[list[float]], mode: str, percentile: float, min_jobs: int, warmup: int
) -> list[int | None]:
    rule = {"percentile": percentile, "minJobs": min_jobs, "warmupEpochs": warmup}
    job = spec({"name": "c", "cohort": rule | {"reference": "value", "includeStopped": False}}, mode=mode)
    cohort: list[CohortCurve] = []
    stops: list[int | None] = []
    for index, curve in enumerate(curves):
        decision = run_curve(job, curve, cohort=tuple(cohort))[0].decision
        stop = decision.epoch if decision is not None else None
        ran = curve[:stop] if stop else curve
        cohort.append(
            CohortCurve(f"job{index}", "val_loss", dict(enumerate(ran, start=1)), stopped=stop is not None)
        )
        stops.append(stop)
    return stops


@pytest.mark.parametrize("mode", ["min", "max"])
def test_cohort_prunes_where_percentile_pruner_does(mode: str) -> None:
    rng = random.Random(f"cohort-{mode}")
    pruned = 0
    for _ in range(STUDIES):
        percentile = rng.choice([10.0, 25.0, 50.0, 50.0, 75.0, 90.0, rng.uniform(0, 100)])
        min_jobs, warmup = rng.randrange(1, 5), rng.randrange(0, 4)
        curves = [
            [rng.randrange(0, 40) / 8 for _ in range(rng.randrange(1, 12))]
            for _ in range(rng.randrange(4, 12))
        ]
        ours = our_stop_epochs(curves, mode, percentile, min_jobs, warmup)
        direction: Direction = "minimize" if mode == "min" else "maximize"
        assert ours == optuna_stop_epochs(curves, direction, percentile, min_jobs, warmup), (
            curves, percentile, min_jobs, warmup,
        )  # fmt: skip
        pruned += sum(stop is not None for stop in ours)
    assert pruned > STUDIES  # the comparison covered many prunes, not only "never stops"
