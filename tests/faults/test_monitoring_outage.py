"""A monitoring outage is a condition, never a stop (review H4): Prometheus is killed for longer than
staleAfter while two jobs read through it, then started again on the same port."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from faults.support import holds, metrics_available, progress_at, prometheus_on_port
from operatorharness import (
    WAIT_S,
    checkpoint_message,
    event_posted,
    manifest,
    operator,
    phase_is,
    running_trainer,
    status,
    stop_recorded,
    terminate,
)
from stopline_local.controlplane import ControlPlane, free_port, wait_until
from stopline_local.prometheus import Prometheus

pytestmark = pytest.mark.faults

STALE_AFTER_S = 6
URI = "/stopline/checkpoints/runs/{name}/step-000300.pt"


def test_prometheus_down_longer_than_stale_after_is_a_condition_and_the_jobs_stop_normally_after(
    plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    metrics = {
        "interval": "1s",
        "staleAfter": f"{STALE_AFTER_S}s",
        "prometheus": {"url": f"http://127.0.0.1:{port}"},
    }
    good_enough = {"name": "good", "threshold": {"metric": "val_accuracy", "mode": "max", "value": 0.95}}
    jobs = {
        "alpha": manifest("alpha", criteria=[], metrics=dict(metrics)),
        "beta": manifest("beta", criteria=[good_enough], metrics=dict(metrics)),
    }
    with ExitStack() as stack, ExitStack() as first_prometheus:
        prometheus = first_prometheus.enter_context(prometheus_on_port(tmp_path / "before", port))
        stack.enter_context(operator(namespace))
        trainers = {
            name: stack.enter_context(running_trainer(plane, namespace, job)) for name, job in jobs.items()
        }

        def watch(prometheus_now: Prometheus) -> None:
            for name, (trainer, pod) in trainers.items():
                prometheus_now.add_trainer(f"{trainer.ip}:{trainer.port}", namespace, name, pod)

        watch(prometheus)
        for trainer, _ in trainers.values():
            trainer.report(1, 100, val_loss=1.0, val_accuracy=0.5)
        for name in jobs:
            wait_until(progress_at(plane, namespace, name, 1), WAIT_S, f"{name}: epoch 1 through Prometheus")

        first_prometheus.close()  # killed: every query is refused from now on
        killed_at = time.monotonic()
        for trainer, _ in trainers.values():  # the trainers go on training meanwhile
            trainer.report(2, 200, val_loss=0.9, val_accuracy=0.6)
        for name in jobs:
            down = wait_until(
                metrics_available(plane, namespace, name, "False"), WAIT_S, f"{name}: MetricsAvailable=False"
            )
            assert down["reason"] == "ScrapeFailed"
            assert f"127.0.0.1:{port}" in down["message"]
            wait_until(
                event_posted(plane, namespace, name, "ScrapeFailed"), WAIT_S, f"{name}: a Warning Event"
            )
        outage = 2 * STALE_AFTER_S - (time.monotonic() - killed_at)
        holds(
            lambda: all(status(plane, namespace, name)["phase"] == "Running" for name in jobs),
            outage,
            f"both jobs Running {2 * STALE_AFTER_S} s without Prometheus (staleAfter {STALE_AFTER_S}s)",
        )

        prometheus = stack.enter_context(prometheus_on_port(tmp_path / "after", port))
        watch(prometheus)
        for name in jobs:
            wait_until(
                progress_at(plane, namespace, name, 2), WAIT_S, f"{name}: epoch 2 once Prometheus is back"
            )
            wait_until(
                metrics_available(plane, namespace, name, "True"), WAIT_S, f"{name}: MetricsAvailable=True"
            )

        alpha, alpha_pod = trainers["alpha"]
        plane.kubectl("annotate", "tj", "alpha", "-n", namespace, "stopline.dev/stop=enough")
        wait_until(lambda: alpha.stop_reason == "enough", WAIT_S, "alpha: POST /stop")
        beta, beta_pod = trainers["beta"]
        beta.report(3, 300, val_loss=0.8, val_accuracy=0.97)
        wait_until(lambda: beta.stop_reason, WAIT_S, "beta: POST /stop for its threshold")
        for name in jobs:
            stop_recorded(plane, namespace, name)
        for name, pod, epoch in (("alpha", alpha_pod, 2), ("beta", beta_pod, 3)):
            terminate(plane, namespace, pod, checkpoint_message(epoch, epoch * 100, URI.format(name=name)))
            wait_until(phase_is(plane, namespace, name, "Stopped"), WAIT_S, f"{name}: phase Stopped")

    stopped = {name: status(plane, namespace, name) for name in jobs}
    assert (stopped["alpha"]["stopReason"]["type"], stopped["beta"]["stopReason"]["type"]) == (
        "Manual",
        "Threshold",
    )
    for name, current in stopped.items():
        assert current["checkpoint"]["uri"] == URI.format(name=name)
