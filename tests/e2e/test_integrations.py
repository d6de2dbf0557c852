"""The trainer integrations through the operator: a Hugging Face Trainer run (trainer-image/examples/
hf_train.py) as a TrainingJob, stopped by a criterion that counts its evaluation rounds; the checkpoint the
Trainer wrote and stopline kept (status.checkpoint names its file list) loads back with from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.support import CLAIM, DEADLINE_S, training_job
from operatorharness import apply, get, status
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet

pytestmark = pytest.mark.e2e

transformers = pytest.importorskip("transformers")


def test_a_hugging_face_trainer_is_stopped_at_an_evaluation_round_and_its_checkpoint_loads(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    args = ("--max-steps", "4000", "--eval-steps", "20", "--output-dir", "/tmp/stopline-hf-out")
    job = training_job("hf", command=("python", "trainer-image/examples/hf_train.py"), args=args)
    job["spec"]["objective"] = {"metric": "eval_loss", "mode": "min"}
    job["spec"]["metrics"]["interval"] = "1s"
    job["spec"]["criteria"] = [{"name": "rounds", "budget": {"maxEpochs": 3}}]
    apply(story, namespace, job)
    wait_until(
        lambda: status(story, namespace, "hf").get("phase") in ("Stopped", "Succeeded", "Failed"),
        DEADLINE_S,
        "hf to end",
        details=lambda: f"{status(story, namespace, 'hf')}\n{kubelet.logs()[-4000:]}",
    )
    found = get(story, namespace, "tj", "hf")["status"]
    assert (found["phase"], found.get("stopReason", {}).get("type")) == ("Stopped", "Budget"), found
    checkpoint = found["checkpoint"]
    assert checkpoint["epoch"] >= 3, "the budget counts evaluation rounds; the stop lands at the next one"
    files = Path(checkpoint["uri"])
    assert files.parent.parent == kubelet.claim_folder(namespace, CLAIM) / "runs" / "hf", files
    listed = {entry["path"] for entry in json.loads(files.read_bytes())["files"]}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= listed, listed
    model = transformers.AutoModelForCausalLM.from_pretrained(files.parent)
    assert sum(p.numel() for p in model.parameters()) > 0
