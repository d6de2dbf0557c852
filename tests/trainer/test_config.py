"""The trainer's settings: the control token is never shown, and child processes never inherit it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stopline_trainer import Config, ConfigError, config

pytestmark = pytest.mark.trainer

SECRET = "tok-SECRET-0123456789"


def test_the_token_is_not_in_the_repr() -> None:
    settings = Config.from_env({"STOPLINE_JOB": "mlp", "STOPLINE_CONTROL_TOKEN": SECRET})
    assert settings.control_token == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "job='mlp'" in repr(settings)


def test_reading_the_process_environment_takes_the_token_out_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_taken_token", "")  # no earlier test's token
    monkeypatch.setenv("STOPLINE_CONTROL_TOKEN", SECRET)
    monkeypatch.setenv("STOPLINE_JOB", "mlp")

    assert Config.from_env().control_token == SECRET
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('STOPLINE_CONTROL_TOKEN'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == "None"  # a DataLoader worker or tracker started now never sees it
    again = Config.from_env()  # e.g. start() without a config after the user read one
    assert (again.control_token, again.job) == (SECRET, "mlp")


def test_torchrun_workers_take_their_ranks_from_torchrun_and_only_local_rank_0_serves() -> None:
    pod = {"RANK": "1", "WORLD_SIZE": "2", "JOB_COMPLETION_INDEX": "1"}  # what the operator gives pod 1
    alone = Config.from_env(pod)
    assert (alone.rank, alone.world_size, alone.local_rank, alone.local_world_size) == (1, 2, 0, 1)
    assert (alone.node_rank, alone.pod_index, alone.serves_endpoint) == (None, 1, True)

    # torchrun --nnodes 2 --nproc-per-node 2 --node-rank 1 replaces RANK and WORLD_SIZE for its workers
    worker = {**pod, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    worker |= {"GROUP_RANK": "1", "TORCHELASTIC_RUN_ID": "none"}
    second = Config.from_env(worker)
    assert (second.rank, second.world_size, second.local_rank, second.local_world_size) == (3, 4, 1, 2)
    assert (second.node_rank, second.pod_index, second.serves_endpoint) == (1, 1, False)
    first = Config.from_env({**worker, "RANK": "2", "LOCAL_RANK": "0"})
    assert (first.rank, first.local_rank, first.serves_endpoint) == (2, 0, True)

    with pytest.raises(ConfigError, match="LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"):
        Config.from_env({**worker, "LOCAL_RANK": "2"})
