"""The Hugging Face Trainer callback: a tiny GPT-2 from its config (no download), on CPU. A POST /stop ends
training after the next evaluation, the Trainer's own checkpoint is kept, loads with from_pretrained, and
a new Trainer resumes from it at the saved global step."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from stopline_local.controlplane import free_port
from stopline_trainer import Config, Run
from stopline_trainer.checkpoint import FILES_MANIFEST

from .ranks import EVAL_STEPS, Steps, example, hf_rank, hf_trainer
from .support import TOKEN, Endpoint, assert_points_at, run_ranks, wait_until

pytestmark = pytest.mark.trainer


def run_config(tmp_path: Path, name: str) -> Config:
    return Config(
        job="gpt",
        namespace="ml",
        metrics_port=free_port(),
        bind_address="127.0.0.1",
        checkpoint_uri=str(tmp_path / "ckpt"),
        control_token=TOKEN,
        termination_log=tmp_path / name,
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """A model this small trains fastest on one thread; on a shared 2-core box two thrash (5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_a_stop_ends_training_after_an_evaluation_with_the_trainers_checkpoint_kept_and_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = example()
    steps = Steps()
    with Run(run_config(tmp_path, "termination-log"), handle_signals=False) as run:
        probe = Endpoint(run.server.port)
        stopper = threading.Thread(
            target=lambda: (
                # round 3 in progress: two evaluations done
                wait_until(lambda: (probe.metrics() or {}).get("stopline_epoch", 0) >= 3, "round 3"),
                probe.post_stop({"reason": "hf test"}),
            ),
            daemon=True,
        )
        stopper.start()
        first = hf_trainer(hf, tmp_path, run, 2000, steps)
        first.train()
        stopper.join(30)
        stopped_at = first.state.global_step

    # every rank stops at the same step: an evaluation's, agreed right after it
    assert stopped_at < 2000 and stopped_at % EVAL_STEPS == 0 and steps.seen[-1] == stopped_at
    manifest = json.loads((tmp_path / "ckpt" / "last.json").read_bytes())
    rounds = stopped_at // EVAL_STEPS
    assert (manifest["step"], manifest["epoch"], manifest["evalRound"]) == (stopped_at, rounds, rounds)
    assert manifest["stopReason"] == "hf test" and manifest["format"] == "files"
    assert manifest["metrics"]["eval_loss"] > 0 and 0 < manifest["metrics"]["epoch"] < 1
    assert [record["epoch"] for record in manifest["epochs"]] == list(range(1, rounds + 1))
    assert_points_at(tmp_path / "termination-log", manifest)
    listed = {f["path"] for f in json.loads(Path(manifest["uri"]).read_bytes())["files"]}
    assert {
        "model.safetensors",
        "config.json",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
    } <= listed
    assert Path(manifest["uri"]).name == FILES_MANIFEST

    again = Run(run_config(tmp_path, "again"), handle_signals=False)
    path = again.resume_path()
    assert path is not None and Path(path).parent == tmp_path / "ckpt"
    loaded = GPT2LMHeadModel.from_pretrained(path)
    assert first.model is not None
    for name, tensor in first.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)

    resumed_steps = Steps()
    with again:
        second = hf_trainer(hf, tmp_path, again, stopped_at + EVAL_STEPS, resumed_steps)
        second.train(resume_from_checkpoint=path)
    assert resumed_steps.seen == list(range(stopped_at + 1, stopped_at + EVAL_STEPS + 1))
    # the rounds count on from the checkpoint's: the resumed run's evaluation is round rounds + 1
    assert again.eval_round == rounds + 1
    [[round_number, _]] = again.metrics.epochs.tail("eval_loss", 1)
    assert round_number == rounds + 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_a_stop_sent_to_rank_1_stops_both_ranks_of_a_ddp_trainer_at_the_same_step(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]

    def stop_rank_1() -> None:
        probe = Endpoint(ports[1])
        wait_until(lambda: (probe.metrics() or {}).get("stopline_epoch", 0) >= 2, "round 2 on rank 1")
        probe.post_stop({"reason": "only rank 1 was told"})

    run_ranks(hf_rank, str(tmp_path), free_port(), ports, TOKEN, beside=stop_rank_1)

    steps = [json.loads((tmp_path / f"rank{rank}.json").read_text())["steps"] for rank in (0, 1)]
    assert steps[0] == steps[1] and steps[0][-1] % EVAL_STEPS == 0 and steps[0][-1] < 2000
    manifest = json.loads((tmp_path / "ckpt" / "last.json").read_bytes())
    assert (manifest["step"], manifest["worldSize"]) == (steps[0][-1], 2)
    assert manifest["stopReason"] == "stop requested by another rank"
    rank_1 = json.loads((tmp_path / "rank1.log").read_bytes())
    assert (rank_1["step"], rank_1["stopReason"]) == (manifest["step"], "only rank 1 was told")
    listed = {f["path"] for f in json.loads(Path(manifest["uri"]).read_bytes())["files"]}
    assert {"model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= listed
