"""A rank that dies (issue: a rank that dies ends a multi-day run): a real torch trainer, run by the test
kubelet, is SIGKILLed mid-epoch (a node lost, a GPU fault, an OOM kill). With spec.failurePolicy.maxRestarts
the job restarts from its last checkpoint and runs to its end, every epoch once."""

from __future__ import annotations

import re
import signal
from collections import Counter
from typing import Any

import pytest

from e2e.support import CLAIM, apply_claim, load_weights, training_job
from faults.support import STORY_WAIT_S, epoch_at_least, find_condition, wait_for_status
from operatorharness import apply, event_posted, events, get, operator, pods
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet

pytestmark = pytest.mark.faults

EPOCHS = 8
ONE_S_EPOCHS = ("--epochs", str(EPOCHS), "--steps-per-epoch", "10", "--sleep-per-step", "0.1")
LOGGED = re.compile(r"epoch (\d+) step \d+ val_loss")


def ended(current: dict[str, Any]) -> bool:
    return current.get("phase") in ("Succeeded", "Failed", "Stopped")


def test_a_rank_killed_mid_epoch_restarts_the_job_from_its_last_checkpoint_and_it_finishes(
    plane: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply_claim(plane, namespace)
    job = training_job("phoenix", args=ONE_S_EPOCHS)
    job["spec"] |= {"maxEpochs": EPOCHS, "failurePolicy": {"maxRestarts": 1}}
    # a short staleAfter: the new run's trainer, still starting, has not answered yet; that is no hang
    job["spec"]["metrics"] |= {"interval": "1s", "staleAfter": "4s"}
    with operator(namespace):
        apply(plane, namespace, job)
        wait_for_status(plane, kubelet, namespace, "phoenix", epoch_at_least(3), "epoch 3")
        [first] = pods(plane, namespace, "phoenix")
        kubelet.signal(namespace, first["metadata"]["name"], signal.SIGKILL)
        wait_for_status(plane, kubelet, namespace, "phoenix", ended, "the end of its run")
        wait_until(
            event_posted(plane, namespace, "phoenix", "Restarting"), STORY_WAIT_S, "the Restarting Event"
        )
    finished = get(plane, namespace, "tj", "phoenix")["status"]
    assert (finished["phase"], finished["restarts"]) == ("Succeeded", 1), finished
    assert finished["progress"]["epoch"] == EPOCHS
    curve = finished["curve"]
    assert len(curve) == EPOCHS and all(value is not None for value in curve), curve
    logs = (kubelet.root / "logs").glob(f"{namespace}_phoenix-*.log")
    logged = Counter(int(epoch) for log in logs for epoch in LOGGED.findall(log.read_text()))
    assert logged == Counter(range(1, EPOCHS + 1)), logged  # resumed at its checkpoint: every epoch once
    assert finished["runSeconds"] > 0  # the first run's time, for budgets
    load_weights(finished["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "phoenix")


def test_a_stop_while_a_failed_rank_restarts_the_job_concludes_once_with_the_last_weights(
    plane: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply_claim(plane, namespace)
    job = training_job("lazarus", args=("--epochs", "50", *ONE_S_EPOCHS[2:]))
    job["spec"] |= {"failurePolicy": {"maxRestarts": 3}}
    job["spec"]["metrics"]["interval"] = "1s"

    def restarting(current: dict[str, Any]) -> bool:
        return (find_condition(current, "Running") or {}).get("reason") == "Restarting"

    def saved_epoch_2(current: dict[str, Any]) -> bool:
        return bool(current.get("checkpoint", {}).get("epoch", 0) >= 2)

    with operator(namespace):
        apply(plane, namespace, job)
        wait_for_status(plane, kubelet, namespace, "lazarus", saved_epoch_2, "a checkpoint of epoch 2")
        [first] = pods(plane, namespace, "lazarus")
        kubelet.signal(namespace, first["metadata"]["name"], signal.SIGKILL)
        wait_for_status(plane, kubelet, namespace, "lazarus", restarting, "restarting")
        plane.kubectl("annotate", "tj", "lazarus", "-n", namespace, "stopline.dev/stop=enough")
        wait_for_status(plane, kubelet, namespace, "lazarus", ended, "the stop to end")
        wait_for_status(
            plane,
            kubelet,
            namespace,
            "lazarus",
            lambda _: (
                not [p for p in pods(plane, namespace, "lazarus") if p["status"].get("phase") == "Running"]
            ),
            "no trainer running after the stop",
        )
        wait_until(
            event_posted(plane, namespace, "lazarus", "CheckpointSaved", "Normal"), STORY_WAIT_S, "Event"
        )
    stopped = get(plane, namespace, "tj", "lazarus")["status"]
    assert (stopped["phase"], stopped["stopReason"]["type"], stopped["restarts"]) == ("Stopped", "Manual", 1)
    concluded = [e for e in events(plane, namespace, "lazarus") if e["reason"] == "CheckpointSaved"]
    assert len(concluded) == 1, concluded  # concluded once, whichever run it caught
    load_weights(stopped["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "lazarus")
