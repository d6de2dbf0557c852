"""A step-based run counts evaluation rounds: report(..., eval_round=k) makes the round what the operator
reads as the epoch (stopline_epoch, /epochs, a checkpoint's epoch), and a resumed run counts on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stopline_trainer import Config, Run

from .support import TOKEN, Endpoint

pytestmark = pytest.mark.trainer

EVAL_EVERY = 10


def config(tmp_path: Path, name: str) -> Config:
    return Config(
        metrics_port=0,
        bind_address="127.0.0.1",
        checkpoint_uri=str(tmp_path / "ckpt"),
        control_token=TOKEN,
        termination_log=tmp_path / name,
    )


def test_evaluation_rounds_are_the_epochs_the_operator_reads_and_a_resumed_run_counts_on(
    tmp_path: Path,
) -> None:
    with Run(config(tmp_path, "first"), handle_signals=False) as run:
        endpoint = Endpoint(run.server.port)
        run.eval_round = 0  # count rounds from the start: the steps before the first evaluation are round 1
        for step in range(1, 3 * EVAL_EVERY + 1):
            run.report(step / 1000, step, train_loss=1 / step)  # the framework's epoch: a fraction of one
            if step % EVAL_EVERY == 0:
                run.report(step / 1000, step, eval_round=step // EVAL_EVERY, val_loss=10 / step)
        metrics = endpoint.metrics()
        assert metrics is not None
        assert metrics["stopline_epoch"] == 3 and metrics["stopline_step"] == 30
        assert metrics['stopline_metric_epoch{name="val_loss"}'] == 3
        assert metrics['stopline_metric{name="epoch"}'] == 0.03  # the framework's own epoch, as a metric
        status, body = endpoint.get("/epochs?after=0")
        assert status == 200
        records = json.loads(body)["epochs"]
        assert [(r["epoch"], r["step"]) for r in records] == [(1, 10), (2, 20), (3, 30)]
        assert records[1]["metrics"] == {"train_loss": 1 / 20, "epoch": 0.02, "val_loss": 0.5}
        manifest = run.save({"w": torch.ones(1)})
        assert manifest is not None and (manifest.epoch, manifest.eval_round, manifest.step) == (3, 3, 30)

        run.report(0.031, 31, train_loss=0.01)  # after round 3's evaluation: round 4 is in progress
        metrics = endpoint.metrics()
        assert metrics is not None and metrics["stopline_epoch"] == 4
        with pytest.raises(ValueError, match="counted from 1"):
            run.report(0.031, 31, eval_round=0)

    with Run(config(tmp_path, "again"), handle_signals=False) as again:
        ckpt = again.resume()
        assert ckpt is not None and (again.epoch, again.eval_round) == (3, 3)
        again.report(0.031, 31, train_loss=0.02)
        again.report(0.04, 40, eval_round=4, val_loss=0.2)
        assert again.epoch == 4
        status, body = Endpoint(again.server.port).get("/epochs?after=2")
        assert [r["epoch"] for r in json.loads(body)["epochs"]] == [3, 4]
