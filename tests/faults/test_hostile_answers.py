"""Hostile answers on the read path (review H1, H2, H5, M2, M6): a trainer whose /metrics serves garbage,
and a Prometheus whose answer holds a poisoned series. Each shows as MetricsAvailable=False on its own
job with a short message, and the operator goes on reading, deciding and stopping every other job."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from faults.support import (
    LEAK,
    MESSAGE_MAX,
    HostileTrainer,
    StandInPrometheus,
    metrics_available,
    operator_watching,
    progress_at,
    start_pod,
    trainer_series,
)
from operatorharness import (
    WAIT_S,
    StandInTrainer,
    checkpoint_message,
    events,
    manifest,
    operator,
    phase_is,
    reserve_address,
    running_trainer,
    status,
    stop_recorded,
    terminate,
)
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.prometheus import running_prometheus

pytestmark = pytest.mark.faults

FAST = {"interval": "1s"}
GARBAGE = ("nan-epoch", "inf-epoch", "not-prometheus", "huge", "slow", "redirect")


def assert_short(message: str) -> None:
    """A message built from a remote answer: bounded, and the remote text in it only a short excerpt."""
    assert len(message) < MESSAGE_MAX, message
    assert LEAK * 31 not in message, message  # 124 characters of it: more than an excerpt


def test_a_trainer_serving_garbage_shows_metrics_unavailable_and_the_operator_keeps_working(
    plane: ControlPlane, namespace: str
) -> None:
    with ExitStack() as stack:
        stack.enter_context(operator(namespace))
        healthy, _ = stack.enter_context(
            running_trainer(plane, namespace, manifest("healthy", criteria=[], metrics=dict(FAST)))
        )
        hostile = HostileTrainer(reserve_address(), redirect_to=f"http://{healthy.ip}:{healthy.port}/metrics")
        stack.callback(hostile.close)
        pod = start_pod(
            plane, namespace, manifest("hostile", criteria=[], metrics=dict(FAST)), (hostile.ip, hostile.port)
        )
        messages = {}
        for epoch, garbage in enumerate(GARBAGE, start=1):
            hostile.mode, hostile.epoch = "good", epoch
            healthy.report(10 + epoch, 1000 + epoch, val_loss=7.0)  # what the hostile job never reports
            wait_until(progress_at(plane, namespace, "hostile", epoch), WAIT_S, f"hostile: epoch {epoch}")
            wait_until(
                metrics_available(plane, namespace, "hostile", "True"), WAIT_S, "MetricsAvailable=True"
            )
            hostile.mode = garbage
            unavailable = wait_until(
                metrics_available(plane, namespace, "hostile", "False"),
                WAIT_S,
                f"MetricsAvailable=False ({garbage})",
            )
            messages[garbage] = unavailable["message"]
            wait_until(
                progress_at(plane, namespace, "healthy", 10 + epoch), WAIT_S, "healthy: its epoch meanwhile"
            )
            current = status(plane, namespace, "hostile")
            assert current["phase"] == "Running"
            assert current["progress"]["epoch"] == epoch  # nothing of the garbage (or of the redirect target)
            assert current["progress"]["metrics"]["val_loss"] == 0.5

        plane.kubectl("annotate", "tj", "hostile", "-n", namespace, "stopline.dev/stop=enough")
        wait_until(lambda: hostile.authorizations, WAIT_S, "hostile: POST /stop despite its /metrics")
        stop_recorded(plane, namespace, "hostile")
        terminate(plane, namespace, pod, checkpoint_message(5, 500, "/ckpt/hostile.pt"))
        wait_until(phase_is(plane, namespace, "hostile", "Stopped"), WAIT_S, "hostile: phase Stopped")

    for message in messages.values():
        assert_short(message)
    assert "redirect" in messages["redirect"]
    warnings = [
        e["message"] for e in events(plane, namespace, "hostile", "Warning") if e["reason"] == "ScrapeFailed"
    ]
    assert len(warnings) >= len(GARBAGE)
    for message in warnings:
        assert_short(message)
    assert status(plane, namespace, "hostile")["checkpoint"]["uri"] == "/ckpt/hostile.pt"


Report = Callable[[StandInTrainer, dict[str, str], int], None]  # the victim reports an epoch; job -> its pod


def poisoned_series_story(
    plane: ControlPlane, tenant_a: str, tenant_b: str, url: str, poisoned_at: tuple[str, int], report: Report
) -> None:
    """Two tenants' jobs read through one Prometheus URL, tenant_a's series poisoned. The operator is
    restarted once both run, so its first query asks for both jobs at once (review H1: the restart met
    the poisoned series again): tenant_b's job is still read, decided and stopped by annotation."""
    metrics = {"interval": "1s", "prometheus": {"url": url}}
    with ExitStack() as stack:
        with operator_watching(tenant_a, tenant_b):
            poisoned_pod = start_pod(
                plane, tenant_a, manifest("poisoned", criteria=[], metrics=dict(metrics)), poisoned_at
            )
            victim, pod = stack.enter_context(
                running_trainer(plane, tenant_b, manifest("victim", criteria=[], metrics=dict(metrics)))
            )
        pods = {"poisoned": poisoned_pod, "victim": pod}
        report(victim, pods, 1)
        stack.enter_context(operator_watching(tenant_a, tenant_b))
        wait_until(progress_at(plane, tenant_b, "victim", 1), WAIT_S, "tenant b: epoch 1 read")
        report(victim, pods, 2)
        wait_until(progress_at(plane, tenant_b, "victim", 2), WAIT_S, "tenant b: epoch 2 read")
        poisoned = wait_until(
            metrics_available(plane, tenant_a, "poisoned", "False"),
            WAIT_S,
            "tenant a: MetricsAvailable=False",
        )
        assert_short(poisoned["message"])
        assert status(plane, tenant_a, "poisoned")["phase"] == "Running"
        plane.kubectl("annotate", "tj", "victim", "-n", tenant_b, "stopline.dev/stop=enough")
        wait_until(lambda: victim.stop_reason == "enough", WAIT_S, "tenant b: POST /stop")
        stop_recorded(plane, tenant_b, "victim")
        terminate(plane, tenant_b, pod, checkpoint_message(2, 200, "/ckpt/victim.pt"))
        wait_until(phase_is(plane, tenant_b, "victim", "Stopped"), WAIT_S, "tenant b: phase Stopped")
    assert status(plane, tenant_b, "victim")["checkpoint"]["uri"] == "/ckpt/victim.pt"


def test_a_nan_epoch_series_in_prometheus_fails_only_its_job_and_another_tenant_is_still_stopped(
    plane: ControlPlane, namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    """The real Prometheus scrapes a trainer that exports stopline_epoch NaN, and answers it as "NaN"."""
    with running_prometheus(tmp_path / "prometheus") as prometheus, ExitStack() as stack:
        poisoned = HostileTrainer(reserve_address(), mode="nan-epoch")
        stack.callback(poisoned.close)

        def report(victim: StandInTrainer, pods: dict[str, str], epoch: int) -> None:
            prometheus.add_trainer(f"{poisoned.ip}:{poisoned.port}", namespace, "poisoned", pods["poisoned"])
            prometheus.add_trainer(f"{victim.ip}:{victim.port}", other_namespace, "victim", pods["victim"])
            victim.report(epoch, epoch * 100, val_loss=1.0 / epoch)
            wait_until(
                lambda: (
                    prometheus.query(f'stopline_epoch{{stopline_job="victim"}} == {epoch}')
                    and prometheus.query('stopline_epoch{stopline_job="poisoned"}')
                ),
                WAIT_S,
                "both series in Prometheus, one of them NaN",
                details=prometheus.details,
            )

        address = (poisoned.ip, poisoned.port)
        poisoned_series_story(plane, namespace, other_namespace, prometheus.url, address, report)


def test_a_prometheus_series_without_value_fails_only_its_job_and_another_tenant_is_still_stopped(
    plane: ControlPlane, namespace: str, other_namespace: str
) -> None:
    """A stand-in Prometheus: a real one never answers a series without a value."""
    stand_in = StandInPrometheus(reserve_address())
    try:

        def report(victim: StandInTrainer, pods: dict[str, str], epoch: int) -> None:
            labels = {
                "namespace": namespace,
                "stopline_job": "poisoned",
                "pod": pods["poisoned"],
                "rank": "0",
            }
            no_value = [{"metric": {"__name__": "stopline_epoch", **labels}}]  # "value" missing
            poisoned = trainer_series(namespace, "poisoned", pods["poisoned"], "NaN")
            good = trainer_series(other_namespace, "victim", pods["victim"], epoch, val_loss=1.0 / epoch)
            stand_in.result = no_value + poisoned + good

        poisoned_series_story(plane, namespace, other_namespace, stand_in.url, reserve_address(), report)
    finally:
        stand_in.close()
