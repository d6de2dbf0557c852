"""A Hugging Face `transformers.Trainer` callback on the same Run: reports each evaluation as a round,
stops every rank at the same step, and keeps the Trainer's own checkpoint as stopline's.

Import it only where transformers is installed (stopline-trainer[hf]):
`from stopline_trainer.huggingface import StoplineCallback`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .extras import require

require("hf", "transformers", "stopline_trainer.huggingface")
from transformers import (  # noqa: E402 (after the check that names the extra to install)
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy  # noqa: E402

from .run import Run  # noqa: E402


class StoplineCallback(TrainerCallback):
    """`Trainer(..., callbacks=[StoplineCallback(run)])`; resume with
    `trainer.train(resume_from_checkpoint=run.resume_path())`.

    - Each evaluation is a round: on_evaluate reports its metrics (`eval_loss`, ...: make the job's
      objective one of them) with the global step, the Trainer's epoch (as the metric `epoch`) and the
      round (`eval_round`, counted from 1, the unit the operator's criteria count); the Trainer's logs
      between evaluations (`loss`, `learning_rate`, ...) go into the round in progress.
    - The ranks agree on a stop after each evaluation (every rank evaluates), with every_n_steps=N also
      every N optimiser steps, and at each epoch's end when the Trainer does not evaluate: one all-reduce
      each, none in between. Leave the run's check_every at 1. On a stop the callback sets
      `control.should_training_stop` and `control.should_save`, so every rank stops at the same step and
      the Trainer writes its own `checkpoint-<step>` (model, optimizer, scheduler, RNG, trainer state).
    - Every checkpoint the Trainer saves (its save_strategy, and the one on a stop) is registered with
      `run.register`: copied under the checkpoint URI with its file list, named in the termination message.
      register=False leaves the Trainer's checkpoints alone.
    """

    def __init__(self, run: Run, *, every_n_steps: int = 0, register: bool = True) -> None:
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps}: 0 (at evaluations only) or more")
        self.run = run
        self.every_n_steps = every_n_steps
        self.register = register
        self.rounds = 0  # evaluations so far, counted on from a resumed checkpoint's

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.run.eval_round is None:  # count rounds from the start: logs before the first go to round 1
            self.run.eval_round = 0
        self.rounds = self.run.eval_round  # a resumed run's manifest says how many rounds it had done

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.run.report(state.epoch or 0.0, state.global_step, **_scalars(logs))

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.rounds += 1
        self.run.report(state.epoch or 0.0, state.global_step, eval_round=self.rounds, **_scalars(metrics))
        self._agree(control)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._agree(control)

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if args.eval_strategy == IntervalStrategy.NO:  # no evaluation to agree after: the epoch's end
            self._agree(control)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.register:
            folder = Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.run.register(folder, step=state.global_step)

    def _agree(self, control: TrainerControl) -> None:
        if self.run.should_stop():
            control.should_training_stop = True
            control.should_save = True


def _scalars(logs: dict[str, Any] | None) -> dict[str, float]:
    """The numbers of a Trainer log or metrics dict; its own `epoch` and our keyword left out."""
    return {
        k: float(v)
        for k, v in (logs or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("epoch", "eval_round")
    }
