"""The Prometheus series the operator scrapes (DESIGN.md names; base units; epoch and step are values)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Info, generate_latest

from .control import StopFlag


class TrainerMetrics:
    """A private registry, so a host process's default registry (and its collectors) never leaks in."""

    def __init__(self, flag: StopFlag) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.epoch = Gauge("stopline_epoch", "Current epoch (counted from 1).", registry=r)
        self.step = Gauge("stopline_step", "Current global optimiser step.", registry=r)
        self.metric = Gauge("stopline_metric", "Latest value of each reported metric.", ["name"], registry=r)
        self.epoch_duration = Gauge(
            "stopline_epoch_duration_seconds", "Wall time of the last completed epoch.", registry=r
        )
        stop = Gauge(
            "stopline_stop_requested", "1 once a stop was requested (HTTP, signal, peer).", registry=r
        )
        # read at scrape time, so the signal handler never takes the gauge's lock
        stop.set_function(lambda: 1.0 if flag.is_set() else 0.0)
        self._checkpoint: Info | None = None

    def observe(self, epoch: int, step: int, values: dict[str, float]) -> None:
        self.epoch.set(epoch)
        self.step.set(step)
        for name, value in values.items():
            self.metric.labels(name=name).set(value)  # NaN/Inf exported as is: divergence criteria read them

    @property
    def checkpoint(self) -> Info:
        """Registered on first use (the first save): before it, no stopline_checkpoint_info series exists."""
        if self._checkpoint is None:
            help_text = "The last committed checkpoint."
            self._checkpoint = Info("stopline_checkpoint", help_text, registry=self.registry)
        return self._checkpoint

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
