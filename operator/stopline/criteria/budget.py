"""Budget: stop when the run reached its epochs, its wall-clock time or its GPU-hours."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.kind import Kind
from stopline.criteria.observation import Observation
from stopline.criteria.state import State, fmt
from stopline.fields import MAX_EPOCHS, Duration, Fields, Objective, SpecError


@dataclass(frozen=True)
class BudgetCriterion:
    """Stop when any limit is reached: wall-clock since the trainer started, GPU-hours, epochs."""

    name: str
    max_duration: Duration | None = None
    max_gpu_hours: float | None = None
    max_epochs: int | None = None


@dataclass
class BudgetState(State):
    KIND: ClassVar[str] = "budget"
    started_at: float | None = None
    epoch: int = 0


def _hours(seconds: float) -> str:
    return f"{fmt(seconds / 3600)} h"


def evaluate(
    criterion: BudgetCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    """Time runs from observation.started_at (or the first call); GPU-hours = elapsed x observation.gpus."""
    state = BudgetState.load(raw)
    if observation.started_at is not None:
        state.started_at = observation.started_at
    elif state.started_at is None:
        state.started_at = observation.now
    state.epoch = max(state.epoch, observation.latest_epoch or 0)
    elapsed = max(observation.now - state.started_at, 0.0)
    gpu_hours = elapsed / 3600 * observation.gpus
    epoch = state.epoch or None
    if state.stop is None:
        decision: Decision | None = None
        if criterion.max_epochs is not None and state.epoch >= criterion.max_epochs:
            message = f"ran {state.epoch} epochs, the budget is maxEpochs {criterion.max_epochs}"
            decision = Decision("Budget", criterion.name, message, None, float(state.epoch), epoch)
        elif criterion.max_duration is not None and elapsed >= criterion.max_duration.seconds:
            message = f"ran {_hours(elapsed)}, the budget is maxDuration {criterion.max_duration.text}"
            decision = Decision("Budget", criterion.name, message, None, elapsed, epoch)
        elif criterion.max_gpu_hours is not None and gpu_hours >= criterion.max_gpu_hours:
            message = (
                f"used {fmt(gpu_hours)} GPU-hours ({observation.gpus} GPUs for {_hours(elapsed)}), "
                f"the budget is maxGPUHours {fmt(criterion.max_gpu_hours)}"
            )
            decision = Decision("Budget", criterion.name, message, None, gpu_hours, epoch)
        state.stop = decision.as_status() if decision is not None else None
    summary = f"used {_hours(elapsed)}, {fmt(gpu_hours)} GPU-hours, {state.epoch} epochs"
    return Outcome(state.dump(), state.decision, summary)


BUDGET_FIELDS = ("maxDuration", "maxGPUHours", "maxEpochs")


def parse(name: str, fields: Fields, objective: Objective) -> BudgetCriterion:
    """A budget has no metric: the objective is not read."""
    if not any(fields.has(key) for key in BUDGET_FIELDS):
        raise SpecError(fields.path, "set at least one of maxDuration, maxGPUHours, maxEpochs")
    return BudgetCriterion(
        name,
        max_duration=fields.optional_duration("maxDuration"),
        max_gpu_hours=fields.optional_number("maxGPUHours", 0, 100_000_000, exclusive=True),
        max_epochs=fields.optional_integer("maxEpochs", 1, MAX_EPOCHS),
    )


KIND = Kind("budget", BudgetCriterion, BUDGET_FIELDS, parse, evaluate)
