"""A Lightning fit wired to stopline: a small regression on generated data, preemptible and resumable.

The callback stops every rank at an epoch's end when stopline asks (POST /stop, SIGTERM), keeps the whole
trainer state (the .ckpt ModelCheckpoint writes: optimizer, loops), and a restarted pod resumes the fit from
it with fit(ckpt_path=run.resume_path()): the next epoch, the same step, the same optimizer state.

    python lightning_train.py --max-epochs 50 --batches-per-epoch 8
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import lightning.pytorch as lightning
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import stopline_trainer
from stopline_trainer.lightning import StoplineCallback


class Regression(lightning.LightningModule):
    def __init__(self, lr: float = 1e-2, sleep_per_batch: float = 0.0) -> None:
        super().__init__()
        self.lr = lr
        self.sleep_per_batch = sleep_per_batch  # stands in for a longer step (a bigger model, a GPU)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        if self.sleep_per_batch:
            time.sleep(self.sleep_per_batch)
        return loss

    def validation_step(self, batch: Any, _: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def make_data(batches: int, batch_size: int = 32) -> DataLoader[tuple[torch.Tensor, ...]]:
    x = torch.randn(batches * batch_size, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=batch_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--batches-per-epoch", type=int, default=8)
    p.add_argument("--sleep-per-batch", type=float, default=0.0, help="seconds to sleep per batch (slows it)")
    p.add_argument("--every-n-batches", type=int, default=0, help="also agree on a stop every N batches")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    run = stopline_trainer.start()
    try:
        data = make_data(args.batches_per_epoch)
        trainer = lightning.Trainer(
            max_epochs=args.max_epochs,
            logger=False,
            enable_checkpointing=False,  # stopline keeps the state; add ModelCheckpoint for more
            enable_progress_bar=False,
            callbacks=[StoplineCallback(run, every_n_batches=args.every_n_batches)],
        )
        trainer.fit(
            Regression(sleep_per_batch=args.sleep_per_batch), data, data, ckpt_path=run.resume_path()
        )  # None on a fresh start
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
