"""Forecast: the job's final value predicted from its own curve and the curves of the study's finished jobs.

Learning-curve extrapolation by analogy, in the manner of freeze-thaw and Vizier's performance-curve
stopping, kept cheap enough to refit on every new epoch of 1,000 jobs in pure Python. At epoch e the job's
curve is its best so far at e and at the four powers of two below e (e = 20: epochs 20, 16, 8, 4, 2). Its
neighbours are the finished jobs of the study (they ran to their end) that went past e and whose best-so-far
curves at those epochs were all within `similarity` times the spread of the finished jobs' best values at e
(their interquartile range; their range where most sit on one value, a metric at chance level): the jobs
that were like this one so far. Each neighbour, up to the `neighbours` nearest, gives one prediction: this
job's best so far plus how much that neighbour still moved after e. The predictions, each widened into a
normal distribution as wide as their standard deviation, are the forecast; the job stops when the chance it
gives the final value to beat the reference is below `probability`. A job like no finished one (fewer than
minJobs neighbours) is not forecast: nothing says how it ends.

The reference is the best final value of the ended jobs (reference=best, the sweep's best model so far), a
percentile of the finished jobs' final values counted from the best end (percentile), or a value (target).
Jobs stopped early teach nothing about how a curve ends, so only finished jobs predict.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.kind import Kind
from stopline.criteria.observation import CohortCurve, Observation
from stopline.criteria.percentile import percentile
from stopline.criteria.state import EpochState, fmt, is_better, status_line
from stopline.fields import LABEL_VALUE, Fields, Mode, Objective, SpecError, metric_mode, warmup_epochs

INTERVAL = (10.0, 90.0)  # the interval shown: 80% of the neighbours' predictions
_NORMAL = statistics.NormalDist()


ForecastReference = Literal["best", "percentile", "target"]


@dataclass(frozen=True)
class ForecastCriterion:
    """Learning-curve forecast: the job's final value predicted from how the study's finished jobs whose
    curves were like its own went on; stop when P(final beats the reference) < probability."""

    name: str
    metric: str
    mode: Mode
    study: str | None = None
    probability: float = 0.01
    reference: ForecastReference = "best"
    percentile: float = 10.0
    target: float | None = None
    similarity: float = 2.0
    neighbours: int = 20
    min_jobs: int = 5
    warmup_epochs: int = 0
    history: tuple[
        str, ...
    ] = ()  # earlier studies whose finished jobs are neighbours too, never the reference


@dataclass
class ForecastState(EpochState):
    KIND: ClassVar[str] = "forecast"
    best: float | None = None
    powers: dict[str, float] = field(default_factory=dict)  # best so far at epochs 1, 2, 4, 8, ... by epoch
    predicted: float | None = None
    low: float | None = None
    high: float | None = None
    probability: float | None = None
    peers: int = 0


@dataclass(frozen=True)
class Forecast:
    predicted: float
    low: float
    high: float
    probability: float
    peers: int


def checkpoints(epoch: int) -> tuple[int, ...]:
    """The epochs a curve is compared at: `epoch` and the four largest powers of two below it."""
    powers = []
    power = 1
    while power < epoch:
        powers.append(power)
        power *= 2
    return (epoch, *powers[-4:])


def reference(criterion: ForecastCriterion, cohort: tuple[CohortCurve, ...]) -> tuple[float, str] | None:
    """The value to beat and how to say it; None while no job of the study has ended."""
    if criterion.reference == "target":
        assert criterion.target is not None
        return criterion.target, "the target"
    best = criterion.reference == "best"
    finals = [
        curve.values[curve.last]
        for curve in cohort
        if curve.metric == criterion.metric
        and curve.last is not None
        and (curve.completed or (best and curve.stopped))
    ]
    if not finals:
        return None
    if best:
        pick = min if criterion.mode == "min" else max
        return pick(finals), f"the best final value of {len(finals)} ended jobs"
    q = criterion.percentile if criterion.mode == "min" else 100 - criterion.percentile
    return percentile(finals, q), (
        f"the {fmt(criterion.percentile)}th percentile of the final values of {len(finals)} finished jobs"
    )


def forecast(
    criterion: ForecastCriterion,
    cohort: tuple[CohortCurve, ...],
    epoch: int,
    mine: Mapping[int, float],
    beat: float,
) -> Forecast | None:
    """The final-value forecast of a job whose best so far at the checkpoints of `epoch` is `mine`; None
    when fewer than minJobs finished jobs were like it."""
    at = tuple(e for e in checkpoints(epoch) if e in mine)  # an epoch without the metric is no checkpoint
    curves = []
    for curve in cohort:
        if (
            curve.metric != criterion.metric
            or not curve.completed
            or curve.last is None
            or curve.last <= epoch
        ):
            continue
        best = curve.best_so_far(criterion.mode)
        if all(e in best for e in at):
            curves.append((best, curve.values[curve.last]))
    if len(curves) < criterion.min_jobs:
        return None
    levels = [best[epoch] for best, _ in curves]
    # the interquartile range; the whole range where most jobs sit on one value (a metric at chance level)
    spread = abs(percentile(levels, 75) - percentile(levels, 25)) or max(levels) - min(levels)
    reach = criterion.similarity * spread
    level = mine[epoch]
    near = sorted(
        (distance, level + final - best[epoch])
        for best, final in curves
        if (distance := max(abs(best[e] - mine[e]) for e in at)) <= reach
    )
    if len(near) < criterion.min_jobs:
        return None
    predictions = [prediction for _, prediction in near[: criterion.neighbours]]
    low, high = (percentile(predictions, q) for q in INTERVAL)
    return Forecast(
        percentile(predictions, 50.0),
        min(low, high),
        max(low, high),
        chance(predictions, beat, criterion.mode),
        len(predictions),
    )


def history_of(criteria: Iterable[object]) -> tuple[str, ...]:
    """The earlier studies the forecast criteria among `criteria` learn from (their `history`), each once."""
    named = (study for c in criteria if isinstance(c, ForecastCriterion) for study in c.history)
    return tuple(dict.fromkeys(named))


def evidence(criterion: ForecastCriterion, observation: Observation) -> tuple[CohortCurve, ...]:
    """The curves a forecast learns from: the study's, then the finished jobs of the earlier studies it
    names (`history`: a small sweep has few finished jobs of its own)."""
    earlier = (curve for study in criterion.history for curve in observation.history.get(study, ()))
    return observation.cohort + tuple(curve for curve in earlier if curve.completed)


def chance(predictions: list[float], beat: float, mode: Mode) -> float:
    """P(final beats `beat`) under the predictions smoothed into a mixture of normal distributions, one on
    each prediction, as wide as their standard deviation: the tail reaches past the best prediction, so a
    job like many peers keeps the chance of beating the best of them that their spread gives it."""
    spread = statistics.stdev(predictions) if len(predictions) > 1 else 0.0
    if spread == 0:
        return sum(is_better(value, beat, mode) for value in predictions) / len(predictions)
    sign = 1.0 if mode == "min" else -1.0
    return statistics.fmean(_NORMAL.cdf(sign * (beat - value) / spread) for value in predictions)


def evaluate(
    criterion: ForecastCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    state = ForecastState.load(raw)
    found = reference(criterion, observation.cohort)
    for epoch, value in state.finite_values(observation.samples, criterion.metric):
        if state.best is None or is_better(value, state.best, criterion.mode):
            state.best = value
        if epoch & (epoch - 1) == 0:  # a power of two: a later epoch's checkpoint
            state.powers = {**state.powers, str(epoch): state.best}
        if epoch <= criterion.warmup_epochs or found is None:
            continue
        mine = {int(e): v for e, v in state.powers.items()} | {epoch: state.best}
        result = forecast(criterion, evidence(criterion, observation), epoch, mine, found[0])
        state.peers = result.peers if result is not None else 0
        if result is None:
            continue
        state.predicted, state.low, state.high = result.predicted, result.low, result.high
        state.probability = result.probability
        if result.probability < criterion.probability:
            message = (
                f"forecast: {criterion.metric} would end near {fmt(result.predicted)} (80% of "
                f"{result.peers} finished jobs that were like it imply {fmt(result.low)} to "
                f"{fmt(result.high)}); the chance it beats {fmt(found[0])} ({found[1]}) is "
                f"{_percent(result.probability)}, below the {_percent(criterion.probability)} bound"
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


def _percent(probability: float) -> str:
    """A chance in words: 12.3%, or "under 0.1%" rather than a 0.0% that reads as impossible (a forecast
    from a few peers never makes it so)."""
    return "under 0.1%" if probability < 0.0005 else f"{probability:.1%}"


def _summary(criterion: ForecastCriterion, state: ForecastState, found: tuple[float, str] | None) -> str:
    if state.epoch <= criterion.warmup_epochs:
        return f"warm-up: forecasting from epoch {criterion.warmup_epochs + 1} on"
    if found is None:
        return "no job of the study has ended yet: nothing to beat"
    if state.peers == 0 or state.predicted is None or state.probability is None:
        return (
            f"fewer than {criterion.min_jobs} finished jobs were like this one by epoch {state.epoch}: "
            "no forecast"
        )
    assert state.low is not None and state.high is not None
    return (
        f"forecast {fmt(state.predicted)} at the end (80%: {fmt(state.low)} to {fmt(state.high)}, from "
        f"{state.peers} finished jobs like this one by epoch {state.epoch}); chance to beat {fmt(found[0])} "
        f"({found[1]}): {_percent(state.probability)}, bound {_percent(criterion.probability)}"
    )


FORECAST_FIELDS = (
    "metric",
    "mode",
    "study",
    "probability",
    "reference",
    "percentile",
    "target",
    "similarity",
    "neighbours",
    "minJobs",
    "warmupEpochs",
    "history",
)
MAX_NEIGHBOURS = 1000
MAX_HISTORY = 16  # earlier studies one forecast may learn from


def parse(name: str, fields: Fields, objective: Objective) -> ForecastCriterion:
    metric, mode = metric_mode(fields, objective)
    references: tuple[ForecastReference, ...] = ("best", "percentile", "target")
    reference = fields.choice("reference", references, "best")
    target = fields.optional_number("target")
    if reference == "target" and target is None:
        raise SpecError(fields.at("target"), "is required with reference target: the value to beat")
    return ForecastCriterion(
        name,
        metric,
        mode,
        study=fields.optional_string("study", max_length=63),
        probability=fields.number("probability", 0, 0.5, exclusive=True, default=0.01),
        reference=reference,
        percentile=fields.number("percentile", 0, 100, default=10.0),
        target=target,
        similarity=fields.number("similarity", 0, 100, exclusive=True, default=2.0),
        neighbours=fields.integer("neighbours", 1, MAX_NEIGHBOURS, default=20),
        min_jobs=fields.integer("minJobs", 1, 10000, default=5),
        warmup_epochs=warmup_epochs(fields),
        history=fields.strings("history", LABEL_VALUE, MAX_HISTORY, 63),
    )


KIND = Kind("forecast", ForecastCriterion, FORECAST_FIELDS, parse, evaluate)
