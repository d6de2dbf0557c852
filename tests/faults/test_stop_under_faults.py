"""The stop protocol under faults: an operator restarted before its watches sync (review H3), a stop of a
job whose Job has no pods yet (H3), a slowloris on the trainer's /stop (M5), a pod on an IPv6 address (M9).
"""

from __future__ import annotations

import socket
import threading
from contextlib import ExitStack
from pathlib import Path

import pytest

from faults.support import Slowloris, WatchHold, find_condition, holds, job_suspended, progress_at, start_pod
from operatorharness import (
    SINGLE_NAME,
    WAIT_S,
    StandInTrainer,
    apply,
    checkpoint_message,
    condition,
    control_token,
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
    status,
    stop_recorded,
    terminate,
)
from stopline_local.controlplane import ControlPlane, wait_until

pytestmark = pytest.mark.faults

FAST = {"interval": "1s"}
URI = "/stopline/checkpoints/runs/resnet-lr3e-4/step-000300.pt"


@pytest.mark.parametrize(
    "held",
    [
        pytest.param(("pods",), id="pod-watch"),
        pytest.param(("pods", "jobs"), id="pod-and-job-watches"),
    ],
)
def test_an_operator_restarted_before_its_watches_sync_concludes_from_the_pods_it_reads(
    plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    held: tuple[str, ...],
) -> None:
    """The trainer saved and exited while no operator ran; the next one starts with its pod watch (and
    Job watch) not synced yet: "no pod seen" is not "no pod", so it reads them and finds the manifest."""
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with ExitStack() as first_operator:
        first_operator.enter_context(operator(namespace))
        with running_trainer(plane, namespace, training_job) as (trainer, pod):
            trainer.report(1, 100, val_loss=1.0)
            plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
            wait_until(lambda: trainer.stop_reason == "enough", WAIT_S, "the trainer's POST /stop")
            stop_recorded(plane, namespace)  # the job this test restarts is one recorded as Stopping
            first_operator.close()
    terminate(plane, namespace, pod, checkpoint_message(1, 100, URI))  # saved and exited meanwhile

    hold = WatchHold(plane, reserve_address(), held)
    try:
        monkeypatch.setenv("KUBECONFIG", str(hold.kubeconfig(plane, tmp_path / "held.kubeconfig")))
        with operator(namespace):
            concluded = wait_until(
                lambda: (current := status(plane, namespace, SINGLE_NAME))["phase"] != "Stopping" and current,
                WAIT_S,
                "the stop to conclude",
            )
            # kopf's list/watch of those resources reach the hold (sometimes only after the stop concluded,
            # which can take less time than kopf's start-up); none is answered before release()
            wait_until(lambda: hold.held >= len(held), WAIT_S, "kopf's held list/watch requests")
            hold.release()
            finished = find_condition(concluded, "Finished") or {}
            assert (concluded["phase"], finished.get("reason")) == ("Stopped", "CheckpointSaved"), finished
            wait_until(
                event_posted(plane, namespace, SINGLE_NAME, "CheckpointSaved", "Normal"), WAIT_S, "an Event"
            )
    finally:
        hold.close()
    stopped = get(plane, namespace, "tj", SINGLE_NAME)
    assert stopped["status"]["phase"] == "Stopped"
    assert condition(stopped, "Finished")["reason"] == "CheckpointSaved"
    assert stopped["status"]["checkpoint"]["uri"] == URI


def test_a_stop_of_a_job_without_pods_suspends_its_job_before_it_says_stopped(
    plane: ControlPlane, namespace: str
) -> None:
    """A quota of no pods: the Job exists, its pods cannot be created (as with a queue holding it)."""
    plane.kubectl("create", "quota", "no-pods", "--hard=pods=0", "-n", namespace)
    with operator(namespace):
        apply(plane, namespace, manifest(criteria=[], metrics=dict(FAST)))
        wait_until(lambda: exists(plane, namespace, "job", SINGLE_NAME), WAIT_S, "the Job created")
        assert pods(plane, namespace, SINGLE_NAME) == []
        assert status(plane, namespace, SINGLE_NAME).get("phase", "Pending") == "Pending"
        plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=not needed")
        wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
        assert job_suspended(plane, namespace, SINGLE_NAME)
        wait_until(event_posted(plane, namespace, SINGLE_NAME, "NoCheckpoint"), WAIT_S, "a Warning Event")
    stopped = get(plane, namespace, "tj", SINGLE_NAME)
    assert condition(stopped, "Finished")["reason"] == "NoCheckpoint"
    assert stopped["status"]["stopReason"]["message"] == "not needed"
    plane.kubectl("delete", "quota", "no-pods", "-n", namespace)  # the Job may run pods now: it must not
    holds(lambda: pods(plane, namespace, SINGLE_NAME) == [], 3, "no pod once the quota is gone")


def test_a_slowloris_on_the_trainers_endpoint_does_not_keep_the_stop_from_it(
    plane: ControlPlane, namespace: str
) -> None:
    """200 clients hold connections to the real trainer server (stopline_trainer's ControlServer) with
    half-sent request heads while the operator stops the job: the stop is acknowledged, the job ends
    Stopped, and the trainer process never holds a thread per attacker."""
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with operator(namespace), running_trainer(plane, namespace, training_job) as (trainer, pod):
        trainer.report(1, 100, val_loss=1.0)
        wait_until(progress_at(plane, namespace, SINGLE_NAME, 1), WAIT_S, "epoch 1 read")
        threads_before = threading.active_count()
        with Slowloris((trainer.ip, trainer.port), 200) as attack:
            wait_until(lambda: attack.opened >= 200, WAIT_S, "200 attacking connections opened")
            plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
            wait_until(lambda: trainer.stop_reason == "enough", WAIT_S, "POST /stop acknowledged")
            stop_recorded(plane, namespace)
            terminate(plane, namespace, pod, checkpoint_message(1, 100, URI))
            wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
        extra_threads = attack.peak_threads - threads_before
    stopped = get(plane, namespace, "tj", SINGLE_NAME)
    assert condition(stopped, "Finished")["reason"] == "CheckpointSaved"
    assert not job_suspended(plane, namespace, SINGLE_NAME)  # acknowledged: no SIGTERM was needed
    assert "StopNotAcknowledged" not in {event["reason"] for event in events(plane, namespace, SINGLE_NAME)}
    assert extra_threads < 64, f"{extra_threads} threads for 200 idle connections"  # it serves 32 at most


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_a_pod_on_an_ipv6_address_is_read_and_stopped(plane: ControlPlane, namespace: str) -> None:
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = int(probe.getsockname()[1])
    training_job = manifest(criteria=[], metrics=dict(FAST))
    with operator(namespace):
        pod = start_pod(plane, namespace, training_job, ("::1", port))  # podIP "::1"
        trainer = StandInTrainer(("::1", port), control_token(plane, namespace, SINGLE_NAME))
        try:
            trainer.report(1, 100, val_loss=0.5)
            wait_until(progress_at(plane, namespace, SINGLE_NAME, 1), WAIT_S, "epoch 1 read from [::1]")
            available = find_condition(status(plane, namespace, SINGLE_NAME), "MetricsAvailable")
            assert available is not None and available["status"] == "True"
            plane.kubectl("annotate", "tj", SINGLE_NAME, "-n", namespace, "stopline.dev/stop=enough")
            wait_until(lambda: trainer.stop_reason == "enough", WAIT_S, "POST /stop on http://[::1]")
            stop_recorded(plane, namespace)
            terminate(plane, namespace, pod, checkpoint_message(1, 100, URI))
            wait_until(phase_is(plane, namespace, SINGLE_NAME, "Stopped"), WAIT_S, "phase Stopped")
        finally:
            trainer.close()
    assert status(plane, namespace, SINGLE_NAME)["checkpoint"]["uri"] == URI
