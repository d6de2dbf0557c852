"""A rank that dies (issue: a rank that dies ends a multi-day run): a real torch trainer, run by the test
kubelet, is SIGKILLed mid-epoch (a node lost, a GPU fault, an OOM kill). With spec.failurePolicy.maxRestarts
the job restarts from its last checkpoint and runs to its end, every epoch once."""

from __future__ import annotations

import re
import signal
from collections import Counter

import pytest

from e2e.support import CLAIM, DEADLINE_S, apply_claim, load_weights, training_job
from faults.support import find_condition
from operatorharness import apply, event_posted, events, get, operator, pods, status
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet

pytestmark = pytest.mark.faults

EPOCHS = 8
ONE_S_EPOCHS = ("--epochs", str(EPOCHS), "--steps-per-epoch", "10", "--sleep-per-step", "0.1")
LOGGED = re.compile(r"epoch (\d+) step \d+ val_loss")


def test_a_rank_killed_mid_epoch_restarts_the_job_from_its_last_checkpoint_and_it_finishes(
    plane: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply_claim(plane, namespace)
    job = training_job("phoenix", args=ONE_S_EPOCHS)
    job["spec"] |= {"maxEpochs": EPOCHS, "failurePolicy": {"maxRestarts": 1}}
    # a short staleAfter: the new run's trainer, still starting, has not answered yet; that is no hang
    job["spec"]["metrics"] |= {"interval": "1s", "staleAfter": "4s"}

    def details() -> str:
        return f"{status(plane, namespace, 'phoenix')}\n{kubelet.logs()[-3000:]}"

    with operator(namespace):
        apply(plane, namespace, job)
        wait_until(
            lambda: status(plane, namespace, "phoenix").get("progress", {}).get("epoch", 0) >= 3,
            DEADLINE_S,
            "phoenix: epoch 3",
            details=details,
        )
        [first] = pods(plane, namespace, "phoenix")
        kubelet.signal(namespace, first["metadata"]["name"], signal.SIGKILL)
        wait_until(
            lambda: status(plane, namespace, "phoenix").get("phase") in ("Succeeded", "Failed", "Stopped"),
            DEADLINE_S,
            "phoenix: the end of its run",
            details=details,
        )
        wait_until(
            event_posted(plane, namespace, "phoenix", "Restarting"), DEADLINE_S, "the Restarting Event"
        )
    ended = get(plane, namespace, "tj", "phoenix")["status"]
    assert (ended["phase"], ended["restarts"]) == ("Succeeded", 1), details()
    assert ended["progress"]["epoch"] == EPOCHS
    curve = ended["curve"]
    assert len(curve) == EPOCHS and all(value is not None for value in curve), curve
    logs = (kubelet.root / "logs").glob(f"{namespace}_phoenix-*.log")
    logged = Counter(int(epoch) for log in logs for epoch in LOGGED.findall(log.read_text()))
    assert logged == Counter(range(1, EPOCHS + 1)), logged  # resumed at its checkpoint: every epoch once
    assert ended["runSeconds"] > 0  # the first run's time, for budgets
    load_weights(ended["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "phoenix")


def test_a_stop_while_a_failed_rank_restarts_the_job_concludes_once_with_the_last_weights(
    plane: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply_claim(plane, namespace)
    job = training_job("lazarus", args=("--epochs", "50", *ONE_S_EPOCHS[2:]))
    job["spec"] |= {"failurePolicy": {"maxRestarts": 3}}
    job["spec"]["metrics"]["interval"] = "1s"

    def details() -> str:
        return f"{status(plane, namespace, 'lazarus')}\n{kubelet.logs()[-3000:]}"

    def restarting() -> bool:
        running = find_condition(status(plane, namespace, "lazarus"), "Running") or {}
        return running.get("reason") == "Restarting"

    with operator(namespace):
        apply(plane, namespace, job)
        wait_until(
            lambda: status(plane, namespace, "lazarus").get("checkpoint", {}).get("epoch", 0) >= 2,
            DEADLINE_S,
            "lazarus: a checkpoint of epoch 2",
            details=details,
        )
        [first] = pods(plane, namespace, "lazarus")
        kubelet.signal(namespace, first["metadata"]["name"], signal.SIGKILL)
        wait_until(restarting, DEADLINE_S, "lazarus: restarting", details=details)
        plane.kubectl("annotate", "tj", "lazarus", "-n", namespace, "stopline.dev/stop=enough")
        wait_until(
            lambda: status(plane, namespace, "lazarus").get("phase") in ("Stopped", "Failed", "Succeeded"),
            DEADLINE_S,
            "lazarus: the stop to end",
            details=details,
        )
        wait_until(
            lambda: (
                not [p for p in pods(plane, namespace, "lazarus") if p["status"].get("phase") == "Running"]
            ),
            DEADLINE_S,
            "lazarus: no trainer running after the stop",
            details=details,
        )
        wait_until(
            event_posted(plane, namespace, "lazarus", "CheckpointSaved", "Normal"), DEADLINE_S, "Event"
        )
    ended = get(plane, namespace, "tj", "lazarus")["status"]
    assert (ended["phase"], ended["stopReason"]["type"], ended["restarts"]) == ("Stopped", "Manual", 1)
    concluded = [e for e in events(plane, namespace, "lazarus") if e["reason"] == "CheckpointSaved"]
    assert len(concluded) == 1, concluded  # concluded once, whichever run it caught
    load_weights(ended["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "lazarus")
