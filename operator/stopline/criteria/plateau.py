"""Plateau (Ray TrialPlateauStopper family): converged when the last `window` values barely move."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.kind import Kind
from stopline.criteria.observation import Observation
from stopline.criteria.state import EpochState, fmt, status_line
from stopline.fields import Fields, Mode, Objective, metric_mode, smoothing, warmup_epochs


@dataclass(frozen=True)
class PlateauCriterion:
    """Converged: the relative change over the last `window` evaluations is below max_relative_change."""

    name: str
    metric: str
    mode: Mode
    max_relative_change: float
    window: int = 5
    warmup_epochs: int = 0
    smoothing: float | None = None


@dataclass
class PlateauState(EpochState):
    KIND: ClassVar[str] = "plateau"
    recent: list[float] = field(default_factory=list)


def relative_change(values: Sequence[float]) -> float:
    """(max - min) / |latest value|: how far the window moved relative to where it is; 0/0 counts as 0."""
    spread = max(values) - min(values)
    if spread == 0:
        return 0.0
    return spread / abs(values[-1]) if values[-1] != 0 else math.inf


def evaluate(
    criterion: PlateauCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    """The window may include warm-up values; decisions come only after warm-up. Direction does not matter."""
    state = PlateauState.load(raw)
    metric = ("smoothed " if criterion.smoothing else "") + criterion.metric
    for epoch, value in state.finite_values(observation.samples, criterion.metric):
        state.recent = [*state.recent, state.smooth(value, criterion.smoothing)][-criterion.window :]
        if epoch <= criterion.warmup_epochs or len(state.recent) < criterion.window:
            continue
        change = relative_change(state.recent)
        if change < criterion.max_relative_change:
            message = (
                f"{metric} moved {fmt(change * 100)}% over the last {criterion.window} epochs "
                f"({fmt(min(state.recent))}..{fmt(max(state.recent))}), below "
                f"{fmt(criterion.max_relative_change * 100)}%: converged"
            )
            state.stop = Decision(
                "Plateau", criterion.name, message, criterion.metric, state.recent[-1], epoch
            ).as_status()
            break
    if len(state.recent) < criterion.window:
        summary = f"{len(state.recent)}/{criterion.window} values of {metric} in the window"
    else:
        moved = fmt(relative_change(state.recent) * 100)
        summary = f"{metric} moved {moved}% over the last {criterion.window} epochs"
    return Outcome(
        state.dump(), state.decision, status_line(observation.samples, state, criterion.metric, summary)
    )


def parse(name: str, fields: Fields, objective: Objective) -> PlateauCriterion:
    metric, mode = metric_mode(fields, objective)
    return PlateauCriterion(
        name,
        metric,
        mode,
        max_relative_change=fields.number("maxRelativeChange", 0, exclusive=True),
        window=fields.integer("window", 2, 10000, default=5),
        warmup_epochs=warmup_epochs(fields),
        smoothing=smoothing(fields),
    )


KIND = Kind(
    "plateau",
    PlateauCriterion,
    ("metric", "mode", "window", "maxRelativeChange", "warmupEpochs", "smoothing"),
    parse,
    evaluate,
)
