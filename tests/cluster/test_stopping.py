"""The stop protocol against the real apiserver and Job controller, with the trainer's real endpoint.

Each test plays a trainer: it reports epochs on the stand-in's /metrics (the real stopline_trainer
endpoint on 127.0.0.x), waits for the operator to read each one, and plays the kubelet's part of the
stop (the pod ends with rank 0's manifest as its termination message).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from contextlib import ExitStack
from typing import Any

import pytest

from operatorharness import (
    RUNNING_AND_READY,
    SINGLE_NAME,
    WAIT_S,
    StandInTrainer,
    apply,
    checkpoint_message,
    condition,
    control_token,
    epoch_read,
    event_posted,
    events,
    exists,
    get,
    manifest,
    operator,
    phase_is,
    pods,
    reserve_address,
    running_trainer,
    set_pod_status,
    status,
    stop_recorded,
    terminate,
)
from stopline.api import parse_spec
from stopline.replay import Curve, replay_job
from stopline_local.controlplane import ControlPlane, wait_until

pytestmark = pytest.mark.cluster

FAST = {"interval": "1s"}
URI = "/stopline/checkpoints/runs/resnet-lr3e-4/step-000300.pt"


def play_epochs(
    plane: ControlPlane, namespace: str, trainer: StandInTrainer, epochs: list[dict[str, float]]
) -> int:
    """Report epochs one by one, each once the operator has read the previous; stop at phase Stopping.

    Returns the last epoch reported. A stop must come: running out of epochs fails the test.
    """
    for epoch, values in enumerate(epochs, start=1):
        trainer.report(epoch, epoch * 100, **values)

        wait_until(epoch_read(plane, namespace, epoch), WAIT_S, f"the operator reading epoch {epoch}")
        if status(plane, namespace, SINGLE_NAME).get("phase") == "Stopping":
            return epoch
    raise AssertionError(f"no stop after {len(epochs)} epochs: {status(plane, namespace, SINGLE_NAME)}")


def finish_with_checkpoint(plane: ControlPlane, namespace: str, pod: str, epoch: int) -> dict[str, Any]:
    """The trainer saved and exited 0 with its manifest; the operator must conclude Stopped."""
    terminate(plane, namespace, pod, checkpoint_message(epoch, epoch * 100, URI))
    wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
    return dict(get(plane, namespace, "tj", SINGLE_NAME))


CRITERIA = [
    pytest.param(
        {"name": "plateau", "patience": {"patience": 2}},
        [{"val_loss": 1.0}, {"val_loss": 1.0}, {"val_loss": 1.0}, {"val_loss": 1.0}],
        "Patience",
        id="patience",
    ),
    pytest.param(
        {"name": "good", "threshold": {"metric": "val_accuracy", "mode": "max", "value": 0.9}},
        [{"val_loss": 1.0, "val_accuracy": 0.5}, {"val_loss": 0.5, "val_accuracy": 0.95}],
        "Threshold",
        id="threshold",
    ),
    pytest.param(
        {"name": "diverged", "divergence": {"metric": "train_loss", "value": 10.0}},
        [{"val_loss": 1.0, "train_loss": 2.0}, {"val_loss": 1.0, "train_loss": 20.0}],
        "Divergence",
        id="divergence",
    ),
    pytest.param(
        {"name": "diverged", "divergence": {"metric": "train_loss", "nonFinite": True}},
        [{"val_loss": 1.0, "train_loss": 2.0}, {"val_loss": 1.0, "train_loss": math.nan}],
        "NonFinite",
        id="nan",
    ),
    pytest.param(
        {"name": "converged", "plateau": {"window": 3, "maxRelativeChange": 0.01}},
        [{"val_loss": 1.0}] * 6,
        "Plateau",
        id="plateau",
    ),
]


@pytest.mark.parametrize(("criterion", "epochs", "reason"), CRITERIA)
def test_a_criterion_met_stops_the_trainer_and_the_checkpoint_lands_in_status(
    plane: ControlPlane,
    namespace: str,
    criterion: dict[str, Any],
    epochs: list[dict[str, float]],
    reason: str,
) -> None:
    training_job = manifest(criteria=[criterion], metrics=dict(FAST))
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
        last = play_epochs(plane, namespace, trainer, epochs)
        wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
        stopping = stop_recorded(plane, namespace)
        assert stopping["stopReason"]["type"] == reason
        assert stopping["stopReason"]["criterion"] == criterion["name"]
        assert stopping["stopReason"]["message"] == trainer.stop_reason
        assert condition({"status": stopping}, "StopRequested")["reason"] == reason
        stopped = finish_with_checkpoint(plane, namespace, pod, last)
        wait_until(event_posted(plane, namespace, SINGLE_NAME, "CheckpointSaved", "Normal"), WAIT_S, "Event")
    assert stopped["status"]["checkpoint"]["uri"] == URI
    assert stopped["status"]["checkpoint"]["epoch"] == last
    assert condition(stopped, "Finished")["reason"] == "CheckpointSaved"
    assert stopped["status"]["progress"]["epoch"] == last
    assert len(stopped["status"]["curve"]) == last
    assert "Stopping" in {event["reason"] for event in events(plane, namespace, SINGLE_NAME, "Normal")}


def test_budget_and_staleness_stop_on_time_not_on_epochs(plane: ControlPlane, namespace: str) -> None:
    """maxDuration counts from when every rank was up; a trainer that never advances is Stale."""
    training_job = manifest(
        criteria=[{"name": "budget", "budget": {"maxDuration": "2s"}}], metrics=dict(FAST)
    )
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
        trainer.report(1, 100, val_loss=1.0)
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopping"), WAIT_S, "phase Stopping")
        assert status(plane, namespace, SINGLE_NAME)["stopReason"]["type"] == "Budget"
        finish_with_checkpoint(plane, namespace, pod, 1)

    training_job = manifest(name="stuck", criteria=[], metrics=FAST | {"staleAfter": "3s"})
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, _):
        trainer.report(1, 100, val_loss=1.0)
        wait_until(phase_is(plane, namespace, "stuck", "Stopping"), WAIT_S, "phase Stopping")
        reason = status(plane, namespace, "stuck")["stopReason"]
        assert (reason["type"], reason["criterion"]) == ("Stale", "staleAfter")
        assert "no new step" in reason["message"]


@pytest.mark.parametrize(
    ("value", "message"), [("", "stopped with kubectl annotate"), ("looks good", "looks good")]
)
def test_kubectl_annotate_stop_stops_with_the_annotations_words(
    plane: ControlPlane, namespace: str, value: str, message: str
) -> None:
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
        trainer.report(1, 100, val_loss=1.0)
        plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, f"stopline.dev/stop={value}")
        wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
        assert trainer.stop_reason == message
        reason = stop_recorded(plane, namespace)["stopReason"]
        assert (reason["type"], reason["criterion"], reason["message"]) == (
            "Manual",
            "stopline.dev/stop",
            message,
        )
        stopped = finish_with_checkpoint(plane, namespace, pod, 1)
    assert stopped["status"]["checkpoint"]["uri"] == URI


def test_cancel_deletes_the_pods_at_once_and_saves_nothing(plane: ControlPlane, namespace: str) -> None:
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
        trainer.report(1, 100, val_loss=1.0)
        plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/cancel=wrong data")
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Cancelled"), WAIT_S, "phase Cancelled")
        wait_until(lambda: not exists(plane, namespace, "pod", pod), WAIT_S, "the pod deleted")
        assert trainer.stop_reason is None  # no graceful stop: nothing is saved
    cancelled = get(plane, namespace, "tj", SINGLE_NAME)
    assert cancelled["status"]["stopReason"]["type"] == "Cancelled"
    assert "checkpoint" not in cancelled["status"]
    assert condition(cancelled, "Finished")["message"] == "cancelled: wrong data; nothing was saved"
    assert get(plane, namespace, "job", SINGLE_NAME)["spec"]["suspend"] is True


def test_dry_run_records_where_it_would_stop_and_never_stops(plane: ControlPlane, namespace: str) -> None:
    training_job = manifest(
        criteria=[{"name": "plateau", "patience": {"patience": 1}}],
        metrics=dict(FAST),
        stopPolicy={"dryRun": True},
    )
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, _):
        for epoch in range(1, 5):
            trainer.report(epoch, epoch * 100, val_loss=1.0)
            wait_until(epoch_read(plane, namespace, epoch), WAIT_S, f"epoch {epoch} read")
        wait_until(
            event_posted(plane, namespace, SINGLE_NAME, "WouldStop", "Normal"), WAIT_S, "Event WouldStop"
        )
        current = status(plane, namespace, SINGLE_NAME)
        assert trainer.stop_reason is None
    assert current["phase"] == "Running"
    would = current["dryRun"]["wouldStopAt"]
    assert (would["type"], would["criterion"], would["epoch"]) == ("Patience", "plateau", 2)
    assert "stopReason" not in current


def test_a_trainer_that_does_not_acknowledge_gets_its_job_suspended(
    plane: ControlPlane, namespace: str
) -> None:
    """POST /stop answered 404 (no stopline endpoint): the Job is suspended, so the kubelet sends SIGTERM."""
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with (
        operator(namespace),
        running_trainer(plane, namespace, training_job, accept_stop=False) as (trainer, _),
    ):
        trainer.report(1, 100, val_loss=1.0)
        plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
        wait_until(
            lambda: get(plane, namespace, "job", SINGLE_NAME)["spec"].get("suspend") is True,
            WAIT_S,
            "the Job suspended",
        )
        wait_until(
            event_posted(plane, namespace, SINGLE_NAME, "StopNotAcknowledged"), WAIT_S, "a Warning Event"
        )


class HangUp:
    """A socket on the trainer's address that accepts and closes at once: an endpoint not serving yet
    (a trainer still importing torch). Counts the POSTs, so the test knows the stop was asked for."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.server = socket.create_server(address)
        self.attempts = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            while True:
                connection, _ = self.server.accept()
                with connection:
                    connection.settimeout(5)
                    if connection.recv(5) == b"POST ":  # not the scrapes' GET /metrics
                        self.attempts += 1

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(5)


def test_a_stop_asks_a_trainer_that_is_not_serving_yet_again_instead_of_killing_it(
    plane: ControlPlane, namespace: str
) -> None:
    """Within ackTimeout, no answer is not a refusal: the operator keeps asking, the trainer comes up,
    acknowledges and saves; the Job is never suspended (SIGTERM during torch's import would kill it)."""
    address = reserve_address()
    metrics = FAST | {"port": address[1]}
    training_job = manifest(criteria=[], metrics=metrics, stopPolicy={"ackTimeout": "60s"})
    with operator(namespace):
        apply(plane, namespace, training_job)
        wait_until(lambda: len(pods(plane, namespace, SINGLE_NAME)) == 1, WAIT_S, "the Job controller's pod")
        pod = pods(plane, namespace, SINGLE_NAME)[0]["metadata"]["name"]
        starting = HangUp(address)
        try:
            ip = {"podIP": address[0], "podIPs": [{"ip": address[0]}]}
            set_pod_status(plane, namespace, pod, RUNNING_AND_READY | ip)
            wait_until(phase_is(plane, namespace, SINGLE_NAME, "Running"), WAIT_S, "phase Running")
            plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
            wait_until(lambda: starting.attempts >= 3, WAIT_S, "POST /stop tried again while not served")
        finally:
            starting.close()
        trainer = StandInTrainer(address, control_token(plane, namespace, SINGLE_NAME))
        try:
            wait_until(lambda: trainer.stop_reason == "enough", WAIT_S, "the late trainer to get the stop")
            terminate(plane, namespace, pod, checkpoint_message(1, 100, "file:///ckpt/epoch-1.pt"))
            wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
        finally:
            trainer.close()
    assert get(plane, namespace, "job", SINGLE_NAME)["spec"].get("suspend") is not True
    assert "StopNotAcknowledged" not in {event["reason"] for event in events(plane, namespace, SINGLE_NAME)}


def test_a_trainer_that_outlives_the_grace_period_is_killed_and_fails_saying_nothing_was_saved(
    plane: ControlPlane, namespace: str
) -> None:
    training_job = manifest(criteria=[], metrics=dict(FAST), stopPolicy={"gracePeriod": "3s"})
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
        trainer.report(1, 100, val_loss=1.0)
        plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
        wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Failed"), WAIT_S, "phase Failed")
        wait_until(lambda: not exists(plane, namespace, "pod", pod), WAIT_S, "the pod deleted")
        wait_until(
            event_posted(plane, namespace, SINGLE_NAME, "GracePeriodExpired"), WAIT_S, "a Warning Event"
        )
    finished = condition(get(plane, namespace, "tj", SINGLE_NAME), "Finished")
    assert finished["reason"] == "GracePeriodExpired"
    assert "the weights were not saved" in finished["message"]


def test_an_operator_restarted_while_stopping_completes_the_stop_once(
    plane: ControlPlane, namespace: str
) -> None:
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with ExitStack() as first_operator:
        first_operator.enter_context(operator(namespace))
        with running_trainer(plane, namespace, training_job) as (trainer, pod):
            trainer.report(1, 100, val_loss=1.0)
            plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
            wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopping"), WAIT_S, "phase Stopping")
            first_operator.close()  # the operator is gone while the trainer saves and exits
            terminate(plane, namespace, pod, checkpoint_message(1, 100, URI))
            with operator(namespace):
                wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
                wait_until(
                    event_posted(plane, namespace, SINGLE_NAME, "CheckpointSaved", "Normal"), WAIT_S, "Event"
                )
    saved = [e for e in events(plane, namespace, SINGLE_NAME) if e["reason"] == "CheckpointSaved"]
    assert sum(int(e.get("count") or 1) for e in saved) == 1
    assert status(plane, namespace, SINGLE_NAME)["checkpoint"]["uri"] == URI


def test_a_trainer_that_stopped_on_a_post_the_status_never_recorded_ends_stopped_for_its_reason(
    plane: ControlPlane, namespace: str
) -> None:
    """POST /stop goes out before the Stopping write. If the operator dies between the two, the trainer
    still saves and exits; the next operator reads the decision from rank 0's termination message and
    ends the job Stopped for it, with its checkpoint, not Succeeded."""
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with ExitStack() as first_operator:
        first_operator.enter_context(operator(namespace))
        with running_trainer(plane, namespace, training_job) as (trainer, pod):
            trainer.report(1, 100, val_loss=1.0)
            wait_until(epoch_read(plane, namespace, 1), WAIT_S, "the operator reading epoch 1")
            first_operator.close()
    decided = {"type": "Patience", "criterion": "plateau"}
    terminate(plane, namespace, pod, checkpoint_message(1, 100, URI, stop=decided))  # stopped on that POST
    with operator(namespace):
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
        wait_until(event_posted(plane, namespace, SINGLE_NAME, "CheckpointSaved", "Normal"), WAIT_S, "Event")
    stopped = get(plane, namespace, "tj", SINGLE_NAME)
    reason = stopped["status"]["stopReason"]
    assert (reason["type"], reason["criterion"], reason["epoch"]) == ("Patience", "plateau", 1)
    assert stopped["status"]["checkpoint"]["uri"] == URI
    assert condition(stopped, "Finished")["reason"] == "CheckpointSaved"


def test_metrics_that_never_appear_show_as_a_condition_naming_the_url(
    plane: ControlPlane, namespace: str
) -> None:
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, _):
        trainer.close()  # the port answers nothing: a wrong spec.metrics.port looks the same

        def metrics_unavailable() -> Any:
            conditions = status(plane, namespace, SINGLE_NAME).get("conditions", [])
            return next(
                (c for c in conditions if c["type"] == "MetricsAvailable" and c["status"] == "False"), None
            )

        unavailable = wait_until(metrics_unavailable, WAIT_S, "condition MetricsAvailable=False")
        assert f"http://{trainer.ip}:{trainer.port}/metrics" in unavailable["message"]
        assert "spec.metrics.port" in unavailable["message"]
        assert status(plane, namespace, SINGLE_NAME)["phase"] == "Running"


def test_the_cohort_rule_stops_a_job_worse_than_the_median_of_its_study(
    plane: ControlPlane, namespace: str
) -> None:
    """The peers' curves come from their status.curve, as the operator writes it for running jobs."""
    study = {"stopline.dev/study": "sweep"}
    with operator(namespace):
        for peer, level in (("peer-a", 0.3), ("peer-b", 0.4), ("peer-c", 0.5)):
            peer_job = manifest(name=peer)
            peer_job["metadata"]["labels"] = study
            apply(plane, namespace, peer_job)
            wait_until(phase_is(plane, namespace, peer, "Pending"), WAIT_S, f"{peer} Pending")
            curve = json.dumps({"status": {"curve": [level + 0.1, level]}})
            plane.kubectl(
                "patch", "tj", peer, "-n", namespace, "--subresource=status", "--type=merge", "-p", curve
            )
        cohort = {"name": "median", "cohort": {"minJobs": 3, "percentile": 50}}
        training_job = manifest(criteria=[cohort], metrics=dict(FAST))
        training_job["metadata"]["labels"] = study
        with running_trainer(plane, namespace, training_job) as (trainer, pod):
            last = play_epochs(
                plane, namespace, trainer, [{"val_loss": 0.9}, {"val_loss": 0.8}, {"val_loss": 0.7}]
            )
            wait_until(lambda: trainer.stop_reason, WAIT_S, "the trainer's POST /stop")
            reason = stop_recorded(plane, namespace)["stopReason"]
            assert (reason["type"], reason["criterion"], reason["epoch"]) == ("Cohort", "median", last)
            assert last == 1  # worse than every peer's running average from the first epoch on
            finish_with_checkpoint(plane, namespace, pod, last)


def test_an_operator_restarted_while_running_keeps_the_patience_count(
    plane: ControlPlane, namespace: str
) -> None:
    """patience 3: two epochs without improvement before the restart and one after stop the job at epoch 4,
    as if the operator had never gone (its count comes back from status.criteria)."""
    training_job = manifest(criteria=[{"name": "plateau", "patience": {"patience": 3}}], metrics=dict(FAST))
    with ExitStack() as first_operator:
        first_operator.enter_context(operator(namespace))
        with running_trainer(plane, namespace, training_job) as (trainer, pod):
            for epoch in (1, 2, 3):
                trainer.report(epoch, epoch * 100, val_loss=1.0)
                wait_until(epoch_read(plane, namespace, epoch), WAIT_S, f"the operator reading epoch {epoch}")
            first_operator.close()
            trainer.report(4, 400, val_loss=1.0)
            with operator(namespace):
                wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopping"), WAIT_S, "phase Stopping")
                reason = status(plane, namespace, SINGLE_NAME)["stopReason"]
                assert (reason["type"], reason["epoch"]) == ("Patience", 4)
                finish_with_checkpoint(plane, namespace, pod, 4)


def test_epochs_shorter_than_the_read_interval_each_reach_the_criteria_once(
    plane: ControlPlane, namespace: str
) -> None:
    """0.2 s epochs read every 5 s: the operator reads the epochs it missed from the trainer's window, so
    patience decides at the same epoch as `stopline replay` of the same curve (reads are not epochs)."""
    values = [1.0, 0.8, 0.7, 0.69, 0.7, 0.71, 0.72, 0.7, 0.73, 0.74, 0.75, 0.76, 0.77, 0.78, 0.79, 0.8]
    criteria = [{"name": "plateau", "patience": {"patience": 3}}]
    training_job = manifest(criteria=criteria, metrics={"interval": "5s"})
    curve = Curve("replayed", rows={epoch: {"val_loss": v} for epoch, v in enumerate(values, start=1)})
    replayed_epoch, decision = replay_job(parse_spec(training_job["spec"]), curve, (), len(values))
    assert decision is not None
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, _):
        for epoch, value in enumerate(values, start=1):
            trainer.report(epoch, epoch * 10, val_loss=value)
            time.sleep(0.2)  # the trainer's pace, not a wait on the operator
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopping"), WAIT_S, "phase Stopping")
        stopped = status(plane, namespace, SINGLE_NAME)
    assert (stopped["stopReason"]["type"], stopped["stopReason"]["epoch"]) == ("Patience", replayed_epoch)
    assert stopped["curve"][:replayed_epoch] == values[:replayed_epoch]  # no gap, no epoch twice
