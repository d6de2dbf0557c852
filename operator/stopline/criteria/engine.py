"""The one entry point: run every criterion of a job, then pick the decision. Nothing else decides a stop."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from stopline.criteria import live
from stopline.criteria.decision import Decision, JSONState, Outcome
from stopline.criteria.kinds import BY_SPEC, Criterion
from stopline.criteria.observation import Observation
from stopline.fields import Duration


class _Metrics(Protocol):
    @property
    def stale_after(self) -> Duration: ...


class Spec(Protocol):
    """What the engine reads of a spec (stopline.api.TrainingJobSpec, which imports the registry)."""

    @property
    def criteria(self) -> Sequence[Criterion]: ...

    @property
    def metrics(self) -> _Metrics: ...


@dataclass(frozen=True)
class CriterionStatus:
    """One entry of status.criteria[]."""

    name: str
    state: JSONState
    message: str

    def as_status(self) -> dict[str, object]:
        return {"name": self.name, "state": dict(self.state), "message": self.message}


@dataclass(frozen=True)
class Evaluation:
    criteria: tuple[CriterionStatus, ...]
    decision: Decision | None

    @property
    def states(self) -> dict[str, JSONState]:
        return {criterion.name: criterion.state for criterion in self.criteria}


def _run(criterion: Criterion, observation: Observation, raw: JSONState | None) -> Outcome:
    return BY_SPEC[type(criterion)].evaluate(criterion, observation, raw)


def evaluate(spec: Spec, states: Mapping[str, JSONState], observation: Observation) -> Evaluation:
    """Run the criteria of spec (in order, then the implicit staleAfter) on what was observed.

    states: status.criteria[].state by name, as the previous call returned them (empty at first).
    The decision: cancel, then a manual stop, then the criterion that fired at the earliest epoch (several
    epochs can arrive in one call), ties going to the first in spec order. A criterion that fired keeps
    returning its decision, so a restarted operator decides the same.
    """
    outcomes: list[tuple[str, Outcome]] = [
        (criterion.name, _run(criterion, observation, states.get(criterion.name)))
        for criterion in spec.criteria
    ]
    stale = live.evaluate_stale(spec.metrics.stale_after, observation, states.get(live.STALE))
    outcomes.append((live.STALE, stale))
    statuses = tuple(CriterionStatus(name, outcome.state, outcome.message) for name, outcome in outcomes)
    return Evaluation(statuses, _choose(observation, [outcome.decision for _, outcome in outcomes]))


def _choose(observation: Observation, decisions: list[Decision | None]) -> Decision | None:
    epoch = observation.latest_epoch
    if observation.cancel is not None:
        cancel = observation.cancel
        return Decision("Cancelled", cancel.source, cancel.words or "cancelled", None, None, epoch)
    if observation.stop is not None:
        stop = observation.stop
        words = stop.words or "stopped with kubectl annotate"
        return Decision("Manual", stop.source, words, None, None, epoch)
    fired = [
        (decision.epoch if decision.epoch is not None else math.inf, index, decision)
        for index, decision in enumerate(decisions)
        if decision is not None
    ]
    return min(fired)[2] if fired else None
