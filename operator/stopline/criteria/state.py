"""Evaluator state: small dataclasses kept as JSON in status.criteria[].state, and the epoch scan they share.

Every epoch-driven evaluator consumes only epochs after the last one it consumed, in ascending order, so
calling it again with the same or older samples changes nothing (the operator calls it every scrape).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from stopline.criteria.decision import Decision
from stopline.criteria.observation import Samples
from stopline.fields import Mode


def is_better(value: float, reference: float, mode: Mode) -> bool:
    """Strictly better in the metric's direction."""
    return value < reference if mode == "min" else value > reference


def fmt(value: float) -> str:
    """Numbers in messages: short, but enough digits to tell two values apart."""
    return f"{value:.6g}"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda match: "_" + match.group(1).lower(), name)


@dataclass
class State:
    """Base of every evaluator's state; `kind` guards against reading another kind's state after an edit."""

    KIND: ClassVar[str] = ""
    stop: dict[str, object] | None = None

    @classmethod
    def load(cls, raw: Mapping[str, object] | None) -> Self:
        """The stored state, or a fresh one when there is none or it belongs to another kind of criterion."""
        if not raw or raw.get("kind") != cls.KIND:
            return cls()
        names = {field.name for field in dataclasses.fields(cls)}
        try:
            known: dict[str, Any] = {_snake(key): value for key, value in raw.items() if _snake(key) in names}
            return cls(**known)
        except TypeError:
            return cls()

    def dump(self) -> dict[str, object]:
        return {"kind": self.KIND} | {_camel(key): value for key, value in dataclasses.asdict(self).items()}

    @property
    def decision(self) -> Decision | None:
        return Decision.from_json(self.stop) if self.stop is not None else None


@dataclass
class EpochState(State):
    """What the epoch-driven evaluators share: the scan position, the EMA, the non-finite values skipped."""

    epoch: int = 0
    ema: float | None = None
    non_finite: int = 0
    last_non_finite: int | None = None

    def skip_non_finite(self, epoch: int) -> None:
        self.non_finite += 1
        self.last_non_finite = epoch

    def finite_values(self, samples: Samples, metric: str) -> Iterator[tuple[int, float]]:
        """The finite values of epochs not consumed yet, oldest first, advancing the scan and counting the
        non-finite ones skipped; nothing once the criterion has fired, so a stop stays as it was decided."""
        if self.stop is not None:
            return
        for epoch, value in pending(samples, self.epoch, metric):
            self.epoch = epoch
            if math.isfinite(value):
                yield epoch, value
            else:
                self.skip_non_finite(epoch)

    def smooth(self, value: float, weight: float | None) -> float:
        """EMA with `weight` on the newest value; the first value starts the average."""
        self.ema = value if self.ema is None or weight is None else weight * value + (1 - weight) * self.ema
        return self.ema


WAITING = 8  # epochs kept waiting for peers; the oldest is dropped past this


@dataclass
class PeerWaitState(EpochState):
    """What the criteria that compare with the study's other jobs share (cohort, rungs): jobs of a sweep run
    side by side, so an epoch judged before minJobs peers reached it waits, with what it compared, and is
    judged again on each later call as the peers catch up."""

    waiting: list[list[float]] = field(default_factory=list)  # [epoch, what it compared, ...]

    def wait(self, entry: list[float]) -> None:
        self.waiting = [*self.waiting, entry][-WAITING:]

    def judge_waiting(self, judged_now: set[int], judge: Callable[[list[float]], bool]) -> None:
        """Judge the waiting epochs not judged on this call, oldest first, until one stops the job; those
        compared (`judge` returned True) stop waiting."""
        for entry in list(self.waiting):
            if self.stop is not None:
                break
            if int(entry[0]) not in judged_now and judge(entry):
                self.waiting.remove(entry)


def pending(samples: Samples, after: int, metric: str) -> Iterator[tuple[int, float]]:
    """The metric's values of the epochs after `after`, oldest first; epochs without it are left out."""
    for epoch in sorted(epoch for epoch in samples if epoch > after):
        value = samples[epoch].get(metric)
        if value is not None:
            yield epoch, float(value)


def status_line(samples: Samples, state: EpochState, metric: str, summary: str) -> str:
    """The line for status.criteria[].message: the summary, plus why the latest epoch was not used."""
    notes = [summary]
    latest = max(samples, default=None)
    if latest is not None and metric not in samples[latest]:
        seen = ", ".join(sorted(samples[latest])) or "nothing"
        notes.append(f"{metric} not reported at epoch {latest} (reported: {seen}); no decision on it")
    if state.non_finite:
        notes.append(f"skipped {state.non_finite} non-finite value(s), last at epoch {state.last_non_finite}")
    return "; ".join(notes)
