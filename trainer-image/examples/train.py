"""A real PyTorch trainer wired to stopline: an MLP learns a fixed random "teacher" network's function.

Data are generated (seeded per rank/epoch/step), so the example needs no download and no dataset package.
Everything about the pod comes from the stopline env contract (see stopline_trainer.Config); the flags
shape the training run and can inject faults for tests. Uses CUDA when present (nccl across ranks).

    python train.py --epochs 20 --steps-per-epoch 50 --lr 3e-3
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.nn.parallel import DistributedDataParallel

import stopline_trainer
from stopline_trainer import distributed

log = logging.getLogger("train")

IN_FEATURES = 32
PROBE_SEED = 1234  # the probe batch whose outputs are saved beside the weights, to check them after loading


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(IN_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


def probe_input() -> torch.Tensor:
    return torch.randn(16, IN_FEATURES, generator=torch.Generator().manual_seed(PROBE_SEED))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128, help="width of the MLP (sets the checkpoint size)")
    p.add_argument("--sleep-per-step", type=float, default=0.0, help="seconds to sleep per step (slows it)")
    p.add_argument("--save-every", type=int, default=1, help="save every N epochs (0: only at the end)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--check-every",
        type=int,
        default=1,
        help="agree on a stop every N steps (Run's check_every): one all-reduce per N steps, not per step",
    )
    p.add_argument(
        "--checkpoint",
        choices=["save", "dcp"],
        default="save",
        help="save: run.save() of one state dict from rank 0; dcp: every rank writes torch.distributed."
        "checkpoint shards into a local folder, which run.register() keeps",
    )
    p.add_argument("--keep-best", action="store_true", help="also keep the best checkpoint by the objective")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore existing checkpoints")
    p.add_argument(
        "--fault",
        choices=["none", "nan", "crash", "crash-on-stop", "ignore-stop"],
        default="none",
        help="nan: NaN loss from --fault-epoch on; crash: exit 1 at --fault-epoch; crash-on-stop: exit 1 "
        "instead of saving when asked to stop from --fault-epoch on; "
        "ignore-stop: no /stop endpoint (404), only SIGTERM stops it",
    )
    p.add_argument("--fault-epoch", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    config = stopline_trainer.Config.from_env()
    if args.keep_best:
        config = replace(config, keep_best=True)
    multi = distributed.init_from_env()
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    rank = distributed.rank()

    torch.manual_seed(args.seed)  # same initial weights on every rank
    teacher = make_model(16).to(device)
    model = make_model(args.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    val_gen = torch.Generator(device=device).manual_seed(args.seed + 10_000)
    val_x = torch.randn(1024, IN_FEATURES, generator=val_gen, device=device)
    with torch.no_grad():
        val_y = teacher(val_x)

    run = stopline_trainer.start(
        config, accept_http_stop=args.fault != "ignore-stop", check_every=args.check_every
    )
    epoch, step = 0, 0
    keep = DcpCheckpoint(run, config) if args.checkpoint == "dcp" else None
    try:
        ckpt = run.resume() if args.resume else None
        if ckpt is not None and keep is not None:
            keep.load(ckpt.path, model, optimizer)
            step = ckpt.manifest.step
        elif ckpt is not None:
            model.load_state_dict(ckpt.state["model"])
            optimizer.load_state_dict(ckpt.state["optimizer"])
            step = ckpt.manifest.step
        if multi:  # a rank that could not see the checkpoint must not run a different number of steps
            t = torch.tensor([step], device=device)
            torch.distributed.broadcast(t, src=0)
            step = int(t.item())
        epoch = step // args.steps_per_epoch  # completed epochs: a stop mid-epoch finishes that epoch
        net: nn.Module = DistributedDataParallel(model) if multi else model
        saved_step = step if ckpt is not None else -1
        stopped = False
        while epoch < args.epochs and not stopped:
            epoch += 1
            if args.fault == "crash" and epoch == args.fault_epoch:
                log.error("fault injection: crashing at epoch %d", epoch)
                return 1
            started = time.monotonic()
            while step < epoch * args.steps_per_epoch:
                if run.should_stop():
                    stopped = True
                    break
                step += 1
                gen = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step * 101 + rank)
                x = torch.randn(args.batch_size, IN_FEATURES, generator=gen, device=device)
                with torch.no_grad():
                    y = teacher(x)
                loss = nn.functional.mse_loss(net(x), y)
                if args.fault == "nan" and epoch >= args.fault_epoch:
                    loss = loss * math.nan
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                run.report(epoch, step, train_loss=loss.item())
                if args.sleep_per_step:
                    time.sleep(args.sleep_per_step)
            if stopped and args.fault == "crash-on-stop" and epoch >= args.fault_epoch:
                log.error("fault injection: crashing on the stop at epoch %d", epoch)
                return 1
            if stopped:
                break
            with torch.no_grad():
                val_loss = nn.functional.mse_loss(model(val_x), val_y).item()
            run.report(epoch, step, val_loss=val_loss)
            log.info(
                "epoch %d step %d val_loss %.5f (%.2fs)", epoch, step, val_loss, time.monotonic() - started
            )
            if args.save_every and epoch % args.save_every == 0:
                save(run, keep, model, optimizer, step)
                saved_step = step
        if step != saved_step:
            save(run, keep, model, optimizer, step)
        return 0
    finally:
        run.close()
        if multi:
            torch.distributed.destroy_process_group()


def save(
    run: stopline_trainer.Run,
    keep: DcpCheckpoint | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
) -> None:
    if keep is not None:
        keep.save(model, optimizer, step)
    else:
        run.save(state(model, optimizer))


class DcpCheckpoint:
    """A checkpoint torch.distributed.checkpoint writes (the way FSDP runs keep theirs): every rank saves
    its shards into a folder on its own disk and registers it; stopline copies each rank's files under the
    checkpoint URI, lists them with their sizes and sha256, and names the folder once all are in."""

    def __init__(self, run: stopline_trainer.Run, config: stopline_trainer.Config) -> None:
        self.run = run
        # the same path on every rank (register's contract); each rank's own disk, or one shared folder
        self.scratch = Path(tempfile.gettempdir()) / f"stopline-dcp-{config.namespace}-{config.job}"

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        folder = self.scratch / f"step-{step}"
        model_state, optimizer_state = get_state_dict(model, optimizer)
        with torch.no_grad():
            probe = model(probe_input().to(next(model.parameters()).device)).cpu()
        dcp_save(
            {"model": model_state, "optimizer": optimizer_state, "probe_output": probe}, checkpoint_id=folder
        )
        self.run.register(folder, step=step)  # every rank; returns once the folder is committed
        shutil.rmtree(folder, ignore_errors=True)  # the kept copy is under the checkpoint URI

    def load(self, path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if path is None:
            raise RuntimeError(
                "the kept checkpoint was written by run.save(), not by DCP: start with --checkpoint save"
            )
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp_load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path)  # in place
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


def state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, object]:
    """Weights, optimiser state (to resume), and the model's outputs on the probe batch (to check a load)."""
    with torch.no_grad():
        probe = model(probe_input().to(next(model.parameters()).device)).cpu()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "probe_output": probe}


if __name__ == "__main__":
    sys.exit(main())
