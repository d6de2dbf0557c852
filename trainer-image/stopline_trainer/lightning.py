"""A Lightning callback on the same Run: reports logged metrics, stops all ranks together, and keeps the
whole trainer state (what ModelCheckpoint writes) so a preempted fit resumes where it was.

Import it only where lightning is installed: `from stopline_trainer.lightning import StoplineCallback`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from .extras import require

require("lightning", "lightning", "stopline_trainer.lightning")
import lightning.pytorch as pl  # noqa: E402 (after the check that names the extra to install)
import torch  # noqa: E402

from .run import Run  # noqa: E402

log = logging.getLogger(__name__)


class StoplineCallback(pl.Callback):
    """Sets trainer.should_stop at the agreed step and keeps the trainer's whole state at fit end.

    `trainer.fit(model, ..., ckpt_path=run.resume_path())` resumes a preempted fit from the kept state: its
    epoch and global step, the optimizers' and schedulers' state, the loops' progress, the callbacks'.

    The ranks agree on a stop at each training epoch's end (after its validation), so a fit that is
    not asked to stop runs no collective of stopline's between; with every_n_batches=N they also agree
    every N training batches, for epochs longer than a stop may wait. Leave the run's check_every at 1:
    the callback picks the boundaries.

    At fit end (a stop, a SIGTERM, or the last epoch) every rank calls `trainer.save_checkpoint` (the
    .ckpt ModelCheckpoint writes; rank 0 writes it, into `workdir`, by default a temporary folder) and
    `run.register`s it, which copies it under the checkpoint URI; the local file is then removed.
    full_state=False keeps only the module's state_dict (run.save, as before).

    Lightning's own SIGTERM handler aborts fit with an exception, which would skip the save, so the
    callback re-installs stopline's handlers once training starts (Lightning restores them after fit).
    """

    def __init__(
        self,
        run: Run,
        *,
        resume: bool = True,
        every_n_batches: int = 0,
        full_state: bool = True,
        workdir: str | Path | None = None,
    ) -> None:
        if every_n_batches < 0:
            raise ValueError(f"every_n_batches={every_n_batches}: 0 (epoch ends only) or more")
        self.run = run
        self.resume = resume
        self.every_n_batches = every_n_batches
        self.full_state = full_state
        self.workdir = Path(workdir) if workdir is not None else None
        self._batches = 0  # training batches so far, the same count on every rank

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Without fit(ckpt_path=...), the kept checkpoint's weights at least (the state of the last
        fit is not restored then: say so)."""
        if not self.resume or trainer.ckpt_path is not None:
            return
        ckpt = self.run.resume()
        if ckpt is None:
            return
        if ckpt.path is None:  # a state_dict saved by full_state=False
            pl_module.load_state_dict(ckpt.state["state_dict"])
            return
        log.warning(
            "stopline: loading only the weights of %s: fit(..., ckpt_path=run.resume_path()) resumes the "
            "whole state (epoch, optimizers, schedulers, loops)",
            ckpt.manifest.uri,
        )
        state = torch.load(ckpt.path, map_location="cpu", weights_only=False)  # the job's own .ckpt
        pl_module.load_state_dict(state["state_dict"])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.run.install_signal_handlers()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Progress every batch; the logged metrics only every `log_every_n_steps` batches, as Lightning's
        loggers read them: each read copies every logged scalar from the GPU, a sync that stalls the step.
        The epoch's metrics are read at its validation's end, whatever the cadence."""
        self._batches += 1
        # set by Trainer(log_every_n_steps=...), not declared on the class; 0: no step logging
        every = int(getattr(trainer, "log_every_n_steps", 50))
        logged = every > 0 and self._batches % every == 0
        metrics = _scalars(trainer.callback_metrics) if logged else {}
        self.run.report(trainer.current_epoch + 1, trainer.global_step, **metrics)
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
        if not self.full_state:
            self.run.save({"state_dict": pl_module.state_dict()})
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        with tempfile.TemporaryDirectory(prefix="stopline-", dir=self.workdir) as folder:
            path = Path(folder) / f"epoch={epoch}-step={step}.ckpt"  # as ModelCheckpoint names it
            trainer.save_checkpoint(path)  # every rank: a barrier; rank 0 writes
            self.run.register(path, step=step)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
