"""Building specs and observations for the unit tests, through the same parser users go through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stopline import api
from stopline.criteria import CohortCurve, Evaluation, Observation, evaluate


def spec(
    *criteria: Mapping[str, object], metric: str = "val_loss", mode: str = "min", **extra: object
) -> api.TrainingJobSpec:
    return api.parse_spec(
        {
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
            "objective": {"metric": metric, "mode": mode},
            "checkpoint": {"pvc": {"claimName": "ckpt"}},
            "criteria": list(criteria),
            **extra,
        }
    )


def run_curve(
    job: api.TrainingJobSpec,
    values: Sequence[float],
    metric: str = "val_loss",
    cohort: tuple[CohortCurve, ...] = (),
    seconds_per_epoch: float = 60.0,
    history: Mapping[str, tuple[CohortCurve, ...]] | None = None,
) -> tuple[Evaluation, list[Evaluation]]:
    """Feed one epoch per call like the operator does; stop at the first decision. Returns last and all."""
    states: Mapping[str, Mapping[str, object]] = {}
    calls: list[Evaluation] = []
    for epoch, value in enumerate(values, start=1):
        observation = Observation(
            now=epoch * seconds_per_epoch,
            samples={epoch: {metric: value}},
            started_at=0.0,
            cohort=cohort,
            history=history or {},
        )
        calls.append(evaluation := evaluate(job, states, observation))
        if evaluation.decision is not None:
            break
        states = evaluation.states
    return calls[-1], calls
