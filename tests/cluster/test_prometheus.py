"""Reading through a real Prometheus (spec.metrics.prometheus): the trainer's series, PromQL criteria and
GPU idleness from DCGM series, all from Debian's Prometheus scraping file_sd targets on 127.0.0.x."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from operatorharness import (
    SINGLE_NAME,
    WAIT_S,
    checkpoint_message,
    manifest,
    operator,
    phase_is,
    reserve_address,
    running_trainer,
    status,
    terminate,
)
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.prometheus import Prometheus, running_prometheus

pytestmark = pytest.mark.cluster


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    with running_prometheus(tmp_path / "prometheus") as server:
        yield server


def test_a_promql_criterion_stops_the_job_reading_everything_through_prometheus(
    plane: ControlPlane, namespace: str, prometheus: Prometheus
) -> None:
    query = f'stopline_metric{{name="val_loss",namespace="{namespace}"}} > 0.5'
    training_job = manifest(
        criteria=[{"name": "custom", "promql": {"query": query, "for": "2s"}}],
        metrics={"interval": "1s", "prometheus": {"url": prometheus.url}},
    )
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
        prometheus.add_trainer(f"{trainer.ip}:{trainer.port}", namespace, SINGLE_NAME, pod)
        trainer.report(1, 100, val_loss=0.3)
        wait_until(
            lambda: status(plane, namespace, SINGLE_NAME).get("progress", {}).get("epoch") == 1,
            WAIT_S,
            "epoch 1 read through Prometheus",
            details=prometheus.details,
        )
        assert status(plane, namespace, SINGLE_NAME)["phase"] == "Running"  # 0.3 is not > 0.5
        trainer.report(2, 200, val_loss=0.9)
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopping"), WAIT_S, "phase Stopping")
        reason = status(plane, namespace, SINGLE_NAME)["stopReason"]
        assert (reason["type"], reason["criterion"]) == ("PromQL", "custom")
        assert query in reason["message"]
        wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
        terminate(plane, namespace, pod, checkpoint_message(2, 200, "/ckpt/step-000200.pt"))
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")


def test_a_gpu_that_idles_without_progress_stops_the_job(
    plane: ControlPlane, namespace: str, prometheus: Prometheus
) -> None:
    """DCGM's utilisation series come from a stand-in exporter (no GPU here), through the real Prometheus."""
    training_job = manifest(
        criteria=[{"name": "idle", "gpuIdle": {"utilizationBelow": 5, "for": "3s"}}],
        metrics={"interval": "1s", "prometheus": {"url": prometheus.url}},
    )
    registry = CollectorRegistry()
    utilization = Gauge(
        "DCGM_FI_DEV_GPU_UTIL", "stand-in DCGM exporter", ["namespace", "pod", "gpu"], registry=registry
    )
    dcgm_ip, dcgm_port = reserve_address()
    exporter, thread = start_http_server(dcgm_port, dcgm_ip, registry)
    try:
        with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
            utilization.labels(namespace=namespace, pod=pod, gpu="0").set(2)
            prometheus.add_target(f"{dcgm_ip}:{dcgm_port}", {"job": "dcgm-exporter"})
            prometheus.add_trainer(f"{trainer.ip}:{trainer.port}", namespace, SINGLE_NAME, pod)
            trainer.report(1, 100, val_loss=1.0)  # and never another step
            wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopping"), WAIT_S, "phase Stopping")
            reason = status(plane, namespace, SINGLE_NAME)["stopReason"]
            assert (reason["type"], reason["criterion"], reason["value"]) == ("GPUIdle", "idle", 2)
            assert "below 5%" in reason["message"]
    finally:
        exporter.shutdown()
        exporter.server_close()
        thread.join(5)
