"""Parse one trainer pod's /metrics text (the trainer contract's series) into a `TrainerReport`.

Pure: the HTTP fetch lives beside it; this only reads text, so it is tested on the real trainer's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

EPOCH = "stopline_epoch"
STEP = "stopline_step"
METRIC = "stopline_metric"
EPOCH_SECONDS = "stopline_epoch_duration_seconds"
STOP_REQUESTED = "stopline_stop_requested"
CHECKPOINT_INFO = "stopline_checkpoint_info"


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


def parse_exposition(text: str) -> TrainerReport:
    """The contract's series out of one scrape; other series (process_*, python_*) are ignored."""
    values: dict[str, float] = {}
    metrics: dict[str, float] = {}
    checkpoint: dict[str, str] | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == METRIC and "name" in sample.labels:
                    metrics[sample.labels["name"]] = float(sample.value)
                elif sample.name == CHECKPOINT_INFO:
                    checkpoint = dict(sample.labels) or None  # an Info never set exports no labels
                else:
                    values[sample.name] = float(sample.value)
    except ValueError as error:
        raise ExpositionError(f"not Prometheus text format: {error}") from None
    missing = [name for name in (EPOCH, STEP) if name not in values]
    if missing:
        raise ExpositionError(f"no {' or '.join(missing)} series: is this a stopline trainer?")
    seconds = values.get(EPOCH_SECONDS)
    return TrainerReport(
        epoch=int(values[EPOCH]),
        step=int(values[STEP]),
        metrics=metrics,
        epoch_seconds=seconds if seconds is not None and math.isfinite(seconds) else None,
        stop_requested=values.get(STOP_REQUESTED, 0.0) >= 1.0,
        checkpoint=checkpoint,
    )
