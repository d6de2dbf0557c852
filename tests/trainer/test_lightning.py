"""The Lightning callback: same Run, a /stop over HTTP ends fit at a batch boundary with the weights saved."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import signal
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


def read_registered_ckpt(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(last.json, the .ckpt it names) of a registered Lightning checkpoint, verified file by file."""
    manifest = json.loads((folder / "last.json").read_bytes())
    assert manifest["format"] == "files" and Path(manifest["uri"]).parent.parent == folder
    listing = json.loads(Path(manifest["uri"]).read_bytes())
    assert listing["kind"] == "file" and len(listing["files"]) == 1
    [entry] = listing["files"]
    blob = (Path(manifest["uri"]).parent / entry["path"]).read_bytes()
    assert (len(blob), hashlib.sha256(blob).hexdigest()) == (entry["bytes"], entry["sha256"])
    state: dict[str, Any] = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
    return manifest, state


def quiet_trainer(
    callbacks: list[lightning.Callback], max_epochs: int = 10_000, **options: Any
) -> lightning.Trainer:
    return lightning.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **options,
    )


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
        trainer = quiet_trainer([StoplineCallback(run, every_n_batches=every_n_batches)])
        trainer.fit(module, data, data)
        stopper.join(30)

    manifest, state = read_registered_ckpt(ckpt)
    assert manifest["stopReason"] == "lightning test"
    assert 2 <= manifest["epoch"] < 10_000 and manifest["metrics"]["val_loss"] is not None
    batches = manifest["step"]  # one optimiser step a batch
    at_epoch_end = batches % BATCHES_PER_EPOCH == 0
    if every_n_batches:
        assert at_epoch_end or batches % every_n_batches == 0, batches
        # a collective at each epoch end and every N batches; once agreed at a batch, the epoch end is free
        # (a stop that comes in the epoch's validation, after its last batch's check, is agreed at its end)
        both = at_epoch_end and batches % every_n_batches == 0
        checks = batches // BATCHES_PER_EPOCH + batches // every_n_batches
        assert len(asked) in ({checks - 1, checks} if both else {checks})
    else:
        assert at_epoch_end, batches
        assert len(asked) == batches // BATCHES_PER_EPOCH  # one agreement an epoch, none per batch
    assert_points_at(tmp_path / "termination-log", manifest)
    fresh = Regression()
    fresh.load_state_dict(state["state_dict"])
    torch.testing.assert_close(fresh(x), module(x))


class AtTrainStart(lightning.Callback):
    """What the fit starts from, once Lightning restored a checkpoint: epoch, step, the optimizer's state."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self.seen = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
        }


def assert_same_optimizer_state(got: dict[str, Any], saved: dict[str, Any]) -> None:
    assert got["state"].keys() == saved["state"].keys() and got["state"]
    for param, values in saved["state"].items():
        assert got["state"][param].keys() == values.keys()
        for name, value in values.items():
            torch.testing.assert_close(got["state"][param][name], value, rtol=0, atol=0)
    assert got["param_groups"] == saved["param_groups"]


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")
def test_a_sigterm_keeps_the_whole_trainer_state_and_a_restarted_fit_continues_from_it(
    tmp_path: Path,
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=256 // BATCHES_PER_EPOCH)
    ckpt = tmp_path / "ckpt"

    def config(name: str) -> Config:
        return Config(
            metrics_port=free_port(),
            bind_address="127.0.0.1",
            checkpoint_uri=str(ckpt),
            control_token=TOKEN,
            termination_log=tmp_path / name,
        )

    with Run(config("first")) as run:  # stopline's SIGTERM handler, as in a pod
        probe = Endpoint(run.server.port)

        def preempt() -> None:  # the kubelet's SIGTERM, once the fit is in its third epoch
            wait_until(lambda: (probe.metrics() or {}).get("stopline_epoch", 0) >= 3, "epoch 3")
            os.kill(os.getpid(), signal.SIGTERM)

        kubelet = threading.Thread(target=preempt, daemon=True)
        kubelet.start()
        first = quiet_trainer([StoplineCallback(run)])
        first.fit(Regression(), data, data)
        kubelet.join(30)

    manifest, saved = read_registered_ckpt(ckpt)
    assert manifest["stopReason"] == "SIGTERM"
    assert manifest["step"] == saved["global_step"] == first.global_step
    assert manifest["epoch"] == saved["epoch"] >= 3  # epochs done; the callback reports them from 1
    assert_same_optimizer_state(first.optimizers[0].state_dict(), saved["optimizer_states"][0])
    assert_points_at(tmp_path / "first", manifest)

    restarted = AtTrainStart()
    with Run(config("second")) as again:
        path = again.resume_path()
        assert path is not None and path.endswith(".ckpt")
        second = quiet_trainer([StoplineCallback(again), restarted], max_epochs=saved["epoch"] + 2)
        second.fit(Regression(), data, data, ckpt_path=path)
    # the restarted fit begins with the epoch after the ones done, at the saved step, with the saved
    # optimizer state (Adam's moments and step count), not at epoch 0 with a fresh optimizer
    assert (restarted.seen["epoch"], restarted.seen["step"]) == (saved["epoch"], manifest["step"])
    assert_same_optimizer_state(restarted.seen["optimizer"], saved["optimizer_states"][0])
    assert second.global_step == manifest["step"] + 2 * BATCHES_PER_EPOCH
    after, _ = read_registered_ckpt(ckpt)
    assert (after["epoch"], after["step"]) == (saved["epoch"] + 2, second.global_step)
    done = saved["epoch"]
    assert [record["epoch"] for record in after["epochs"]][-3:] == [done, done + 1, done + 2]


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")
@pytest.mark.parametrize("every", [4, 0])
def test_logged_metrics_are_read_at_lightnings_logging_cadence_not_every_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int
) -> None:
    """Reading a logged scalar copies it from the GPU, a sync per batch: the callback reads them every
    log_every_n_steps batches (none with 0) and at each validation's end, and reports progress every batch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=256 // BATCHES_PER_EPOCH)
    config = Config(metrics_port=free_port(), bind_address="127.0.0.1", checkpoint_uri=str(tmp_path / "ckpt"))
    reports: list[tuple[int, set[str]]] = []
    with Run(config) as run:
        report = run.report

        def recorded(epoch: float, step: int, **metrics: float) -> None:
            reports.append((step, set(metrics)))
            report(epoch, step, **metrics)

        monkeypatch.setattr(run, "report", recorded)
        trainer = quiet_trainer([StoplineCallback(run, full_state=False)], 2, log_every_n_steps=every)
        trainer.fit(Regression(), data, data)
    batches: dict[int, set[str]] = {}  # the first report at a step is its batch's
    validations: list[tuple[int, set[str]]] = []  # a second one at the same step, its validation's end
    for step, names in reports:
        if step in batches:
            validations.append((step, names))
        else:
            batches[step] = names
    assert sorted(batches) == list(range(1, 2 * BATCHES_PER_EPOCH + 1))  # progress every batch
    read = [step for step, names in batches.items() if names]
    assert read == (list(range(every, 2 * BATCHES_PER_EPOCH + 1, every)) if every else [])
    # each epoch's metrics at its validation's end, whatever the cadence
    assert [(step, "val_loss" in names) for step, names in validations] == [
        (BATCHES_PER_EPOCH, True),
        (2 * BATCHES_PER_EPOCH, True),
    ]
