"""TrainingJobs queued, preempted and resumed by a real Kueue manager, with real torch trainers.

The queue's ClusterQueue holds one `nvidia.com/gpu`, so one job runs at a time. Each story is one of the
Kueue issue: a second job waits Queued; a high-priority job preempts a low one, which saves on SIGTERM,
shows Preempted, then resumes and finishes with every epoch once and its weights loaded back; a stop
while queued; a stop while preempted; the operator restarted while a job is preempted.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import torch

from e2e.support import CLAIM, DEADLINE_S, apply_claim, epoch_reached, load_weights, training_job
from operatorharness import apply, condition, events, get, operator, status
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet
from stopline_local.kueue import (
    GPU,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    Kueue,
    cluster_queue,
    local_queue,
    resource_flavor,
    workload_priority_class,
)

pytestmark = pytest.mark.e2e

QUEUE = "gpus"
LOW, HIGH = "stopline-test-low", "stopline-test-high"
EPOCH_S = ("--steps-per-epoch", "10", "--sleep-per-step", "0.05")  # ~0.5 s an epoch on a shared core


def queued(name: str, epochs: int, priority: str = LOW, **spec: Any) -> dict[str, Any]:
    """The example trainer as a TrainingJob for the test queue: one GPU requested, read every second."""
    job = training_job(name, args=("--epochs", str(epochs), *EPOCH_S))
    job["metadata"]["labels"] = {QUEUE_LABEL: QUEUE, PRIORITY_LABEL: priority}
    job["spec"].update(maxEpochs=epochs, **spec)
    job["spec"]["metrics"]["interval"] = "1s"
    trainer = job["spec"]["template"]["spec"]["containers"][0]
    trainer["resources"] = {"requests": {GPU: "1"}, "limits": {GPU: "1"}}
    return job


@pytest.fixture
def queues(plane: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue) -> ControlPlane:
    """A LocalQueue on a ClusterQueue of one GPU, and the checkpoint claim."""
    resource_flavor(plane, "default")
    cluster_queue(plane, f"gpus-{namespace}", gpus=1)
    local_queue(plane, namespace, QUEUE, f"gpus-{namespace}")
    workload_priority_class(plane, LOW, 100)
    workload_priority_class(plane, HIGH, 1000)
    apply_claim(plane, namespace)
    return plane


@pytest.fixture
def queue_story(queues: ControlPlane, namespace: str) -> Iterator[ControlPlane]:
    """The queues, and the operator watching the test's namespace."""
    with operator(namespace):
        yield queues


def phase(plane: ControlPlane, namespace: str, name: str) -> str:
    return str(status(plane, namespace, name).get("phase"))


def wait_phase(
    plane: ControlPlane, namespace: str, name: str, *phases: str, kueue: Kueue | None = None
) -> None:
    wait_until(
        lambda: phase(plane, namespace, name) in phases,
        DEADLINE_S,
        f"{name} to be {' or '.join(phases)}",
        details=lambda: f"{status(plane, namespace, name)}\n{kueue.log_tail() if kueue else ''}",
    )


def jobs(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(plane.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"])


LOGGED = re.compile(r"epoch (\d+) step \d+ val_loss ([0-9.e+-]+)")


def trainer_curve(kubelet: LocalKubelet, namespace: str, name: str) -> dict[int, float]:
    """val_loss by epoch as the example trainer logged it, from every pod the job had."""
    logs = (kubelet.root / "logs").glob(f"{namespace}_{name}-*.log")
    return {int(epoch): float(value) for log in logs for epoch, value in LOGGED.findall(log.read_text())}


def reasons(plane: ControlPlane, namespace: str, name: str) -> set[str]:
    return {event["reason"] for event in events(plane, namespace, name)}


def test_a_second_job_waits_queued_with_kueues_words_until_the_first_ends(
    queue_story: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    plane = queue_story
    apply(plane, namespace, queued("first", epochs=6))
    wait_phase(plane, namespace, "first", "Running", kueue=kueue)  # not ended: "second" must wait for it
    apply(plane, namespace, queued("second", epochs=3))
    wait_until(
        lambda: "Kueue says" in condition(get(plane, namespace, "tj", "second"), "Admitted")["message"],
        DEADLINE_S,
        "second: Kueue's words in the Admitted condition",
        details=lambda: str(status(plane, namespace, "second")),
    )
    waiting = get(plane, namespace, "tj", "second")
    assert waiting["status"]["phase"] == "Queued"
    assert condition(waiting, "Admitted")["reason"] == "Queued"
    assert "second" not in {
        pod["metadata"]["labels"].get("stopline.dev/job") for pod in _pods(plane, namespace)
    }
    wait_phase(plane, namespace, "first", "Succeeded", kueue=kueue)
    wait_phase(plane, namespace, "second", "Succeeded", kueue=kueue)
    assert {"Queued", "Admitted"} <= reasons(plane, namespace, "second")


def _pods(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return list(get(plane, namespace, "pods")["items"])


def test_a_preempted_job_saves_waits_and_resumes_to_the_end_with_every_epoch_once(
    queue_story: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    plane = queue_story
    epochs = 20
    apply(
        plane,
        namespace,
        queued("low", epochs=epochs, criteria=[{"name": "budget", "budget": {"maxDuration": "1h"}}]),
    )
    epoch_reached(plane, namespace, "low", 3)
    apply(plane, namespace, queued("high", epochs=3, priority=HIGH))
    wait_phase(plane, namespace, "low", "Preempted", kueue=kueue)
    wait_until(
        lambda: "checkpoint" in status(plane, namespace, "low"),
        DEADLINE_S,
        "low: the checkpoint saved on SIGTERM in status.checkpoint",
    )
    preempted = get(plane, namespace, "tj", "low")
    at_preemption = preempted["status"]["progress"]["epoch"]
    saved = preempted["status"]["checkpoint"]
    admitted = condition(preempted, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "Preempted")
    assert condition(preempted, "Running")["status"] == "False"
    wait_phase(plane, namespace, "high", "Succeeded", kueue=kueue)
    wait_phase(plane, namespace, "low", "Succeeded", kueue=kueue)
    finished = get(plane, namespace, "tj", "low")
    curve = finished["status"]["curve"]
    print(
        f"low: preempted at epoch {at_preemption}, saved at epoch {saved['epoch']} step {saved['step']}; "
        f"epochs lost to the preemption: {max(at_preemption - saved['epoch'], 0)} (saved at the step the "
        f"SIGTERM came; a stop mid-epoch finishes that epoch after resuming); "
        f"ran {finished['status'].get('runSeconds')} s before it"
    )
    assert finished["status"]["progress"]["epoch"] == epochs
    # each epoch once, with the value the trainer logged for that epoch (both pods' logs: before and
    # after the preemption); a validation value read during the next epoch is still its own epoch's
    logged = trainer_curve(kubelet, namespace, "low")
    assert sorted(logged) == list(range(1, epochs + 1)), logged
    assert curve == pytest.approx([logged[epoch] for epoch in range(1, epochs + 1)], abs=6e-6)  # %.5f
    assert finished["status"]["runSeconds"] > 0
    assert finished["status"]["checkpoint"]["step"] > saved["step"]  # the final weights, after the resume
    load_weights(finished["status"]["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "low")
    assert {"Preempted", "Admitted"} <= reasons(plane, namespace, "low")
    assert "Stopped" not in reasons(plane, namespace, "low")


def test_a_stop_while_queued_ends_at_once_and_the_job_is_never_admitted(
    queue_story: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    plane = queue_story
    apply(plane, namespace, queued("first", epochs=8))
    wait_phase(plane, namespace, "first", "Running", kueue=kueue)
    apply(plane, namespace, queued("waiting", epochs=3))
    wait_phase(plane, namespace, "waiting", "Queued", kueue=kueue)
    plane.kubectl("annotate", "tj", "waiting", "-n", namespace, "stopline.dev/stop=not needed after all")
    wait_phase(plane, namespace, "waiting", "Stopped", kueue=kueue)
    stopped = get(plane, namespace, "tj", "waiting")
    assert condition(stopped, "Finished")["reason"] == "NoCheckpoint"
    assert stopped["status"]["stopReason"]["type"] == "Manual"
    wait_until(
        lambda: "waiting" not in {job["metadata"]["name"] for job in jobs(plane, namespace)},
        DEADLINE_S,
        "the stopped job's Job to be deleted (so Kueue drops its Workload)",
    )
    wait_phase(plane, namespace, "first", "Succeeded", kueue=kueue)
    assert phase(plane, namespace, "waiting") == "Stopped"
    assert not any(
        pod["metadata"]["labels"].get("stopline.dev/job") == "waiting" for pod in _pods(plane, namespace)
    )


def test_a_stop_while_preempted_ends_with_the_weights_saved_at_the_preemption(
    queue_story: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    plane = queue_story
    apply(plane, namespace, queued("low", epochs=40))
    epoch_reached(plane, namespace, "low", 2)
    apply(plane, namespace, queued("high", epochs=12, priority=HIGH))
    wait_phase(plane, namespace, "low", "Preempted", kueue=kueue)
    wait_until(lambda: "checkpoint" in status(plane, namespace, "low"), DEADLINE_S, "low: checkpoint")
    plane.kubectl("annotate", "tj", "low", "-n", namespace, "stopline.dev/stop=enough")
    wait_phase(plane, namespace, "low", "Stopped", kueue=kueue)
    stopped = get(plane, namespace, "tj", "low")
    assert condition(stopped, "Finished")["reason"] == "CheckpointSaved"
    load_weights(stopped["status"]["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "low")
    wait_until(
        lambda: "low" not in {job["metadata"]["name"] for job in jobs(plane, namespace)},
        DEADLINE_S,
        "the stopped job's Job to be deleted",
    )
    wait_phase(plane, namespace, "high", "Succeeded", kueue=kueue)
    assert phase(plane, namespace, "low") == "Stopped"


def test_an_operator_restarted_while_a_job_is_preempted_resumes_it_to_the_end(
    queues: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    plane = queues
    epochs = 12
    with ExitStack() as first:
        first.enter_context(operator(namespace))
        apply(plane, namespace, queued("low", epochs=epochs))
        epoch_reached(plane, namespace, "low", 2)
        apply(plane, namespace, queued("high", epochs=6, priority=HIGH))
        wait_phase(plane, namespace, "low", "Preempted", kueue=kueue)
    # no operator while the high job runs; a new one takes over
    with operator(namespace):
        wait_phase(plane, namespace, "high", "Succeeded", kueue=kueue)
        wait_phase(plane, namespace, "low", "Succeeded", kueue=kueue)
    finished = get(plane, namespace, "tj", "low")
    assert finished["status"]["progress"]["epoch"] == epochs
    assert len(finished["status"]["curve"]) == epochs
    load_weights(finished["status"]["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "low")


def test_a_cancel_of_a_running_job_stays_cancelled_though_kueue_admitted_it(
    queue_story: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    """The cancel suspends the Job Kueue admitted: stopline deactivates its Workload first, else Kueue
    unsuspends it within a second and the Job controller starts a new trainer pod."""
    plane = queue_story
    apply(plane, namespace, queued("running", epochs=60))
    epoch_reached(plane, namespace, "running", 2)
    first_pods = {pod["metadata"]["uid"] for pod in _pods(plane, namespace)}
    plane.kubectl("annotate", "tj", "running", "-n", namespace, "stopline.dev/cancel=wrong data")
    wait_phase(plane, namespace, "running", "Cancelled", kueue=kueue)
    apply(plane, namespace, queued("next", epochs=2))  # runs once the quota is free: Kueue let go
    wait_phase(plane, namespace, "next", "Succeeded", kueue=kueue)
    again = [
        pod
        for pod in _pods(plane, namespace)
        if pod["metadata"]["labels"].get("stopline.dev/job") == "running"
        and pod["metadata"]["uid"] not in first_pods
    ]
    assert not again, "Kueue started the cancelled job's pods again"
    assert phase(plane, namespace, "running") == "Cancelled"


SECOND_EPOCHS = ("--steps-per-epoch", "10", "--sleep-per-step", "0.1")  # ~1 s an epoch
CRASH_FROM_EPOCH = 10  # past the preemption (a few seconds after epoch 2), so that save is a good one


def preempted_and_readmitted(plane: ControlPlane, namespace: str, kueue: Kueue, *args: str) -> dict[str, Any]:
    """`low` (the example trainer with `args`) runs, a high-priority job preempts it (it saves on SIGTERM),
    then Kueue admits it again and it runs on from that checkpoint; returns the preemption's checkpoint."""
    job = queued("low", epochs=60)
    job["spec"]["template"]["spec"]["containers"][0]["args"] = ["--epochs", "60", *SECOND_EPOCHS, *args]
    apply(plane, namespace, job)
    epoch_reached(plane, namespace, "low", 2)
    apply(plane, namespace, queued("high", epochs=2, priority=HIGH))
    wait_phase(plane, namespace, "low", "Preempted", kueue=kueue)
    wait_until(lambda: "checkpoint" in status(plane, namespace, "low"), DEADLINE_S, "low: checkpoint")
    at_preemption = dict(status(plane, namespace, "low")["checkpoint"])
    wait_phase(plane, namespace, "high", "Succeeded", kueue=kueue)
    wait_phase(plane, namespace, "low", "Running", kueue=kueue)
    epoch_reached(plane, namespace, "low", at_preemption["epoch"] + 3)  # the new admission saved since
    return at_preemption


def test_a_stop_after_a_readmission_signals_the_new_trainer_and_keeps_its_weights_not_the_preemptions(
    queue_story: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    """Review N1: the pod the preemption ended (exit 0, its pointer) stays filed under the same Job uid; a
    stop after the re-admission must be concluded by the new admission's trainer, never by that pointer."""
    plane = queue_story
    at_preemption = preempted_and_readmitted(plane, namespace, kueue)
    plane.kubectl("annotate", "tj", "low", "-n", namespace, "stopline.dev/stop=enough")
    wait_phase(plane, namespace, "low", "Stopped", kueue=kueue)
    stopped = get(plane, namespace, "tj", "low")
    assert condition(stopped, "Finished")["reason"] == "CheckpointSaved"
    checkpoint = stopped["status"]["checkpoint"]
    assert checkpoint["step"] > at_preemption["step"], (checkpoint, at_preemption)
    assert checkpoint["epoch"] >= at_preemption["epoch"] + 3
    load_weights(checkpoint, kubelet.claim_folder(namespace, CLAIM) / "runs" / "low")


def test_a_readmitted_trainer_that_crashes_during_the_stop_fails_the_job_though_the_preemption_saved(
    queue_story: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    """Review N1: the new rank 0 crashes on the stop (exit 1); the earlier admission's saved pointer must
    not turn that into Stopped/CheckpointSaved."""
    plane = queue_story
    # saving only at the end: a save between the stop's start and its signal would be weights saved since
    # the stop, which count whatever the exit code (torchrun exits 1 after its workers saved)
    crash = ("--fault", "crash-on-stop", "--fault-epoch", str(CRASH_FROM_EPOCH), "--save-every", "0")
    at_preemption = preempted_and_readmitted(plane, namespace, kueue, *crash)
    assert at_preemption["epoch"] < CRASH_FROM_EPOCH  # it saved on the preemption's SIGTERM
    epoch_reached(plane, namespace, "low", CRASH_FROM_EPOCH)
    plane.kubectl("annotate", "tj", "low", "-n", namespace, "stopline.dev/stop=enough")
    wait_phase(plane, namespace, "low", "Failed", "Stopped", kueue=kueue)
    failed = get(plane, namespace, "tj", "low")
    finished = condition(failed, "Finished")
    assert (failed["status"]["phase"], finished["reason"]) == ("Failed", "TrainerFailed"), finished
    assert "exited with code 1" in finished["message"]
    assert failed["status"]["checkpoint"]["step"] >= at_preemption["step"]  # the last weights are still named


LIGHTNING = ("python", "trainer-image/examples/lightning_train.py")
LIGHTNING_BATCHES = 8


def registered_ckpt(pointer: dict[str, Any]) -> dict[str, Any]:
    """The Lightning .ckpt a status.checkpoint names (its one registered file), verified and loaded."""
    listing = Path(pointer["uri"])
    [entry] = json.loads(listing.read_bytes())["files"]
    blob = (listing.parent / entry["path"]).read_bytes()
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == (entry["bytes"], entry["sha256"])
    state: dict[str, Any] = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
    return state


def adam_steps(ckpt: dict[str, Any]) -> set[int]:
    """Adam's step count for each parameter in a .ckpt: the optimizer steps its state has seen."""
    return {int(param["step"]) for param in ckpt["optimizer_states"][0]["state"].values()}


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")
def test_a_preempted_lightning_fit_resumes_at_its_epoch_with_its_optimizer_state(
    queue_story: ControlPlane, namespace: str, kubelet: LocalKubelet, kueue: Kueue
) -> None:
    """The Lightning callback keeps the whole trainer state when Kueue's preemption SIGTERMs the pod; the
    re-admitted pod's fit(ckpt_path=run.resume_path()) continues from it, not from epoch 0."""
    plane = queue_story
    epochs = 12
    job = queued("fit", epochs=epochs)
    trainer = job["spec"]["template"]["spec"]["containers"][0]
    trainer["command"] = list(LIGHTNING)
    trainer["args"] = ["--max-epochs", str(epochs), "--batches-per-epoch", str(LIGHTNING_BATCHES)]
    trainer["args"] += ["--sleep-per-batch", "0.1"]  # ~1 s an epoch
    apply(plane, namespace, job)
    epoch_reached(plane, namespace, "fit", 3)
    apply(plane, namespace, queued("high", epochs=2, priority=HIGH))
    wait_phase(plane, namespace, "fit", "Preempted", kueue=kueue)
    wait_until(lambda: "checkpoint" in status(plane, namespace, "fit"), DEADLINE_S, "fit: the SIGTERM's save")
    at_preemption = registered_ckpt(status(plane, namespace, "fit")["checkpoint"])
    done = at_preemption["epoch"]  # epochs completed (the callback agrees on a stop at an epoch's end)
    assert 2 <= done < epochs and at_preemption["global_step"] == done * LIGHTNING_BATCHES
    assert adam_steps(at_preemption) == {at_preemption["global_step"]}
    wait_phase(plane, namespace, "high", "Succeeded", kueue=kueue)
    wait_phase(plane, namespace, "fit", "Succeeded", kueue=kueue)

    finished = get(plane, namespace, "tj", "fit")["status"]
    final = registered_ckpt(finished["checkpoint"])
    # continued at its epoch: the two admissions ran `epochs` epochs of batches between them, not more
    assert (final["epoch"], final["global_step"]) == (epochs, epochs * LIGHTNING_BATCHES), finished
    # with its optimizer state: Adam counted every step of both admissions (a fresh optimizer after the
    # resume would count only the second admission's)
    assert adam_steps(final) == {final["global_step"]}
    assert finished["progress"]["epoch"] == epochs and len(finished["curve"]) == epochs
    logs = "".join(log.read_text() for log in (kubelet.root / "logs").glob(f"{namespace}_fit-*.log"))
    assert logs.count("Restored all states from the checkpoint") == 1, logs[-4000:]
