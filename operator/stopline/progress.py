"""What the operator remembers of a running job between status writes, and the status it writes. Pure.

A scrape every metrics interval, a status write only when a new epoch arrived (or a stop begins):
`JobMemory` holds the latest criteria state, curve and best in memory, seeded from the stored status,
so a restarted operator goes on from the last epoch written and loses no patience count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stopline.api import TrainingJobSpec
from stopline.criteria.decision import JSONState
from stopline.criteria.engine import Evaluation
from stopline.criteria.observation import Samples
from stopline.criteria.state import is_better
from stopline.lifecycle import resume_count
from stopline.metrics.exposition import TrainerReport

MAX_CURVE = 10_000  # status.curve's maxItems in the CRD
MAX_SHOWN_METRICS = 32
_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_:./-]{0,127}")


@dataclass
class JobMemory:
    """status.criteria states, curve and best as of the last scrape; `written_epoch` as of the last write."""

    states: dict[str, JSONState] = field(default_factory=dict)
    curve: list[float | None] = field(default_factory=list)
    best: dict[str, Any] | None = None
    written_epoch: int = 0
    fed_epoch: int = 0  # the last complete epoch given to the engine: a read past fed_epoch + 1 missed some
    complete_epoch: int = 0  # epochs up to here ran before a resume: complete, whatever the trainer reports
    epoch_seconds: float | None = None
    failures: int = 0  # scrapes failed in a row
    queue_read_at: float | None = None  # when the queue's words on a held job were last read
    checkpoint: Mapping[str, Any] | None = None  # status.checkpoint as last written
    answered_pod: str | None = None  # uid of the rank-0 pod whose /metrics last answered
    resumes: int = 0  # status.resumeCount when seeded: a resume since means seeding again
    restart_clocks: bool = False  # the next visit observes as if paused (Stale, GPUIdle and PromQL restart)

    def resumed(self) -> None:
        """Seeded at a resume: the epoch it stopped at was read whole, and the resumed trainers go on after
        their checkpoint, so their window of epochs starts after it."""
        self.complete_epoch = self.fed_epoch = max(self.fed_epoch, self.written_epoch)
        self.restart_clocks = True  # the next visit observes as if paused: Stale, GPUIdle and PromQL restart

    def in_progress(self, epoch: int) -> None:
        """The trainer reports `epoch` as the one it is in: its values may still come, so it is not fed
        yet; a resumed trainer that reports an earlier one (or none yet) unfeeds no epoch before its run."""
        self.fed_epoch = max(min(self.fed_epoch, epoch - 1), self.complete_epoch, 0)

    def wrote(self, fields: Mapping[str, Any]) -> None:
        """The status now shows these fields: remember the epoch and checkpoint it shows."""
        if "progress" in fields:
            self.written_epoch = fields["progress"]["epoch"]
        if "checkpoint" in fields:
            self.checkpoint = fields["checkpoint"]

    @classmethod
    def seed(cls, status: Mapping[str, Any]) -> JobMemory:
        criteria = status.get("criteria") or []
        written = int((status.get("progress") or {}).get("epoch") or 0)
        shown = status.get("checkpoint")
        return cls(
            resumes=resume_count(status),
            checkpoint=shown if isinstance(shown, Mapping) else None,
            states={entry["name"]: dict(entry.get("state") or {}) for entry in criteria if "name" in entry},
            curve=list(status.get("curve") or []),
            best=dict(status["best"]) if status.get("best") else None,
            written_epoch=written,
            fed_epoch=max(written - 1, 0),  # the epoch written was still running then
        )

    def record(self, spec: TrainingJobSpec, epochs: Samples, epoch_seconds: float | None = None) -> bool:
        """Take the epochs read (oldest first) into the curve and best; True when one is not written yet."""
        if epoch_seconds is not None:
            self.epoch_seconds = epoch_seconds
        objective = spec.objective
        for epoch in sorted(epochs):
            value = epochs[epoch].get(objective.metric)
            self.fed_epoch = max(self.fed_epoch, epoch)
            if not 1 <= epoch <= MAX_CURVE or value is None:
                continue
            if len(self.curve) < epoch:
                self.curve.extend([None] * (epoch - len(self.curve)))
            self.curve[epoch - 1] = value if math.isfinite(value) else None
            if math.isfinite(value) and (
                self.best is None or is_better(value, self.best["value"], objective.mode)
            ):
                self.best = {"metric": objective.metric, "value": value, "epoch": epoch}
        return max(epochs, default=0) > self.written_epoch


def progress_status(
    spec: TrainingJobSpec, memory: JobMemory, report: TrainerReport, evaluation: Evaluation, now: str
) -> dict[str, Any]:
    """progress, best, curve and criteria: the keys a new epoch changes (merge-patched, nothing else)."""
    status: dict[str, Any] = {
        "progress": {
            "epoch": report.epoch,
            "step": report.step,
            "metrics": shown_metrics(spec, report.metrics),
            "updatedAt": now,
        },
        "criteria": [criterion.as_status() for criterion in evaluation.criteria],
        "curve": memory.curve,
    }
    if memory.best is not None:
        status["best"] = memory.best
    return status


def shown_metrics(spec: TrainingJobSpec, metrics: Mapping[str, float]) -> dict[str, float | None]:
    """status.progress.metrics: the names the trainer chose are remote text, so the spec's own metrics
    come first, then other well-formed names in order, MAX_SHOWN_METRICS in all."""
    used = spec.watched_metrics
    names = [name for name in metrics if name in used]
    names += sorted(name for name in metrics if name not in used and _METRIC_NAME.fullmatch(name))
    return {name: _json_number(metrics[name]) for name in names[:MAX_SHOWN_METRICS]}


def _json_number(value: float) -> float | None:
    """JSON has no NaN: a non-finite metric shows as null in status.progress.metrics."""
    return value if math.isfinite(value) else None


def gpu_seconds_saved(spec: TrainingJobSpec, epoch: int, epoch_seconds: float | None) -> float | None:
    """GPU-seconds the epochs left to maxEpochs would have cost at the measured epoch time (None: unknown)."""
    if spec.max_epochs is None or epoch_seconds is None:
        return None
    return round(max(spec.max_epochs - epoch, 0) * epoch_seconds * spec.gpus, 1)
