"""Threshold (Lightning stopping_threshold): stop once the metric is strictly better than a target value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.kind import Kind
from stopline.criteria.observation import Observation
from stopline.criteria.state import EpochState, fmt, is_better, status_line
from stopline.fields import Fields, Mode, Objective, metric_mode, smoothing, warmup_epochs


@dataclass(frozen=True)
class ThresholdCriterion:
    """Lightning stopping_threshold: stop once the metric is strictly better than `value`."""

    name: str
    metric: str
    mode: Mode
    value: float
    warmup_epochs: int = 0
    smoothing: float | None = None


@dataclass
class ThresholdState(EpochState):
    KIND: ClassVar[str] = "threshold"
    last: float | None = None


def evaluate(
    criterion: ThresholdCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    state = ThresholdState.load(raw)
    metric = ("smoothed " if criterion.smoothing else "") + criterion.metric
    relation = "below" if criterion.mode == "min" else "above"
    for epoch, value in state.finite_values(observation.samples, criterion.metric):
        state.last = current = state.smooth(value, criterion.smoothing)
        if epoch > criterion.warmup_epochs and is_better(current, criterion.value, criterion.mode):
            message = (
                f"{metric} {fmt(current)} is {relation} the target {fmt(criterion.value)} at epoch {epoch}"
            )
            state.stop = Decision(
                "Threshold", criterion.name, message, criterion.metric, current, epoch
            ).as_status()
            break
    summary = f"target {metric} {relation} {fmt(criterion.value)}" + (
        f"; last {fmt(state.last)} at epoch {state.epoch}" if state.last is not None else ""
    )
    return Outcome(
        state.dump(), state.decision, status_line(observation.samples, state, criterion.metric, summary)
    )


def parse(name: str, fields: Fields, objective: Objective) -> ThresholdCriterion:
    metric, mode = metric_mode(fields, objective)
    return ThresholdCriterion(
        name,
        metric,
        mode,
        fields.number("value"),
        warmup_epochs=warmup_epochs(fields),
        smoothing=smoothing(fields),
    )


KIND = Kind(
    "threshold",
    ThresholdCriterion,
    ("metric", "mode", "value", "warmupEpochs", "smoothing"),
    parse,
    evaluate,
)
