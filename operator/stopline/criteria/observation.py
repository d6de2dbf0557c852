"""What the operator saw of a job at one instant: the input of the engine. Time is always an argument."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Literal

# Metric values by epoch (epochs count from 1): {epoch: {metric name: value}}. A mapping, so a sample that
# arrives twice is one sample; evaluators also remember the last epoch they consumed, so calling them
# again with the same (or older) epochs changes nothing.
Samples = Mapping[int, Mapping[str, float]]


@dataclass(frozen=True)
class CohortCurve:
    """Another job of the same study: its curve of `metric`, epoch -> value; non-finite values are dropped.

    stopped: it ended without succeeding (Stopped, Failed, Cancelled). completed: it ran to its end
    (Succeeded), so its last value is a final value; the forecast criterion learns only from those.

    Running averages, running minima and maxima (the best so far, either way) and the last epoch are
    precomputed once, because the cohort and forecast rules read them for every epoch of every job.
    """

    job: str
    metric: str
    values: Mapping[int, float]
    stopped: bool = False
    completed: bool = False
    running_average: Mapping[int, float] = field(init=False, repr=False, compare=False)
    running_min: Mapping[int, float] = field(init=False, repr=False, compare=False)
    running_max: Mapping[int, float] = field(init=False, repr=False, compare=False)
    last: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", {e: v for e, v in self.values.items() if math.isfinite(v)})
        epochs = sorted(self.values)
        sums = accumulate(self.values[epoch] for epoch in epochs)
        averages = {
            epoch: total / count
            for count, (epoch, total) in enumerate(zip(epochs, sums, strict=True), start=1)
        }
        object.__setattr__(self, "running_average", averages)
        values = [self.values[epoch] for epoch in epochs]
        object.__setattr__(self, "running_min", dict(zip(epochs, accumulate(values, min), strict=True)))
        object.__setattr__(self, "running_max", dict(zip(epochs, accumulate(values, max), strict=True)))
        object.__setattr__(self, "last", epochs[-1] if epochs else None)

    def best_so_far(self, mode: Literal["min", "max"]) -> Mapping[int, float]:
        return self.running_min if mode == "min" else self.running_max


@dataclass(frozen=True)
class Request:
    """A person's stop or cancel: where it came from (stopReason.criterion) and their words (may be empty)."""

    source: str
    words: str


@dataclass(frozen=True)
class Observation:
    """Everything the criteria may look at, as of `now` (seconds since the Unix epoch).

    started_at: when the trainer started (for budgets and staleness); None means "at the first call".
    gpus: GPUs the job holds (TrainingJobSpec.gpus), for maxGPUHours.
    step: the trainer's latest step, the progress marker for Stale and GPUIdle (None: unknown, the latest
    epoch is used). gpu_utilization: the busiest GPU's utilisation in percent from DCGM (None: unknown).
    promql: criterion name -> whether its query returned a non-empty result (absent: query failed).
    answered: whether the metric source answered with this job's report; a source that does not answer is
    a monitoring outage, not a hung trainer, so Stale does not count that time, unless `trainer_silent`.
    trainer_silent: the source is the trainer itself (direct scrape), it gave no report, and the apiserver
    answered that its pod still runs: the trainer stopped answering (frozen, a hung collective, its
    network cut, its node lost), so that time counts toward staleAfter.
    paused: a queue holds the job (Queued or Preempted): no pod runs, so the clocks of Stale, GPUIdle and
    PromQL start afresh when it runs again (budgets see it through started_at).
    stop / cancel: a person's requests, when made.
    cohort: the other jobs of the job's study; history: the jobs of earlier studies, by study (the forecast
    criterion's `history` names them).
    """

    now: float
    samples: Samples = field(default_factory=dict)
    started_at: float | None = None
    step: int | None = None
    gpus: int = 1
    gpu_utilization: float | None = None
    promql: Mapping[str, bool] = field(default_factory=dict)
    cohort: tuple[CohortCurve, ...] = ()
    history: Mapping[str, tuple[CohortCurve, ...]] = field(default_factory=dict)
    answered: bool = True
    trainer_silent: bool = False
    paused: bool = False
    stop: Request | None = None
    cancel: Request | None = None

    @property
    def latest_epoch(self) -> int | None:
        return max(self.samples, default=None)
