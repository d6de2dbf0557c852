"""Forecast: the job's final value predicted from its own curve and the study's finished jobs' curves.

Learning-curve extrapolation in the manner of freeze-thaw and Vizier's performance-curve stopping, kept
cheap enough to refit on every new epoch of 1,000 jobs in pure Python: at epoch e the job is at its best so
far, L. The `neighbours` finished jobs of the study (ran to their end) whose value at e was nearest to L
say how far a job at that level went on: each gives one prediction L + (its final value - its value at e).
The chance that this job's final value beats the reference is Laplace's rule of succession over those
predictions, (beating + 1) / (predictions + 2), so a handful of peers can never make it certain; the job
stops when that chance is below `probability`. The reference is the best final value of the ended jobs
(reference=best), a percentile of their final values counted from the best end (percentile), or a value
(target). Jobs stopped early teach nothing about how a curve ends, so only completed jobs predict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from stopline.api import ForecastCriterion
from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.observation import CohortCurve, Observation
from stopline.criteria.percentile import percentile
from stopline.criteria.state import EpochState, fmt, is_better, status_line

INTERVAL = (10.0, 90.0)  # the interval shown: 80% of the neighbours' predictions


@dataclass
class ForecastState(EpochState):
    KIND: ClassVar[str] = "forecast"
    best: float | None = None
    predicted: float | None = None
    low: float | None = None
    high: float | None = None
    probability: float | None = None
    reference: float | None = None
    peers: int = 0


@dataclass(frozen=True)
class Forecast:
    predicted: float
    low: float
    high: float
    probability: float
    peers: int


def reference(criterion: ForecastCriterion, cohort: tuple[CohortCurve, ...]) -> tuple[float, str] | None:
    """The value to beat and how to say it; None while no job of the study has ended."""
    if criterion.reference == "target":
        assert criterion.target is not None
        return criterion.target, "the target"
    finals = [
        curve.values[max(curve.values)]
        for curve in cohort
        if curve.metric == criterion.metric and (curve.completed or curve.stopped) and curve.values
    ]
    if not finals:
        return None
    if criterion.reference == "best":
        pick = min if criterion.mode == "min" else max
        return pick(finals), f"the best final value of {len(finals)} ended jobs"
    q = criterion.percentile if criterion.mode == "min" else 100 - criterion.percentile
    return percentile(finals, q), (
        f"the {fmt(criterion.percentile)}th percentile of the final values of {len(finals)} ended jobs"
    )


def forecast(
    criterion: ForecastCriterion, cohort: tuple[CohortCurve, ...], epoch: int, level: float, beat: float
) -> Forecast | None:
    """The final-value forecast of a job at `level` by `epoch`; None with fewer than minJobs to learn from."""
    moves: list[
        tuple[float, float]
    ] = []  # (distance of the peer's value at epoch from level, its move after)
    for curve in cohort:
        if curve.metric != criterion.metric or not curve.completed or epoch not in curve.values:
            continue
        last = max(curve.values)
        if last > epoch:
            at = curve.values[epoch]
            moves.append((abs(at - level), curve.values[last] - at))
    if len(moves) < criterion.min_jobs:
        return None
    moves.sort()
    predictions = [level + move for _, move in moves[: criterion.neighbours]]
    beating = sum(is_better(value, beat, criterion.mode) for value in predictions)
    low, high = (percentile(predictions, q) for q in INTERVAL)
    return Forecast(
        percentile(predictions, 50.0),
        min(low, high),
        max(low, high),
        (beating + 1) / (len(predictions) + 2),
        len(predictions),
    )


def evaluate(
    criterion: ForecastCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    state = ForecastState.load(raw)
    found = reference(criterion, observation.cohort)
    for epoch, value in state.finite_values(observation.samples, criterion.metric):
        if state.best is None or is_better(value, state.best, criterion.mode):
            state.best = value
        if epoch <= criterion.warmup_epochs or found is None:
            continue
        result = forecast(criterion, observation.cohort, epoch, state.best, found[0])
        if result is None:
            state.peers = 0
            continue
        state.predicted, state.low, state.high = result.predicted, result.low, result.high
        state.probability, state.reference, state.peers = result.probability, found[0], result.peers
        if result.probability < criterion.probability:
            message = (
                f"forecast: {criterion.metric} would end near {_words(result)}; the chance it beats "
                f"{fmt(found[0])} ({found[1]}) is {result.probability:.1%}, under the "
                f"{criterion.probability:.1%} bound (best {fmt(state.best)} at epoch {epoch})"
            )
            state.stop = Decision(
                "Forecast", criterion.name, message, criterion.metric, state.best, epoch
            ).as_status()
            break
    return Outcome(
        state.dump(),
        state.decision,
        status_line(observation.samples, state, criterion.metric, _summary(criterion, state, found)),
    )


def _words(result: Forecast) -> str:
    return (
        f"{fmt(result.predicted)} (80% of {result.peers} similar finished jobs imply "
        f"{fmt(result.low)} to {fmt(result.high)})"
    )


def _summary(criterion: ForecastCriterion, state: ForecastState, found: tuple[float, str] | None) -> str:
    if state.epoch <= criterion.warmup_epochs:
        return f"warm-up: forecasting from epoch {criterion.warmup_epochs + 1} on"
    if found is None:
        return "no job of the study has ended yet: nothing to beat"
    if state.peers == 0 or state.predicted is None or state.probability is None:
        return f"fewer than {criterion.min_jobs} finished jobs went past epoch {state.epoch}: no forecast yet"
    assert state.low is not None and state.high is not None
    return (
        f"forecast {fmt(state.predicted)} at the end (80%: {fmt(state.low)} to {fmt(state.high)}, "
        f"{state.peers} similar finished jobs); chance to beat {fmt(found[0])} ({found[1]}): "
        f"{state.probability:.1%}, bound {criterion.probability:.1%}"
    )
