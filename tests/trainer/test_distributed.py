"""Two real ranks (torch.distributed, gloo): a stop sent to one rank stops both at the same step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stopline_local.controlplane import free_port

from .conftest import StartTrainer
from .support import assert_points_at, assert_reproduces_outputs, read_local_checkpoint

pytestmark = pytest.mark.trainer


@pytest.mark.parametrize("check_every", [1, 4])
def test_stop_sent_to_rank_1_only_stops_both_ranks_at_the_same_step(
    start_trainer: StartTrainer, tmp_path: Path, check_every: int
) -> None:
    """check_every 4: the example agrees every 4th step (one all-reduce per 4 steps), both ranks alike."""
    ckpt = tmp_path / "ckpt"
    common = {
        "STOPLINE_CHECKPOINT_URI": str(ckpt),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GLOO_SOCKET_IFNAME": "lo",
    }
    flags = ["--epochs", "1000", "--steps-per-epoch", "20", "--sleep-per-step", "0.02"]
    flags += ["--check-every", str(check_every)]
    rank0 = start_trainer(*flags, env={**common, "RANK": "0"}, name="rank0")
    rank1 = start_trainer(*flags, env={**common, "RANK": "1"}, name="rank1")

    rank0.wait_metric("stopline_step", 3)
    step = rank1.wait_metric("stopline_step", 3)
    assert rank1.post_stop({"reason": "only rank 1 was told"})[0] == 202

    # a rank left behind would block in the next all-reduce: the deadline of wait_exit catches that hang
    assert rank1.wait_exit() == 0, rank1.log()
    assert rank0.wait_exit() == 0, rank0.log()
    manifest, state = read_local_checkpoint(ckpt)
    rank1_stop = json.loads(rank1.termination_log.read_bytes())
    assert rank1_stop["rank"] == 1 and rank1_stop["stopReason"] == "only rank 1 was told"
    assert manifest["step"] == rank1_stop["step"] >= step
    assert manifest["epoch"] == rank1_stop["epoch"]
    assert (manifest["step"] + 1) % check_every == 0  # the example asks before each step: step + 1 calls
    assert manifest["worldSize"] == 2
    assert manifest["stopReason"] == "stop requested by another rank"
    assert_points_at(rank0.termination_log, manifest)
    assert_reproduces_outputs(state)
