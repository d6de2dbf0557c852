"""Two jobs on one claim with the default checkpoint path (review H6): real torch trainers, run by the test
kubelet, each stopped with kubectl annotate; each keeps its own weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e.support import CLAIM, DEADLINE_S, training_job
from faults.support import find_condition
from operatorharness import apply, event_posted, get, operator, status
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet
from trainer.support import assert_reproduces_outputs, verify_blob

pytestmark = pytest.mark.faults

JOBS = ("alpha", "beta")
EPOCH_S = ("--epochs", "50", "--steps-per-epoch", "10", "--sleep-per-step", "0.05")


def on_the_claim_by_default(name: str) -> dict[str, Any]:
    """The example trainer, read every second, checkpointing to the claim with no pvc.path."""
    job = training_job(name, args=EPOCH_S)
    job["spec"]["checkpoint"] = {"pvc": {"claimName": CLAIM}}
    job["spec"]["metrics"]["interval"] = "1s"
    return job


def epoch_reached(plane: ControlPlane, namespace: str, name: str, epoch: int) -> Callable[[], bool]:
    return lambda: bool(status(plane, namespace, name).get("progress", {}).get("epoch", 0) >= epoch)


def ended(plane: ControlPlane, namespace: str, name: str) -> Callable[[], bool]:
    return lambda: status(plane, namespace, name).get("phase") in ("Stopped", "Failed")


def test_two_jobs_on_one_claim_by_default_each_keep_their_own_weights(
    plane: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply(plane, namespace, claim)

    def logs() -> str:
        return "\n".join(str(status(plane, namespace, name)) for name in JOBS) + kubelet.logs()[-4000:]

    with operator(namespace):
        for name in JOBS:
            apply(plane, namespace, on_the_claim_by_default(name))
        for name in JOBS:
            wait_until(epoch_reached(plane, namespace, name, 2), DEADLINE_S, f"{name}: epoch 2", details=logs)
        for name in JOBS:
            plane.kubectl("annotate", "tj", name, "-n", namespace, f"stopline.dev/stop=enough for {name}")
        for name in JOBS:
            wait_until(ended(plane, namespace, name), DEADLINE_S, f"{name}: the stop to end", details=logs)
            wait_until(event_posted(plane, namespace, name, "CheckpointSaved", "Normal"), DEADLINE_S, "Event")
    root = kubelet.claim_folder(namespace, CLAIM)
    folders = {}
    for name in JOBS:
        stopped = get(plane, namespace, "tj", name)
        finished = find_condition(stopped["status"], "Finished") or {}
        assert (stopped["status"]["phase"], finished.get("reason")) == ("Stopped", "CheckpointSaved"), (
            finished
        )
        checkpoint = stopped["status"]["checkpoint"]
        weights = Path(checkpoint["uri"])
        assert weights.is_relative_to(root), f"{weights} is not on the claim {root}"
        folders[name] = weights.parent
        assert_reproduces_outputs(verify_blob(weights.read_bytes(), checkpoint))  # sha256 and bytes match
        last = json.loads((weights.parent / "last.json").read_text())
        assert (last["job"], last["uri"], last["sha256"]) == (name, checkpoint["uri"], checkpoint["sha256"])
    assert folders["alpha"] != folders["beta"]
    assert not folders["alpha"].is_relative_to(folders["beta"])
    assert not folders["beta"].is_relative_to(folders["alpha"])
