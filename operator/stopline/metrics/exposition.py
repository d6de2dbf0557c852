"""Parse one trainer pod's /metrics text (the trainer contract's series) into a `TrainerReport`.

Pure: the HTTP fetch lives beside it; this only reads text, so it is tested on the real trainer's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from stopline.metrics.http import excerpt

EPOCH = "stopline_epoch"
STEP = "stopline_step"
METRIC = "stopline_metric"
METRIC_EPOCH = "stopline_metric_epoch"  # per metric: the epoch its value belongs to (older trainers: none)
EPOCH_SECONDS = "stopline_epoch_duration_seconds"
STOP_REQUESTED = "stopline_stop_requested"
CHECKPOINT_INFO = "stopline_checkpoint_info"
MAX_COUNT = 1 << 53  # epoch and step: integers a float holds exactly, and JSON and int64 in status hold


class ExpositionError(ValueError):
    """The text is not Prometheus exposition format, or lacks the trainer contract's series."""


@dataclass(frozen=True)
class TrainerReport:
    """One scrape of one rank: where it is, its latest metric values, and what it says of stopping."""

    epoch: int
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_seconds: float | None = None
    stop_requested: bool = False
    checkpoint: dict[str, str] | None = None
    metric_epochs: dict[str, int] = field(default_factory=dict)

    def by_epoch(self) -> dict[int, dict[str, float]]:
        """The values by the epoch they belong to. A validation metric reported at an epoch's end is still
        the latest value while the next epoch runs: it belongs to the epoch it was reported in, never to
        the one in progress (without stopline_metric_epoch, as from an older trainer, it is the latter)."""
        grouped: dict[int, dict[str, float]] = {self.epoch: {}} if self.epoch >= 1 else {}
        for name, value in self.metrics.items():
            epoch = self.metric_epochs.get(name, self.epoch)
            if 1 <= epoch <= self.epoch:
                grouped.setdefault(epoch, {})[name] = value
        return grouped


def parse_exposition(text: str) -> TrainerReport:
    """The contract's series out of one scrape; other series (process_*, python_*) are ignored."""
    values: dict[str, float] = {}
    metrics: dict[str, float] = {}
    metric_epochs: dict[str, float] = {}
    checkpoint: dict[str, str] | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == METRIC and "name" in sample.labels:
                    metrics[sample.labels["name"]] = float(sample.value)
                elif sample.name == METRIC_EPOCH and "name" in sample.labels:
                    metric_epochs[sample.labels["name"]] = float(sample.value)
                elif sample.name == CHECKPOINT_INFO:
                    checkpoint = dict(sample.labels) or None  # an Info never set exports no labels
                else:
                    values[sample.name] = float(sample.value)
    except Exception as error:  # hostile text: prometheus_client documents no exception types
        raise ExpositionError(f"not Prometheus text format: {excerpt(str(error))}") from None
    missing = [name for name in (EPOCH, STEP) if name not in values]
    if missing:
        raise ExpositionError(f"no {' or '.join(missing)} series: is this a stopline trainer?")
    seconds = values.get(EPOCH_SECONDS)
    return TrainerReport(
        epoch=_count(EPOCH, values[EPOCH]),
        step=_count(STEP, values[STEP]),
        metrics=metrics,
        epoch_seconds=seconds if seconds is not None and math.isfinite(seconds) else None,
        stop_requested=values.get(STOP_REQUESTED, 0.0) >= 1.0,
        checkpoint=checkpoint,
        metric_epochs=metric_epochs_of(metrics, metric_epochs),
    )


def metric_epochs_of(metrics: dict[str, float], epochs: dict[str, float]) -> dict[str, int]:
    """stopline_metric_epoch for the metrics that have a value; a sample that is not an epoch is left out."""
    found = {name: count(epochs[name]) for name in metrics if name in epochs}
    return {name: epoch for name, epoch in found.items() if epoch is not None}


def count(value: float) -> int | None:
    """`value` as an epoch or step: a whole number within 0 <= x < 2**53, else None (NaN, Inf, 1e300,
    -1 and 1.5 are no position a trainer can be at)."""
    if not math.isfinite(value) or not 0 <= value < MAX_COUNT or value != int(value):
        return None
    return int(value)


def _count(name: str, value: float) -> int:
    counted = count(value)
    if counted is None:
        raise ExpositionError(f"{name} is {value!r}: it must be a whole number >= 0 and < 2**53")
    return counted
