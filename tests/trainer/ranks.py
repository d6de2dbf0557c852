"""The bodies of the trainer tier's two-rank tests, run in processes of their own (support.run_ranks).

Kept light on purpose: the fork server imports this module once for the tier, and each rank is forked
with it loaded, so it imports what the ranks use (torch, DCP, transformers, stopline_trainer) and nothing
of pytest, the operator or the local cluster.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState

from scripts import load_script
from stopline_trainer import Config, Run
from stopline_trainer.huggingface import StoplineCallback

EXAMPLES = Path(__file__).resolve().parents[2] / "trainer-image" / "examples"
ROWS = 64
EVAL_STEPS = 5


def rank_config(folder: Path, log: str, rank: int, token: str, *, job: str) -> Config:
    """Rank `rank` of two, one per "pod": its own endpoint and termination log, one checkpoint folder."""
    return Config(
        job=job,
        namespace="ml",
        metrics_port=0,
        bind_address="127.0.0.1",
        checkpoint_uri=str(folder / "ckpt"),
        control_token=token,
        termination_log=folder / log,
        rank=rank,
        world_size=2,
    )


def full_weights() -> torch.Tensor:
    return torch.arange(ROWS * 8, dtype=torch.float32).reshape(ROWS, 8) / 7


def dcp_rank(rank: int, tmp: str, port: int, token: str) -> None:
    """One rank of two (gloo): shards a tensor, saves it with DCP into this rank's own folder (as on a
    node's own disk), registers it with every rank, then resumes and loads its shard back with DCP."""
    torch.set_num_threads(1)  # two cores, two ranks
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        folder = Path(tmp) / f"rank{rank}" / "dcp-step-12"
        state = {"w": distribute_tensor(full_weights(), mesh, [Shard(0)]), "step": torch.tensor(12)}
        dcp_save(state, checkpoint_id=folder)
        run = Run(rank_config(Path(tmp), f"rank{rank}.log", rank, token, job="llm"), handle_signals=False)
        with run:
            run.report(3, 12, val_loss=0.5)
            manifest = run.register(folder)
        assert run.last_manifest == manifest
        again = Run(rank_config(Path(tmp), f"again{rank}.log", rank, token, job="llm"))
        ckpt = again.resume()
        assert ckpt is not None and ckpt.path is not None
        shard: DTensor = distribute_tensor(torch.zeros(ROWS, 8), mesh, [Shard(0)])
        into = {"w": shard, "step": torch.tensor(0)}
        dcp_load(into, checkpoint_id=ckpt.path)
        (Path(tmp) / f"rank{rank}.json").write_text(
            json.dumps(
                {
                    "files": list(ckpt.files),
                    "shard": shard.to_local().tolist(),
                    "full": shard.full_tensor().tolist(),
                    "step": int(into["step"]),
                    "uri": manifest.uri,
                }
            )
        )
    finally:
        dist.destroy_process_group()


def example() -> ModuleType:
    return load_script(EXAMPLES / "hf_train.py", "stopline_example_hf_train")


class Steps(TrainerCallback):
    """The global steps the Trainer ran, as on_step_end saw them."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.seen.append(state.global_step)


def hf_trainer(hf: ModuleType, tmp_path: Path, run: Run, max_steps: int, steps: Steps) -> Trainer:
    return Trainer(
        model=hf.make_model(),
        args=hf.training_args(str(tmp_path / "out"), max_steps, EVAL_STEPS),
        train_dataset=hf.Counting(512, seed=1),
        eval_dataset=hf.Counting(32, seed=2),
        callbacks=[StoplineCallback(run), steps],
    )


def hf_rank(rank: int, tmp: str, master_port: int, ports: list[int], token: str) -> None:
    """One of two ranks (gloo) training the example's GPT-2 under DDP, each serving its own endpoint as
    two pods would; it writes where it stopped."""
    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(master_port),
        GLOO_SOCKET_IFNAME="lo",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",  # else accelerate gives each "pod" all the cores: 4 threads thrash on 2
    )
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        folder = Path(tmp)
        config = replace(
            rank_config(folder, f"rank{rank}.log", rank, token, job="gpt"), metrics_port=ports[rank]
        )
        steps = Steps()
        with Run(config, handle_signals=False) as run:
            trained = hf_trainer(example(), folder, run, 2000, steps)
            trained.train()
        (folder / f"rank{rank}.json").write_text(json.dumps({"steps": steps.seen}))
    finally:
        dist.destroy_process_group()
