"""Rungs: asynchronous successive halving in stop mode (ASHA; Li et al. 2020, Ray Tune's ASHAScheduler,
Optuna's SuccessiveHalvingPruner).

Rung epochs are r, r*eta, r*eta^2, ... (r = minEpochs, eta = reductionFactor). At a rung the job goes on only
when it is in the best 1/eta of the jobs that reached that rung: its value there (compare=current, as Ray
and Optuna do) or its best so far (compare=best) against the other jobs' values at the rung. The cut is
the percentile Ray computes (cut=quantile: numpy's linear method) or Optuna's and the ASHA paper's count
(cut=rank: the best floor(n/eta) of the n jobs at the rung, this one counted, at least one; stricter when
n/eta is not whole). Between rungs nothing is judged, so a job is compared a handful of times in its life.
A rung judged without minJobs peers waits, as in the cohort rule, and is judged again when the peers
catch up.
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
from stopline.fields import MAX_EPOCHS, Fields, Mode, Objective, metric_mode


@dataclass(frozen=True)
class RungsCriterion:
    """Asynchronous successive halving in stop mode (Ray Tune's ASHAScheduler, Optuna's
    SuccessiveHalvingPruner): at rung epochs r, r*eta, r*eta^2, ... a job goes on only in the best 1/eta
    of the study's jobs that reached the rung."""

    name: str
    metric: str
    mode: Mode
    study: str | None = None
    min_epochs: int = 1
    reduction_factor: int = 3
    min_jobs: int = 5
    compare: Literal["best", "current"] = "best"
    cut: Literal["quantile", "rank"] = "quantile"
    include_stopped: bool = True


@dataclass
class RungsState(PeerWaitState):
    KIND: ClassVar[str] = "rungs"
    best: float | None = None
    cut: float | None = None
    rung: int | None = None
    jobs: int = 0  # waiting entries: [rung epoch, value compared]


def is_rung(epoch: int, criterion: RungsCriterion) -> bool:
    """Whether epoch is r * eta^k for some k >= 0."""
    rung = criterion.min_epochs
    while rung < epoch:
        rung *= criterion.reduction_factor
    return rung == epoch


def next_rung(epoch: int, criterion: RungsCriterion) -> int:
    rung = criterion.min_epochs
    while rung <= epoch:
        rung *= criterion.reduction_factor
    return rung


def _peers(criterion: RungsCriterion, cohort: tuple[CohortCurve, ...], epoch: int) -> list[float]:
    return [
        curve.values[epoch]
        for curve in cohort
        if curve.metric == criterion.metric
        and epoch in curve.values
        and (criterion.include_stopped or not curve.stopped)
    ]


def _judge(
    criterion: RungsCriterion, state: RungsState, cohort: tuple[CohortCurve, ...], epoch: int, mine: float
) -> bool:
    """Compare at rung `epoch`; False when fewer than minJobs peers reached it (nothing compared)."""
    values = _peers(criterion, cohort, epoch)
    state.jobs, state.rung = len(values), epoch
    if len(values) < criterion.min_jobs:
        state.cut = None
        return False
    if criterion.cut == "rank":
        ranked = sorted([*values, mine], reverse=criterion.mode == "max")
        kept = max(1, len(ranked) // criterion.reduction_factor)
        cut = ranked[kept - 1]
        among = f"among the best {kept} of the {len(ranked)} jobs that reached it, this one counted"
    else:
        keep = 100 / criterion.reduction_factor
        cut = percentile(values, keep if criterion.mode == "min" else 100 - keep)
        among = f"in the best 1/{criterion.reduction_factor} of the {len(values)} other jobs that reached it"
    state.cut = cut
    if is_better(cut, mine, criterion.mode):
        what = "best" if criterion.compare == "best" else "value"
        message = (
            f"{criterion.metric} {what} {fmt(mine)} at rung epoch {epoch} is not {among} "
            f"(the cut is {fmt(cut)})"
        )
        state.stop = Decision("Rungs", criterion.name, message, criterion.metric, mine, epoch).as_status()
    return True


def evaluate(
    criterion: RungsCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    state = RungsState.load(raw)
    judged_now = set()
    for epoch, value in state.finite_values(observation.samples, criterion.metric):
        if state.best is None or is_better(value, state.best, criterion.mode):
            state.best = value
        if not is_rung(epoch, criterion):
            continue
        judged_now.add(epoch)
        mine = state.best if criterion.compare == "best" else value
        if not _judge(criterion, state, observation.cohort, epoch, mine):
            state.wait([epoch, mine])
        if state.stop is not None:
            break
    state.judge_waiting(
        judged_now, lambda entry: _judge(criterion, state, observation.cohort, int(entry[0]), entry[1])
    )
    best = fmt(state.best if state.best is not None else math.nan)
    upcoming = f"next rung at epoch {next_rung(state.epoch, criterion)}"
    if state.cut is not None:
        cut = fmt(state.cut)
        summary = f"best {best}; at rung {state.rung} the cut was {cut} from {state.jobs} jobs; {upcoming}"
    elif state.rung is not None:
        summary = (
            f"{state.jobs} other jobs reached rung {state.rung}; {criterion.min_jobs} needed to compare; "
            f"{upcoming}"
        )
    else:
        summary = f"best {best}; {upcoming}"
    return Outcome(
        state.dump(), state.decision, status_line(observation.samples, state, criterion.metric, summary)
    )


RUNGS_FIELDS = (
    "metric",
    "mode",
    "study",
    "minEpochs",
    "reductionFactor",
    "minJobs",
    "compare",
    "cut",
    "includeStopped",
)


def parse(name: str, fields: Fields, objective: Objective) -> RungsCriterion:
    metric, mode = metric_mode(fields, objective)
    return RungsCriterion(
        name,
        metric,
        mode,
        study=fields.optional_string("study", max_length=63),
        min_epochs=fields.integer("minEpochs", 1, MAX_EPOCHS, default=1),
        reduction_factor=fields.integer("reductionFactor", 2, 100, default=3),
        min_jobs=fields.integer("minJobs", 1, 10000, default=5),
        compare=fields.choice("compare", ("best", "current"), "best"),
        cut=fields.choice("cut", ("quantile", "rank"), "quantile"),
        include_stopped=fields.boolean("includeStopped", True),
    )


KIND = Kind("rungs", RungsCriterion, RUNGS_FIELDS, parse, evaluate)
