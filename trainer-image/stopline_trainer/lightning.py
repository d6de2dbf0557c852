"""A Lightning callback on the same Run: reports logged metrics, stops all ranks together, saves weights.

Import it only where lightning is installed: `from stopline_trainer.lightning import StoplineCallback`.
"""

from __future__ import annotations

from typing import Any

from .extras import require

require("lightning", "lightning", "stopline_trainer.lightning")
import lightning.pytorch as pl  # noqa: E402 (after the check that names the extra to install)
import torch  # noqa: E402

from .run import Run  # noqa: E402


class StoplineCallback(pl.Callback):
    """Resumes the weights at fit start, sets trainer.should_stop at the agreed step, saves at fit end.

    The ranks agree on a stop at each training epoch's end (after its validation), so a fit that is
    not asked to stop runs no collective of stopline's between; with every_n_batches=N they also agree
    every N training batches, for epochs longer than a stop may wait. Leave the run's check_every at 1:
    the callback picks the boundaries.

    Lightning's own SIGTERM handler aborts fit with an exception, which would skip the save, so the
    callback re-installs stopline's handlers once training starts (Lightning restores them after fit).
    """

    def __init__(self, run: Run, *, resume: bool = True, every_n_batches: int = 0) -> None:
        if every_n_batches < 0:
            raise ValueError(f"every_n_batches={every_n_batches}: 0 (epoch ends only) or more")
        self.run = run
        self.resume = resume
        self.every_n_batches = every_n_batches
        self._batches = 0  # training batches so far, the same count on every rank

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.resume:
            ckpt = self.run.resume()
            if ckpt is not None:
                pl_module.load_state_dict(ckpt.state["state_dict"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run.install_signal_handlers()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.run.report(trainer.current_epoch + 1, trainer.global_step, **_scalars(trainer.callback_metrics))
        self._batches += 1
        if self.every_n_batches and self._batches % self.every_n_batches == 0:
            self._agree(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._agree(trainer)

    def _agree(self, trainer: pl.Trainer) -> None:
        if self.run.should_stop():
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = _scalars(trainer.callback_metrics)
            self.run.report(trainer.current_epoch + 1, trainer.global_step, **metrics)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run.save({"state_dict": pl_module.state_dict()})


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
