"""What stopline's framework callbacks cost a training step: a Lightning fit and a Hugging Face Trainer
fit, each bare (no stopline) and with stopline's StoplineCallback on a Run, against each other.

--ranks processes (default 2) started by torchrun on this machine (CPU, gloo on loopback) run each
framework distributed: Lightning with strategy="ddp" (it finds torchelastic's env), the Trainer with
ddp_backend="gloo". A fit runs --steps training steps (one epoch) of a tiny linear model whose step
sleeps --step-ms (default 100): the step's compute happening elsewhere (a GPU) while the host waits.
Each round fits bare and with the callback (the order alternates from round to round), --rounds rounds,
interleaved. A timing callback notes time.perf_counter() at each training step's end; a fit's time per
step is (t[last] - t[warmup]) / (last - warmup), --warmup steps skipped, so the start and what runs
after the last step (the callbacks' agreement at the epoch's end, the checkpoint Lightning's callback
keeps at fit end) fall outside it. A mode's time per step is the slowest rank's, the median over the
rounds; overhead: with the callback less bare, per step and as a share of the step. On a shared box that
difference is mostly noise (each round's figures are printed beside the median), so the fit with the
callback also times the callback's own hooks (perf_counter around each call, inside the same window): the
cost itself, which the steps' jitter does not blur (a loaded CPU still slows it).

stopline's collectives (its distributed.any_rank, all_gather and from_rank_0) are counted by the step
after which they ran: by default the callbacks agree at epoch ends only, so none should run between two
steps. Figures are printed and written to bench/integrations/out/results.md; nothing is asserted.

Run: .venv/bin/python bench/integrations/run.py [--step-ms 100 --steps 200 --rounds 3 --ranks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out" / "results.md"
FRAMEWORKS = ("lightning", "hf")
MODES = ("bare", "stopline")
COLLECTIVES = ("any_rank", "all_gather", "from_rank_0")  # stopline_trainer.distributed's
BATCH = 4
FEATURES = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--step-ms", type=float, default=100.0, help="a training step's sleep (%(default)s)")
    parser.add_argument("--steps", type=int, default=200, help="training steps of a fit (%(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out first (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both modes, interleaved")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun's processes (%(default)s)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated (%(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="the results table (default: %(default)s)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one rank under torchrun: this framework
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)  # the ranks' shared folder
    return parser.parse_args(argv)


class Clock:
    """A fit's step ends (perf_counter), stopline's collectives and the time in its callback's hooks, each
    with the steps ended before it."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.collectives: list[tuple[str, int]] = []
        self.hooks: list[tuple[float, int]] = []  # (seconds in a hook of stopline's callback, steps ended)

    def timed(self, callback: Any) -> Any:
        """Time each hook the callback defines (the frameworks call them through getattr)."""
        for name, function in vars(type(callback)).items():
            if name.startswith("on_") and callable(function):
                hook = getattr(callback, name)

                def timed_hook(*args: Any, _hook: Any = hook, **kwargs: Any) -> Any:
                    started = time.perf_counter()
                    try:
                        return _hook(*args, **kwargs)
                    finally:
                        self.hooks.append((time.perf_counter() - started, len(self.ends)))

                setattr(callback, name, timed_hook)
        return callback

    def hooks_per_step_s(self, warmup: int) -> float:
        """The hooks' time inside the window: a call after step n - 1 ended is in step n's interval."""
        last = len(self.ends) - 1
        return sum(s for s, n in self.hooks if warmup < n <= last) / (last - warmup)

    def step_ended(self) -> None:
        self.ends.append(time.perf_counter())

    def per_step_s(self, warmup: int) -> float:
        last = len(self.ends) - 1
        return (self.ends[last] - self.ends[warmup]) / (last - warmup)


def count_collectives(clock: Callable[[], Clock]) -> None:
    """Wrap stopline_trainer.distributed's collectives (Run calls them through the module) to note each."""
    from stopline_trainer import distributed

    for name in COLLECTIVES:
        original = getattr(distributed, name)

        def noted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            c = clock()
            c.collectives.append((_name, len(c.ends)))
            return _original(*args, **kwargs)

        setattr(distributed, name, noted)


def stopline_run(scratch: Path, round_: int) -> Any:
    """A Run as a torchrun worker of a pod gets one, its Config built here rather than from the env."""
    from stopline_trainer import Config, Run

    rank = int(os.environ["RANK"])
    config = Config(
        metrics_port=0,
        bind_address="127.0.0.1",
        checkpoint_uri=str(scratch / f"checkpoints-{round_}"),  # the same on every rank, fresh each fit
        rank=rank,
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        local_world_size=int(os.environ["LOCAL_WORLD_SIZE"]),
        termination_log=scratch / f"termination-log-{round_}-{rank}",
    )
    return Run(config, handle_signals=False).start()


def lightning_fit(args: argparse.Namespace, clock: Clock, run: Any) -> None:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    step_s = args.step_ms / 1000

    class Sleepy(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(FEATURES, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            time.sleep(step_s)
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Timing(pl.Callback):
        def on_train_batch_end(self, *_: Any) -> None:
            clock.step_ended()

    callbacks: list[Any] = [Timing()]
    if run is not None:
        from stopline_trainer.lightning import StoplineCallback

        callbacks.insert(0, clock.timed(StoplineCallback(run)))
    n = args.steps * args.ranks * BATCH
    data = TensorDataset(torch.randn(n, FEATURES), torch.randn(n, 1))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.ranks,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    trainer.fit(Sleepy(), DataLoader(data, batch_size=BATCH))


def hf_fit(args: argparse.Namespace, clock: Clock, run: Any, output_dir: Path) -> None:
    import torch
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    step_s = args.step_ms / 1000

    class Sleepy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(FEATURES, 1)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            time.sleep(step_s)
            return {"loss": torch.nn.functional.mse_loss(self.layer(x), labels)}

    class Pairs(Dataset[dict[str, torch.Tensor]]):
        def __init__(self, n: int) -> None:
            self.x, self.y = torch.randn(n, FEATURES), torch.randn(n, 1)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": self.x[i], "labels": self.y[i]}

    class Timing(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.step_ended()

    callbacks: list[Any] = [Timing()]
    if run is not None:
        from stopline_trainer.huggingface import StoplineCallback

        callbacks.insert(0, clock.timed(StoplineCallback(run)))
    training_args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.steps,
        per_device_train_batch_size=BATCH,
        use_cpu=True,
        ddp_backend="gloo",
        report_to=[],
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    trainer = Trainer(
        model=Sleepy(),
        args=training_args,
        train_dataset=Pairs(args.steps * args.ranks * BATCH),  # one epoch of --steps steps
        callbacks=callbacks,
    )
    trainer.train()


def worker(args: argparse.Namespace) -> int:
    """One rank of one framework: each (round, mode) fit; writes a JSON line a fit into --scratch."""
    rank = int(os.environ["RANK"])
    clock = Clock()
    count_collectives(lambda: clock)
    lines = []
    for round_ in range(args.rounds):
        for mode in MODES if round_ % 2 == 0 else MODES[::-1]:
            clock = Clock()
            run = stopline_run(args.scratch, round_) if mode == "stopline" else None
            try:
                if args.worker == "lightning":
                    lightning_fit(args, clock, run)
                else:
                    hf_fit(args, clock, run, args.scratch / f"hf-out-{mode}-{round_}")
            finally:
                if run is not None:
                    run.close()
            if len(clock.ends) != args.steps:
                raise AssertionError(f"{args.worker} {mode}: {len(clock.ends)} steps, not {args.steps}")
            row = {"framework": args.worker, "mode": mode, "round": round_, "rank": rank}
            lines.append(
                json.dumps(
                    {
                        **row,
                        "per_step_s": clock.per_step_s(args.warmup),
                        "hooks_s": clock.hooks_per_step_s(args.warmup),
                        "collectives": clock.collectives,
                    }
                )
            )
    (args.scratch / f"{args.worker}-rank-{rank}.jsonl").write_text("\n".join(lines) + "\n")
    return 0


@dataclass(frozen=True)
class Row:
    framework: str
    per_step_s: dict[str, float]  # mode -> the slowest rank's time per step, median of the rounds
    rounds: dict[str, list[float]]  # mode -> the slowest rank's time per step in each round
    hooks_s: float  # time in stopline's hooks per step, the slowest rank's, median of the rounds
    collectives: list[tuple[str, int]]  # a fit with the callback on rank 0: (name, steps ended before it)
    between: int  # collectives of stopline's after one step and before the last, all fits and ranks

    @property
    def overhead_us(self) -> float:
        return (self.per_step_s["stopline"] - self.per_step_s["bare"]) * 1e6


def torchrun(args: argparse.Namespace, framework: str, scratch: Path) -> None:
    from stopline_local.controlplane import free_port

    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        __file__, "--worker", framework, "--scratch", str(scratch),
        "--step-ms", str(args.step_ms), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--rounds", str(args.rounds), "--ranks", str(args.ranks),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        print(done.stdout[-8000:], file=sys.stderr)
        raise SystemExit(f"{framework}: torchrun exited {done.returncode}")


def measure(args: argparse.Namespace, frameworks: list[str]) -> list[Row]:
    """Run each framework's ranks, then reduce their lines to one row per framework."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="stopline-bench-integrations-") as folder:
        for framework in frameworks:
            scratch = Path(folder) / framework
            scratch.mkdir()
            torchrun(args, framework, scratch)
            fits = [
                json.loads(line)
                for rank in range(args.ranks)
                for line in (scratch / f"{framework}-rank-{rank}.jsonl").read_text().splitlines()
            ]
            slowest: dict[tuple[str, int], float] = {}  # (mode, round) -> the slowest rank's s a step
            for f in fits:
                key = (f["mode"], f["round"])
                slowest[key] = max(slowest.get(key, 0.0), f["per_step_s"])
            rounds = {mode: [slowest[mode, r] for r in range(args.rounds)] for mode in MODES}
            per_step = {mode: statistics.median(rounds[mode]) for mode in MODES}
            ours = [f for f in fits if f["mode"] == "stopline"]
            first = next(f for f in ours if f["rank"] == 0 and f["round"] == 0)
            between = sum(1 for f in ours for _, k in f["collectives"] if 0 < k < args.steps)
            hooks: dict[int, float] = {}  # round -> the slowest rank's time in stopline's hooks a step
            for f in fits:
                if f["mode"] == "stopline":
                    hooks[f["round"]] = max(hooks.get(f["round"], 0.0), f["hooks_s"])
            hooks_s = statistics.median(hooks.values())
            rows.append(
                Row(framework, per_step, rounds, hooks_s, [(n, k) for n, k in first["collectives"]], between)
            )
    return rows


def table(rows: list[Row], step_ms: float, steps: int) -> str:
    header = (
        "| framework | step | steps | bare ms/step | with stopline ms/step | overhead µs/step | share "
        "| in stopline's hooks µs/step |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in rows:
        base = r.per_step_s["bare"]
        cells = [
            r.framework,
            f"{step_ms:g} ms",
            str(steps),
            f"{base * 1e3:.3f}",
            f"{r.per_step_s['stopline'] * 1e3:.3f}",
            f"{r.overhead_us:.1f}",
            f"{r.overhead_us / (base * 1e6):.2%}",
            f"{r.hooks_s * 1e6:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: list[Row], steps: int) -> str:
    """Each round's figures, and where stopline's collectives ran in a fit with the callback."""

    def listed(calls: list[str]) -> str:
        return ", ".join(f"{name} x{n}" for name, n in Counter(calls).items()) or "none"

    lines = []
    for r in rows:
        spread = "; ".join(f"{mode} " + ", ".join(f"{s * 1e3:.3f}" for s in r.rounds[mode]) for mode in MODES)
        lines.append(f"{r.framework}: ms/step round by round (the noise the median sits in): {spread}")
        before = listed([n for n, k in r.collectives if k == 0])
        after = listed([n for n, k in r.collectives if k >= steps])
        lines.append(
            f"{r.framework}: stopline's collectives between steps 1 and {steps}: "
            f"{r.between or 'none'} (all fits, all ranks); a fit's before its first step: {before}; "
            f"after its last (the epoch's end, fit end): {after}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    frameworks = [f for f in args.frameworks.split(",") if f]
    if args.ranks < 2 or args.steps < args.warmup + 2 or args.warmup < 0 or not frameworks:
        print("--ranks must be at least 2 and --steps at least --warmup + 2", file=sys.stderr)
        return 2
    if unknown := set(frameworks) - set(FRAMEWORKS):
        print(f"unknown frameworks {sorted(unknown)}: {', '.join(FRAMEWORKS)}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    rows = measure(args, frameworks)
    result = table(rows, args.step_ms, args.steps)
    seen = notes(rows, args.steps)
    print(result)
    print(seen)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        f"# bench/integrations, {datetime.now().isoformat(timespec='seconds')}\n\n"
        f"`{' '.join(['bench/integrations/run.py', *(argv if argv is not None else sys.argv[1:])])}` on "
        f"{os.cpu_count()} CPUs: {args.ranks} torchrun ranks (gloo), steps of a {args.step_ms:g} ms sleep, "
        f"{args.rounds} rounds, each mode's time per step from step {args.warmup} to step {args.steps - 1} "
        f"(0-based), the slowest rank's, median of the rounds; {load}.\n\n{result}\n\n{seen}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
