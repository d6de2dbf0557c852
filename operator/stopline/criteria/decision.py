"""What an evaluator returns: a stop decision (or none) and the state to store for the next call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

ReasonType = Literal[
    "Patience",
    "Threshold",
    "Divergence",
    "NonFinite",
    "Plateau",
    "Budget",
    "Cohort",
    "Rungs",
    "Forecast",
    "GPUIdle",
    "PromQL",
    "Stale",
    "Manual",
    "Cancelled",
]
REASON_TYPES: tuple[ReasonType, ...] = get_args(ReasonType)

JSONState = Mapping[str, object]


@dataclass(frozen=True)
class Decision:
    """A decision to stop the job; `None` in its place means "go on". Maps onto status.stopReason."""

    type: ReasonType
    criterion: str
    message: str
    metric: str | None = None
    value: float | None = None
    epoch: int | None = None

    def as_status(self) -> dict[str, object]:
        """The fields of status.stopReason that the engine knows (the operator adds `at`)."""
        fields = {"type": self.type, "criterion": self.criterion, "message": self.message}
        extra = {"metric": self.metric, "value": self.value, "epoch": self.epoch}
        return fields | {key: value for key, value in extra.items() if value is not None}

    @classmethod
    def from_json(cls, raw: Mapping[str, object]) -> Decision:
        reason = raw["type"]
        if reason not in REASON_TYPES:
            raise ValueError(f"unknown reason type {reason!r}")
        value = raw.get("value")
        epoch = raw.get("epoch")
        metric = raw.get("metric")
        return cls(
            type=reason,
            criterion=str(raw["criterion"]),
            message=str(raw["message"]),
            metric=str(metric) if metric is not None else None,
            value=float(value) if isinstance(value, int | float) else None,
            epoch=int(epoch) if isinstance(epoch, int) else None,
        )


@dataclass(frozen=True)
class Outcome:
    """One criterion after one call: new JSON state, decision, and a line for status.criteria[].message."""

    state: JSONState
    decision: Decision | None
    message: str
