"""The whole story, as a user lives it: apply a TrainingJob, the operator runs real torch trainers (local
processes of the local kubelet), reads their metrics, decides, stops them, and the weights it reports in
status.checkpoint load back into the example's model.

Each test is one scenario of the end-to-end issue. Trainers run ~0.5 s epochs on CPU; every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from e2e.support import (
    CLAIM,
    DEADLINE_S,
    PATIENCE,
    epoch_reached,
    finish,
    load_weights,
    terminated_pods,
    training_job,
)
from operatorharness import apply, condition, event_posted, events, operator, pods
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet
from stopline_local.prometheus import Prometheus, running_prometheus
from stopline_local.s3server import running_s3_server
from trainer.support import assert_reproduces_outputs, verify_blob

pytestmark = pytest.mark.e2e

EPOCH_S = ("--steps-per-epoch", "10", "--sleep-per-step", "0.05")  # ~0.5 s an epoch on a shared core


def example(
    name: str,
    criteria: Sequence[dict[str, Any]] = (),
    epochs: int = 60,
    trainer_args: Sequence[str] = (),
    replicas: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    """The example trainer as a TrainingJob read every second, with these criteria and spec keys."""
    job = training_job(name, replicas, args=("--epochs", str(epochs), *EPOCH_S, *trainer_args))
    job["spec"].update(maxEpochs=epochs, criteria=list(criteria), **spec)
    job["spec"]["metrics"]["interval"] = "1s"
    return job


def weights_load_back(kubelet: LocalKubelet, namespace: str, stopped: dict[str, Any]) -> None:
    """status.checkpoint names the file on the claim; its bytes match and the model gives its outputs."""
    name = stopped["metadata"]["name"]
    load_weights(stopped["status"]["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / name)


def test_patience_stops_a_real_trainer_and_its_weights_load_back(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(story, namespace, example("mlp", [PATIENCE]))
    stopped = finish(story, kubelet, namespace, "mlp")
    status = stopped["status"]
    assert status["phase"] == "Stopped", status
    assert (status["stopReason"]["type"], status["stopReason"]["criterion"]) == ("Patience", "plateau")
    assert status["checkpoint"]["epoch"] < 60
    assert status["best"]["metric"] == "val_loss" and status["best"]["value"] > 0
    assert condition(stopped, "Finished")["reason"] == "CheckpointSaved"
    weights_load_back(kubelet, namespace, stopped)
    wait_until(event_posted(story, namespace, "mlp", "CheckpointSaved", "Normal"), DEADLINE_S, "an Event")
    reasons = [event["reason"] for event in events(story, namespace, "mlp")]
    assert {"Running", "Stopping", "CheckpointSaved"} <= set(reasons)


@pytest.mark.parametrize(
    ("criterion", "trainer_args", "reason"),
    [
        pytest.param({"name": "good", "threshold": {"value": 0.002}}, (), "Threshold", id="threshold"),
        pytest.param(
            {"name": "diverged", "divergence": {"metric": "train_loss", "nonFinite": True}},
            ("--fault", "nan", "--fault-epoch", "3"),
            "NonFinite",
            id="nan",
        ),
        pytest.param({"name": "budget", "budget": {"maxDuration": "4s"}}, (), "Budget", id="budget"),
    ],
)
def test_a_criterion_stops_the_trainer_with_its_reason(
    story: ControlPlane,
    namespace: str,
    kubelet: LocalKubelet,
    criterion: dict[str, Any],
    trainer_args: tuple[str, ...],
    reason: str,
) -> None:
    apply(story, namespace, example("mlp", [criterion], trainer_args=trainer_args))
    stopped = finish(story, kubelet, namespace, "mlp")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    assert stopped["status"]["stopReason"]["type"] == reason
    if reason != "NonFinite":  # a NaN-poisoned model saves NaN weights: they load, but reproduce nothing
        weights_load_back(kubelet, namespace, stopped)


def test_kubectl_annotate_stop_keeps_the_weights_and_says_why(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(story, namespace, example("mlp"))
    epoch_reached(story, namespace, "mlp", 2)
    story.kubectl("annotate", "tj", "mlp", "-n", namespace, "stopline.dev/stop=looks good")
    stopped = finish(story, kubelet, namespace, "mlp")
    assert stopped["status"]["phase"] == "Stopped"
    assert (stopped["status"]["stopReason"]["type"], stopped["status"]["stopReason"]["message"]) == (
        "Manual",
        "looks good",
    )
    weights_load_back(kubelet, namespace, stopped)


def test_cancel_kills_the_trainer_and_saves_nothing(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(story, namespace, example("mlp"))
    epoch_reached(story, namespace, "mlp", 2)
    story.kubectl("annotate", "tj", "mlp", "-n", namespace, "stopline.dev/cancel=wrong data")
    cancelled = finish(story, kubelet, namespace, "mlp")
    assert cancelled["status"]["phase"] == "Cancelled"
    assert "checkpoint" not in cancelled["status"]
    wait_until(lambda: not pods(story, namespace, "mlp"), DEADLINE_S, "the trainer pod gone")
    assert condition(cancelled, "Finished")["message"] == "cancelled: wrong data; nothing was saved"


def test_dry_run_trains_to_the_end_and_records_where_it_would_have_stopped(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(
        story,
        namespace,
        example(
            "mlp",
            [PATIENCE],
            epochs=12,
            trainer_args=("--sleep-per-step", "0.1"),
            stopPolicy={"dryRun": True},
        ),
    )
    finished = finish(story, kubelet, namespace, "mlp")
    status = finished["status"]
    assert status["phase"] == "Succeeded", status
    would = status["dryRun"]["wouldStopAt"]
    assert (would["type"], would["criterion"]) == ("Patience", "plateau")
    assert would["epoch"] < 12 and "stopReason" not in status


def test_two_ranks_stop_at_the_same_step_with_one_checkpoint(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(story, namespace, example("ddp", replicas=2))
    epoch_reached(story, namespace, "ddp", 2)
    story.kubectl("annotate", "tj", "ddp", "-n", namespace, "stopline.dev/stop=enough")
    stopped = finish(story, kubelet, namespace, "ddp")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    weights_load_back(kubelet, namespace, stopped)
    ranks = terminated_pods(story, namespace, "ddp", 2)  # rank 1 may report its exit after rank 0's manifest
    reports = [json.loads(state["message"]) for state in ranks]
    assert [state["exitCode"] for state in ranks] == [0, 0]
    manifest = json.loads(
        (kubelet.claim_folder(namespace, CLAIM) / "runs" / "ddp" / "last.json").read_bytes()
    )
    assert manifest["worldSize"] == 2 and reports[0]["step"] == reports[1]["step"] == manifest["step"]
    assert stopped["status"]["checkpoint"]["step"] == reports[0]["step"]


def test_a_trainer_that_ignores_post_stop_gets_sigterm_and_still_saves(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(story, namespace, example("deaf", trainer_args=("--fault", "ignore-stop")))
    epoch_reached(story, namespace, "deaf", 1)
    story.kubectl("annotate", "tj", "deaf", "-n", namespace, "stopline.dev/stop=enough")
    stopped = finish(story, kubelet, namespace, "deaf")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    assert "StopNotAcknowledged" in {event["reason"] for event in events(story, namespace, "deaf", "Warning")}
    weights_load_back(kubelet, namespace, stopped)


def test_a_trainer_that_crashes_fails_the_training_job_with_the_reason(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply(
        story,
        namespace,
        example("crash", [PATIENCE], trainer_args=("--fault", "crash", "--fault-epoch", "2")),
    )
    failed = finish(story, kubelet, namespace, "crash")
    assert failed["status"]["phase"] == "Failed", failed["status"]
    finished = condition(failed, "Finished")
    assert finished["reason"] == "BackoffLimitExceeded", finished
    wait_until(event_posted(story, namespace, "crash", "BackoffLimitExceeded"), DEADLINE_S, "a Warning Event")


def test_an_operator_killed_mid_training_resumes_and_stops_once(
    plane: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    with ExitStack() as first:
        first.enter_context(operator(namespace))
        apply(plane, namespace, example("mlp", [PATIENCE]))
        epoch_reached(plane, namespace, "mlp", 2)
    # the first operator is gone while the trainer keeps training
    with operator(namespace):
        stopped = finish(plane, kubelet, namespace, "mlp")
        wait_until(event_posted(plane, namespace, "mlp", "CheckpointSaved", "Normal"), DEADLINE_S, "an Event")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    jobs = json.loads(plane.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(jobs) == 1
    saved = [event for event in events(plane, namespace, "mlp") if event["reason"] == "CheckpointSaved"]
    assert len(saved) == 1
    weights_load_back(kubelet, namespace, stopped)


@pytest.fixture
def prometheus(kubelet: LocalKubelet, tmp_path: Path) -> Iterator[Prometheus]:
    """Debian's Prometheus scraping the trainer pods through the local kubelet's file_sd targets."""
    with running_prometheus(tmp_path / "prometheus") as server:
        kubelet.prometheus = server
        try:
            yield server
        finally:
            kubelet.prometheus = None


def test_metrics_read_through_prometheus_stop_the_trainer(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet, prometheus: Prometheus
) -> None:
    job = example("mlp", [PATIENCE])
    job["spec"]["metrics"]["prometheus"] = {"url": prometheus.url}  # the pods are no longer scraped
    apply(story, namespace, job)
    stopped = finish(story, kubelet, namespace, "mlp")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    assert stopped["status"]["stopReason"]["type"] == "Patience"
    weights_load_back(kubelet, namespace, stopped)


def test_a_sweep_of_four_stops_the_job_worse_than_the_median(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    """Three runs that learn and one whose learning rate is hopeless: the cohort rule stops only that one.

    Epochs of ~2 s, so the operator (reading every second) sees every epoch of every job."""
    cohort = {"name": "median", "cohort": {"minJobs": 3, "percentile": 50, "warmupEpochs": 1}}
    slow = ("--sleep-per-step", "0.2")
    for name, lr, epochs in (
        ("lr-a", "3e-3", 6),
        ("lr-b", "3e-3", 6),
        ("lr-c", "3e-3", 6),
        ("lr-bad", "1e-7", 60),
    ):
        job = example(name, [cohort], epochs=epochs, trainer_args=("--lr", lr, *slow))
        job["metadata"]["labels"] = {"stopline.dev/study": "sweep"}
        apply(story, namespace, job)
    ended = {name: finish(story, kubelet, namespace, name) for name in ("lr-bad", "lr-a", "lr-b", "lr-c")}
    assert ended["lr-bad"]["status"]["phase"] == "Stopped", ended["lr-bad"]["status"]
    assert ended["lr-bad"]["status"]["stopReason"]["type"] == "Cohort"
    assert ended["lr-bad"]["status"]["checkpoint"]["epoch"] < 60
    assert [ended[name]["status"]["phase"] for name in ("lr-a", "lr-b", "lr-c")] == ["Succeeded"] * 3


def test_the_checkpoint_goes_to_a_real_s3_server(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet, tmp_path: Path
) -> None:
    with running_s3_server(tmp_path) as s3:
        s3.client().create_bucket(Bucket="ckpts")
        credentials = {key: s3.env()[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        story.kubectl(
            "create", "secret", "generic", "s3-credentials", "-n", namespace,
            *(f"--from-literal={key}={value}" for key, value in credentials.items()),
        )  # fmt: skip
        job = example("s3", checkpoint={"objectStore": {
            "uri": "s3://ckpts/runs/s3", "endpoint": s3.endpoint, "region": s3.env()["AWS_REGION"],
            "credentialsSecret": "s3-credentials",
        }})  # fmt: skip
        apply(story, namespace, job)
        epoch_reached(story, namespace, "s3", 2)
        story.kubectl("annotate", "tj", "s3", "-n", namespace, "stopline.dev/stop=enough")
        stopped = finish(story, kubelet, namespace, "s3")
        checkpoint = stopped["status"]["checkpoint"]
        assert checkpoint["uri"].startswith("s3://ckpts/runs/s3/"), checkpoint
        verified = condition(stopped, "CheckpointVerified")  # the operator's HEAD found it, with its size
        assert (verified["status"], verified["reason"]) == ("True", "ObjectVerified"), verified
        key = checkpoint["uri"].removeprefix("s3://ckpts/")
        blob = s3.client().get_object(Bucket="ckpts", Key=key)["Body"].read()
        assert_reproduces_outputs(verify_blob(blob, checkpoint))
