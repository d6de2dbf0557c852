"""Cohort: the median stopping rule of Vizier/SageMaker, generalised to any percentile.

At epoch e (after warm-up) the job stops when its best-so-far (compare=best) or its value at e
(compare=current) is strictly worse than the percentile of the other jobs' references at e: their running
averages over epochs 1..e (reference=runningAverage) or their values at e (reference=value). Only jobs
that reached e count, and at least minJobs of them are needed. The percentile counts from the best end,
as in Optuna's PercentilePruner: with 25 a job must be in the best quarter to go on (for a max metric
the cut is the 75th numeric percentile). With compare=best, reference=value and includeStopped=false this
takes exactly the decisions of optuna.pruners.PercentilePruner (see tests/unit/test_equivalence_optuna.py).

Jobs of a sweep run side by side, so when this job reaches epoch e its peers are often still at e-1 (their
status is written a moment later). An epoch judged without minJobs peers waits (state.PeerWaitState) and is
judged again on every later call, as the peers catch up; otherwise a job in lock-step with its peers
would never be compared. In a replay the peers are complete: nothing waits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.kind import Kind
from stopline.criteria.observation import CohortCurve, Observation
from stopline.criteria.percentile import percentile
from stopline.criteria.state import PeerWaitState, fmt, is_better, status_line
from stopline.fields import Fields, Mode, Objective, metric_mode, warmup_epochs


@dataclass(frozen=True)
class CohortCriterion:
    """Median stopping rule (Vizier/SageMaker) over the other jobs of the study."""

    name: str
    metric: str
    mode: Mode
    study: str | None = None
    percentile: float = 50.0
    min_jobs: int = 5
    warmup_epochs: int = 0
    compare: Literal["best", "current"] = "best"
    reference: Literal["runningAverage", "value"] = "runningAverage"
    include_stopped: bool = True


@dataclass
class CohortState(PeerWaitState):
    KIND: ClassVar[str] = "cohort"
    best: float | None = None
    best_epoch: int | None = None
    cut: float | None = None
    jobs: int = 0  # waiting entries: [epoch, value, best]


def references(criterion: CohortCriterion, cohort: tuple[CohortCurve, ...], epoch: int) -> list[float]:
    """The other jobs' references at `epoch`, from the jobs that reached it."""
    table = "running_average" if criterion.reference == "runningAverage" else "values"
    return [
        getattr(curve, table)[epoch]
        for curve in cohort
        if curve.metric == criterion.metric
        and epoch in curve.values
        and (criterion.include_stopped or not curve.stopped)
    ]


def _judge(
    criterion: CohortCriterion,
    state: CohortState,
    cohort: tuple[CohortCurve, ...],
    epoch: int,
    value: float,
    best: float,
) -> bool:
    """Compare this job at `epoch` with the peers that reached it, setting state.stop when it is worse;
    False when fewer than minJobs peers reached `epoch` (nothing was compared)."""
    references_at = references(criterion, cohort, epoch)
    state.jobs = len(references_at)
    if len(references_at) < criterion.min_jobs:
        state.cut = None
        return False
    numeric_percentile = criterion.percentile if criterion.mode == "min" else 100 - criterion.percentile
    state.cut = cut = percentile(references_at, numeric_percentile)
    mine = best if criterion.compare == "best" else value
    if is_better(cut, mine, criterion.mode):
        what = "best" if criterion.compare == "best" else "value"
        of = "running averages" if criterion.reference == "runningAverage" else "values"
        message = (
            f"{criterion.metric} {what} {fmt(mine)} at epoch {epoch} is worse than "
            f"{fmt(cut)}, the {fmt(criterion.percentile)}th percentile of the {of} "
            f"of {len(references_at)} other jobs"
        )
        state.stop = Decision("Cohort", criterion.name, message, criterion.metric, mine, epoch).as_status()
    return True


def evaluate(
    criterion: CohortCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    state = CohortState.load(raw)
    judged_now = set()
    for epoch, value in state.finite_values(observation.samples, criterion.metric):
        if state.best is None or is_better(value, state.best, criterion.mode):
            state.best, state.best_epoch = value, epoch
        if epoch <= criterion.warmup_epochs:
            continue
        judged_now.add(epoch)
        if not _judge(criterion, state, observation.cohort, epoch, value, state.best):
            state.wait([epoch, value, state.best])
        if state.stop is not None:
            break
    state.judge_waiting(
        judged_now,
        lambda entry: _judge(criterion, state, observation.cohort, int(entry[0]), entry[1], entry[2]),
    )
    if state.cut is not None:
        summary = (
            f"best {fmt(state.best if state.best is not None else math.nan)}; "
            f"the cut at epoch {state.epoch} is {fmt(state.cut)} from {state.jobs} jobs"
        )
    elif state.epoch > criterion.warmup_epochs:
        summary = (
            f"{state.jobs} other jobs reached epoch {state.epoch}; {criterion.min_jobs} needed to compare"
        )
    else:
        summary = f"warm-up: comparing from epoch {criterion.warmup_epochs + 1} on"
    return Outcome(
        state.dump(), state.decision, status_line(observation.samples, state, criterion.metric, summary)
    )


COHORT_FIELDS = (
    "metric",
    "mode",
    "study",
    "percentile",
    "minJobs",
    "warmupEpochs",
    "compare",
    "reference",
    "includeStopped",
)


def parse(name: str, fields: Fields, objective: Objective) -> CohortCriterion:
    metric, mode = metric_mode(fields, objective)
    return CohortCriterion(
        name,
        metric,
        mode,
        study=fields.optional_string("study", max_length=63),
        percentile=fields.number("percentile", 0, 100, default=50.0),
        min_jobs=fields.integer("minJobs", 1, 10000, default=5),
        warmup_epochs=warmup_epochs(fields),
        compare=fields.choice("compare", ("best", "current"), "best"),
        reference=fields.choice("reference", ("runningAverage", "value"), "runningAverage"),
        include_stopped=fields.boolean("includeStopped", True),
    )


KIND = Kind("cohort", CohortCriterion, COHORT_FIELDS, parse, evaluate)
