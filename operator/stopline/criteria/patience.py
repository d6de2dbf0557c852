"""Patience (Keras/Lightning EarlyStopping): stop after `patience` evaluations without a real improvement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.kind import Kind
from stopline.criteria.observation import Observation
from stopline.criteria.state import EpochState, fmt, is_better, status_line
from stopline.fields import Fields, Mode, Objective, metric_mode, smoothing, warmup_epochs


@dataclass(frozen=True)
class PatienceCriterion:
    """Keras/Lightning EarlyStopping: stop after `patience` evaluations without an improvement > min_delta."""

    name: str
    metric: str
    mode: Mode
    patience: int = 3
    min_delta: float = 0.0
    min_delta_mode: Literal["absolute", "relative"] = "absolute"
    warmup_epochs: int = 0
    smoothing: float | None = None


@dataclass
class PatienceState(EpochState):
    KIND: ClassVar[str] = "patience"
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0


def improves(value: float, best: float, criterion: PatienceCriterion) -> bool:
    """Lightning's rule: better than the best by strictly more than min_delta (absolute, or x |best|)."""
    delta = criterion.min_delta * (abs(best) if criterion.min_delta_mode == "relative" else 1.0)
    return is_better(value + delta if criterion.mode == "min" else value - delta, best, criterion.mode)


def _delta_text(criterion: PatienceCriterion) -> str:
    if criterion.min_delta_mode == "relative":
        return f"{fmt(criterion.min_delta * 100)}% (relative)"
    return fmt(criterion.min_delta)


def evaluate(
    criterion: PatienceCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    """Warm-up epochs are ignored entirely (Keras start_from_epoch); non-finite values are skipped."""
    state = PatienceState.load(raw)
    metric = ("smoothed " if criterion.smoothing else "") + criterion.metric
    for epoch, value in state.finite_values(observation.samples, criterion.metric):
        current = state.smooth(value, criterion.smoothing)
        if epoch <= criterion.warmup_epochs:
            continue
        if state.best is None or improves(current, state.best, criterion):
            state.best, state.best_epoch, state.wait = current, epoch, 0
            continue
        state.wait += 1
        if state.wait >= criterion.patience:
            message = (
                f"{metric} {fmt(current)} has not improved on {fmt(state.best)} (epoch {state.best_epoch}) "
                f"by more than {_delta_text(criterion)} for {state.wait} epochs"
            )
            state.stop = Decision(
                "Patience", criterion.name, message, criterion.metric, current, epoch
            ).as_status()
            break
    if state.best is None:
        summary = f"waiting for {criterion.metric} after warm-up (epoch {criterion.warmup_epochs + 1} on)"
    else:
        summary = (
            f"best {metric} {fmt(state.best)} at epoch {state.best_epoch}; "
            f"{state.wait}/{criterion.patience} epochs without improvement"
        )
    return Outcome(
        state.dump(), state.decision, status_line(observation.samples, state, criterion.metric, summary)
    )


PATIENCE_FIELDS = ("metric", "mode", "patience", "minDelta", "minDeltaMode", "warmupEpochs", "smoothing")


def parse(name: str, fields: Fields, objective: Objective) -> PatienceCriterion:
    metric, mode = metric_mode(fields, objective)
    return PatienceCriterion(
        name,
        metric,
        mode,
        patience=fields.integer("patience", 1, 100000, default=3),
        min_delta=fields.number("minDelta", 0, 1_000_000_000_000, default=0.0),
        min_delta_mode=fields.choice("minDeltaMode", ("absolute", "relative"), "absolute"),
        warmup_epochs=warmup_epochs(fields),
        smoothing=smoothing(fields),
    )


KIND = Kind("patience", PatienceCriterion, PATIENCE_FIELDS, parse, evaluate)
