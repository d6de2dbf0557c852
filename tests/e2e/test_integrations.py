"""The trainer integrations through the operator: a Hugging Face Trainer run (trainer-image/examples/
hf_train.py) as a TrainingJob, stopped by a criterion that counts its evaluation rounds; the checkpoint the
Trainer wrote and stopline kept (status.checkpoint names its file list) loads back with from_pretrained.
Two ranks that save with torch.distributed.checkpoint: every rank's files registered, verified and loaded
back with DCP. (A Lightning fit preempted and resumed by Kueue is in test_kueue.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from e2e.support import CLAIM, epoch_reached, finish, training_job
from operatorharness import apply
from stopline_local.controlplane import ControlPlane
from stopline_local.kubelet import LocalKubelet
from trainer.support import load_example

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
    found = finish(story, kubelet, namespace, "hf")["status"]
    assert (found["phase"], found.get("stopReason", {}).get("type")) == ("Stopped", "Budget"), found
    checkpoint = found["checkpoint"]
    assert checkpoint["epoch"] >= 3, "the budget counts evaluation rounds; the stop lands at the next one"
    files = Path(checkpoint["uri"])
    assert files.parent.parent == kubelet.claim_folder(namespace, CLAIM) / "runs" / "hf", files
    listed = {entry["path"] for entry in json.loads(files.read_bytes())["files"]}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= listed, listed
    model = transformers.AutoModelForCausalLM.from_pretrained(files.parent)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP's load here, in one process
def test_two_ranks_saving_with_dcp_are_stopped_and_every_file_is_kept_verified_and_loads_back(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    args = ("--epochs", "50", "--steps-per-epoch", "10", "--sleep-per-step", "0.05", "--checkpoint", "dcp")
    apply(story, namespace, training_job("dcp", replicas=2, args=args))
    epoch_reached(story, namespace, "dcp", 2)
    story.kubectl("annotate", "tj", "dcp", "-n", namespace, "stopline.dev/stop=enough")
    stopped = finish(story, kubelet, namespace, "dcp")
    found = stopped["status"]
    assert (found["phase"], found["stopReason"]["type"]) == ("Stopped", "Manual"), found
    listing = Path(found["checkpoint"]["uri"])
    assert listing.name == "stopline-files.json"
    assert listing.parent.parent == kubelet.claim_folder(namespace, CLAIM) / "runs" / "dcp", listing
    blob, pointer = listing.read_bytes(), found["checkpoint"]
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == (pointer["bytes"], pointer["sha256"])
    files = json.loads(blob)["files"]
    for entry in files:  # each file as listed, on the claim
        data = (listing.parent / entry["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"]), entry
    names = {entry["path"] for entry in files}
    assert ".metadata" in names and any(name.endswith(".distcp") for name in names), names
    manifest = json.loads((listing.parent.parent / "last.json").read_bytes())
    assert manifest["worldSize"] == 2 and manifest["step"] == found["checkpoint"]["step"]

    example = load_example()
    model = example.make_model(128)
    into = {"model": model.state_dict(), "probe_output": torch.zeros(16, 1)}
    dcp_load(into, checkpoint_id=listing.parent)
    model.load_state_dict(into["model"])
    with torch.no_grad():
        torch.testing.assert_close(model(example.probe_input()), into["probe_output"])
    assert not torch.equal(into["probe_output"], torch.zeros(16, 1))
