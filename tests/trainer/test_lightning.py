"""The Lightning callback: same Run, a /stop over HTTP ends fit at a batch boundary with the weights saved."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as lightning
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stopline_local.controlplane import free_port
from stopline_trainer import Config, Run
from stopline_trainer.lightning import StoplineCallback

from .support import (
    TOKEN,
    Endpoint,
    assert_points_at,
    counting_all_reduces,
    read_local_checkpoint,
    wait_until,
)

pytestmark = pytest.mark.trainer

BATCHES_PER_EPOCH = 8


class Regression(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")
@pytest.mark.parametrize("every_n_batches", [0, 3])
def test_callback_reports_stops_on_http_and_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_n_batches: int
) -> None:
    """The ranks agree at epoch ends (and every N batches when asked), not at every batch."""
    asked = counting_all_reduces(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=256 // BATCHES_PER_EPOCH)
    ckpt = tmp_path / "ckpt"
    config = Config(
        metrics_port=free_port(),
        bind_address="127.0.0.1",
        checkpoint_uri=str(ckpt),
        control_token=TOKEN,
        termination_log=tmp_path / "termination-log",
    )
    with Run(config) as run:
        probe = Endpoint(run.server.port)  # probed from a thread, since fit() blocks this one
        stopper = threading.Thread(
            target=lambda: (
                wait_until(lambda: (probe.metrics() or {}).get("stopline_epoch", 0) >= 2, "epoch 2"),
                probe.post_stop({"reason": "lightning test"}),
            ),
            daemon=True,
        )
        stopper.start()
        module = Regression()
        trainer = lightning.Trainer(
            max_epochs=10_000,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[StoplineCallback(run, every_n_batches=every_n_batches)],
        )
        trainer.fit(module, data, data)
        stopper.join(30)

    manifest, state = read_local_checkpoint(ckpt)
    assert manifest["stopReason"] == "lightning test"
    assert 2 <= manifest["epoch"] < 10_000 and manifest["metrics"]["val_loss"] is not None
    batches = manifest["step"]  # one optimiser step a batch
    at_epoch_end = batches % BATCHES_PER_EPOCH == 0
    if every_n_batches:
        assert at_epoch_end or batches % every_n_batches == 0, batches
        # a collective at each epoch end and every N batches; once agreed at a batch, the epoch end is free
        both = at_epoch_end and batches % every_n_batches == 0
        assert len(asked) == batches // BATCHES_PER_EPOCH + batches // every_n_batches - both
    else:
        assert at_epoch_end, batches
        assert len(asked) == batches // BATCHES_PER_EPOCH  # one agreement an epoch, none per batch
    assert_points_at(tmp_path / "termination-log", manifest)
    fresh = Regression()
    fresh.load_state_dict(state["state_dict"])
    torch.testing.assert_close(fresh(x), module(x))
