"""The Prometheus series the operator scrapes (base units; epoch and step are values), and the window of
recent epochs it reads when epochs end faster than it scrapes (GET /epochs?after=N)."""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Info, generate_latest

from .control import StopFlag

WINDOW_EPOCHS = 1024  # epochs kept: at a 5 s read interval, epochs as short as 5 ms lose nothing
PAGE_EPOCHS = 256  # epochs in one /epochs answer; the operator asks again from the last one
MAX_METRICS = 64  # metrics kept per epoch: the window's memory and answers stay bounded


def _number(value: float) -> float | str:
    """JSON has no NaN: non-finite values travel as Prometheus spells them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


class EpochWindow:
    """The last WINDOW_EPOCHS epochs, each with the last values reported in it (the latest epoch may be
    still running, as on /metrics). Thread-safe: the loop writes, the HTTP thread reads."""

    def __init__(self, size: int = WINDOW_EPOCHS) -> None:
        self._size = size
        self._records: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, epoch: int, step: int, values: dict[str, float]) -> None:
        """Values reported in the same epoch add up: a loop may report train_loss every step and val_loss
        at the epoch's end."""
        if epoch < 1:
            return
        with self._lock:
            record = self._records.pop(epoch, {"epoch": epoch, "metrics": {}})
            metrics = record["metrics"]
            for name, value in values.items():
                if name in metrics or len(metrics) < MAX_METRICS:
                    metrics[name] = _number(value)
            record["step"] = step
            self._records[epoch] = record
            while len(self._records) > self._size:
                self._records.popitem(last=False)

    def finished(self, epoch: int, seconds: float) -> None:
        """The wall time of a completed epoch, known only when the next one starts."""
        with self._lock:
            if epoch in self._records:
                self._records[epoch]["seconds"] = seconds

    def tail(self, name: str, last: int) -> list[list[float]]:
        """[[epoch, value], ...] of the last `last` epochs that reported the metric as a number."""
        with self._lock:
            found = [
                [epoch, float(value)]
                for epoch, record in self._records.items()
                if isinstance(value := record["metrics"].get(name), int | float)
            ]
        return found[-last:]

    def snapshot(self, last: int) -> list[dict[str, Any]]:
        """Copies of the last `last` records, for the checkpoint manifest."""
        with self._lock:
            records = list(self._records.values())[-last:]
        return [{**record, "metrics": dict(record["metrics"])} for record in records]

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Records a resumed trainer's checkpoint carried: the operator may not have read them before the
        previous pod was taken away. Malformed ones (a manifest is a file on shared storage) are skipped."""
        with self._lock:
            for record in records:
                epoch, metrics = record.get("epoch"), record.get("metrics")
                if isinstance(epoch, int) and epoch >= 1 and isinstance(metrics, dict):
                    self._records[epoch] = {**record, "metrics": dict(list(metrics.items())[:MAX_METRICS])}
            ordered = sorted(self._records.items())[-self._size :]
            self._records = OrderedDict(ordered)

    def after(self, epoch: int) -> bytes:
        """JSON of the epochs after `epoch`, oldest first, at most PAGE_EPOCHS of them; `oldest` says how far
        back the window goes, so a reader knows which epochs are gone."""
        with self._lock:
            records = [record for number, record in self._records.items() if number > epoch][:PAGE_EPOCHS]
            oldest = next(iter(self._records), None)
        return json.dumps({"oldest": oldest, "epochs": records}).encode()


class TrainerMetrics:
    """A private registry, so a host process's default registry (and its collectors) never leaks in."""

    def __init__(self, flag: StopFlag) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.epoch = Gauge("stopline_epoch", "Current epoch (counted from 1).", registry=r)
        self.step = Gauge("stopline_step", "Current global optimiser step.", registry=r)
        self.metric = Gauge("stopline_metric", "Latest value of each reported metric.", ["name"], registry=r)
        self.metric_epoch = Gauge(
            "stopline_metric_epoch",
            "The epoch each metric was last reported in: its stopline_metric value belongs to that epoch.",
            ["name"],
            registry=r,
        )
        self.epoch_duration = Gauge(
            "stopline_epoch_duration_seconds", "Wall time of the last completed epoch.", registry=r
        )
        stop = Gauge(
            "stopline_stop_requested", "1 once a stop was requested (HTTP, signal, peer).", registry=r
        )
        # read at scrape time, so the signal handler never takes the gauge's lock
        stop.set_function(lambda: 1.0 if flag.is_set() else 0.0)
        self._checkpoint: Info | None = None
        self.epochs = EpochWindow()

    def observe(self, epoch: int, step: int, values: dict[str, float]) -> None:
        self.show(epoch, step, values)
        self.epochs.record(epoch, step, values)

    def show(self, epoch: int, step: int, values: dict[str, float]) -> None:
        """The gauges only: a resumed trainer shows where it is without adding to the epoch records."""
        self.epoch.set(epoch)
        self.step.set(step)
        for name, value in values.items():
            self.metric.labels(name=name).set(value)  # NaN/Inf exported as is: divergence criteria read them
            self.metric_epoch.labels(name=name).set(epoch)

    @property
    def checkpoint(self) -> Info:
        """Registered on first use (the first save): before it, no stopline_checkpoint_info series exists."""
        if self._checkpoint is None:
            help_text = "The last committed checkpoint."
            self._checkpoint = Info("stopline_checkpoint", help_text, registry=self.registry)
        return self._checkpoint

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
