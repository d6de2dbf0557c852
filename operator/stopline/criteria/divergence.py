"""Divergence (Lightning divergence_threshold + check_finite): strictly worse than a bound, or NaN/Inf."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.kind import Kind
from stopline.criteria.observation import Observation
from stopline.criteria.state import EpochState, fmt, is_better, pending, status_line
from stopline.fields import Fields, Mode, Objective, SpecError, metric_mode, warmup_epochs


@dataclass(frozen=True)
class DivergenceCriterion:
    """Lightning divergence_threshold and check_finite: strictly worse than `value`, or NaN/Inf."""

    name: str
    metric: str
    mode: Mode
    value: float | None = None
    non_finite: bool = True
    warmup_epochs: int = 0


@dataclass
class DivergenceState(EpochState):
    KIND: ClassVar[str] = "divergence"
    last: float | None = None


def _decide(criterion: DivergenceCriterion, epoch: int, value: float) -> Decision | None:
    if not math.isfinite(value):
        message = f"{criterion.metric} is {value} at epoch {epoch}: the run diverged"
        # A NaN value cannot go into status (JSON); the message carries it.
        return Decision("NonFinite", criterion.name, message, criterion.metric, None, epoch)
    if criterion.value is not None and is_better(criterion.value, value, criterion.mode):
        relation = "above" if criterion.mode == "min" else "below"
        message = (
            f"{criterion.metric} {fmt(value)} is {relation} the divergence bound {fmt(criterion.value)} "
            f"at epoch {epoch}"
        )
        return Decision("Divergence", criterion.name, message, criterion.metric, value, epoch)
    return None


def evaluate(
    criterion: DivergenceCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    """With nonFinite false, NaN/Inf values are skipped (and counted in the state), as elsewhere."""
    state = DivergenceState.load(raw)
    for epoch, value in (
        pending(observation.samples, state.epoch, criterion.metric) if state.stop is None else ()
    ):
        state.epoch = epoch
        if not math.isfinite(value) and not criterion.non_finite:
            state.skip_non_finite(epoch)
            continue
        state.last = value if math.isfinite(value) else state.last
        decision = _decide(criterion, epoch, value) if epoch > criterion.warmup_epochs else None
        if decision is not None:
            state.stop = decision.as_status()
            break
    watched = ["NaN/Inf"] if criterion.non_finite else []
    if criterion.value is not None:
        watched.insert(0, f"{'above' if criterion.mode == 'min' else 'below'} {fmt(criterion.value)}")
    summary = f"watching {criterion.metric} for {' or '.join(watched)}" + (
        f"; last {fmt(state.last)} at epoch {state.epoch}" if state.last is not None else ""
    )
    return Outcome(
        state.dump(), state.decision, status_line(observation.samples, state, criterion.metric, summary)
    )


def parse(name: str, fields: Fields, objective: Objective) -> DivergenceCriterion:
    metric, mode = metric_mode(fields, objective)
    value = fields.optional_number("value")
    non_finite = fields.boolean("nonFinite", True)
    if value is None and not non_finite:
        raise SpecError(
            fields.path, "set value, or keep nonFinite true; otherwise this criterion can never fire"
        )
    return DivergenceCriterion(name, metric, mode, value, non_finite, warmup_epochs(fields))


KIND = Kind(
    "divergence",
    DivergenceCriterion,
    ("metric", "mode", "value", "nonFinite", "warmupEpochs"),
    parse,
    evaluate,
)
