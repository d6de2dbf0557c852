"""A Hugging Face Trainer wired to stopline: a tiny GPT-2 built from its config learns generated sequences.

No download: the model comes from GPT2Config (2 layers, 28k parameters), the tokens are generated (each
sequence counts up from a random start, modulo the vocabulary, so the loss falls quickly). Everything about
the pod comes from the stopline env contract; the job's objective is the Trainer's `eval_loss`, and the
operator's criteria count evaluation rounds (one every --eval-steps steps).

    python hf_train.py --max-steps 400 --eval-steps 20 --output-dir /tmp/hf-out

On a stop (POST /stop, SIGTERM) every rank stops after the next evaluation, the Trainer writes its own
checkpoint-<step> (model.safetensors, optimizer, scheduler, trainer state) and stopline keeps it; a restarted
pod resumes from it (Trainer.train(resume_from_checkpoint=...)) at the saved global step.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import stopline_trainer
from stopline_trainer import distributed
from stopline_trainer.huggingface import StoplineCallback

VOCAB = 64
LENGTH = 16


def make_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config)


class Counting(Dataset[dict[str, torch.Tensor]]):
    """Sequences that count up from a random start (mod VOCAB); labels are the inputs (the model shifts)."""

    def __init__(self, size: int, seed: int) -> None:
        starts = torch.randint(0, VOCAB, (size, 1), generator=torch.Generator().manual_seed(seed))
        self.ids = (starts + torch.arange(LENGTH)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def training_args(output_dir: str, max_steps: int, eval_steps: int, save_steps: int = 0) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=max_steps,
        eval_strategy="steps",
        eval_steps=eval_steps,
        logging_steps=eval_steps,
        save_strategy="steps" if save_steps else "no",  # "no": only the checkpoint of a stop is written
        save_steps=save_steps or 500,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        learning_rate=3e-3,
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        seed=0,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--eval-steps", type=int, default=20, help="an evaluation (a round) every N steps")
    p.add_argument("--save-steps", type=int, default=0, help="the Trainer's own saves (0: only on a stop)")
    p.add_argument("--output-dir", default="hf-out", help="where the Trainer writes checkpoint-<step>")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    distributed.init_from_env()  # several ranks: the Trainer uses the process group stopline agrees on
    run = stopline_trainer.start()
    try:
        trainer = Trainer(
            model=make_model(),
            args=training_args(args.output_dir, args.max_steps, args.eval_steps, args.save_steps),
            train_dataset=Counting(4096, seed=1),
            eval_dataset=Counting(64, seed=2),
            callbacks=[StoplineCallback(run)],
        )
        trainer.train(resume_from_checkpoint=run.resume_path())  # None on a fresh start
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
