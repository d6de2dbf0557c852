"""What a save leaves behind, through the real Run and checkpointer on a real folder."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from stopline_trainer import Config, Manifest, Run
from stopline_trainer.checkpoint import Checkpointer
from stopline_trainer.storage.local import LocalStore

from .support import POINTER_KEYS, TOKEN, wait_until

pytestmark = pytest.mark.trainer

URI_CHARS = 512


def run_config(tmp_path: Path, folder: Path, **settings: object) -> Config:
    defaults: dict[str, object] = {
        "job": "mlp",
        "namespace": "ml",
        "metrics_port": 0,
        "bind_address": "127.0.0.1",
        "checkpoint_uri": str(folder),
        "control_token": TOKEN,
        "termination_log": tmp_path / "termination-log",
    }
    return Config(**{**defaults, **settings})  # type: ignore[arg-type]


def folder_of_length(base: Path, length: int) -> Path:
    """A folder whose absolute path has `length` characters (components under the 255-byte limit)."""
    folder = base.absolute()
    while len(str(folder)) < length:
        folder = folder / ("d" * min(100, length - len(str(folder)) - 1))
    return folder


def test_the_termination_message_is_a_pointer_under_1_kib_and_the_manifest_keeps_the_rest(
    tmp_path: Path,
) -> None:
    folder = folder_of_length(tmp_path / "claim", URI_CHARS)
    metrics = {f"metric_{i:02d}": i / 7 for i in range(80)}
    with Run(run_config(tmp_path, folder), handle_signals=False) as run:
        run.flag.request("promql: " + "rate(x[5m]) > 0 and " * 2400 + "\n")  # a 48 KB PromQL reason
        run.report(12, 12_000, **metrics)
        manifest = run.save({"weights": torch.ones(3)})
    assert manifest is not None and len(manifest.uri) > URI_CHARS

    message = (tmp_path / "termination-log").read_bytes()
    pointer = json.loads(message)
    assert set(pointer) == set(POINTER_KEYS)
    assert (pointer["uri"], pointer["epoch"], pointer["step"]) == (manifest.uri, 12, 12_000)
    # the message grows byte for byte with the URI: with a 512-character one it stays under 1 KiB
    assert len(message) - len(manifest.uri) + URI_CHARS < 1024

    kept = json.loads((folder / "last.json").read_bytes())
    assert kept["metrics"] == metrics
    assert kept["stopReason"].startswith("promql: rate(x[5m]) > 0 and")
    assert (kept["job"], kept["namespace"], kept["worldSize"]) == ("mlp", "ml", 1)


def test_a_uri_too_long_for_the_kubelet_is_said_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past 4096 bytes the kubelet cuts the message, the operator cannot parse it: the log says why."""
    folder = folder_of_length(tmp_path / "claim", 4000)
    with Run(run_config(tmp_path, folder), handle_signals=False) as run:
        run.report(1, 10)
        run.save({"weights": torch.ones(3)})
    assert len((tmp_path / "termination-log").read_bytes()) > 4096
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("the operator will not see this checkpoint" in w for w in warnings), warnings


def checkpointer(folder: Path, job: str, namespace: str = "ml") -> Checkpointer:
    store = LocalStore(folder)
    return Checkpointer(
        store, job=job, namespace=namespace, world_size=1, objective="val_loss", objective_mode="min",
        keep_best=False,
    )  # fmt: skip


def save(writer: Checkpointer, epoch: int) -> Manifest:
    weights = {"w": torch.full((4,), float(epoch))}
    metrics = {"val_loss": 1 / epoch}
    return writer.save(weights, epoch=epoch, step=10 * epoch, metrics=metrics, stop_reason=None)


def test_two_jobs_in_one_folder_never_delete_each_others_weights(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    a, b = checkpointer(folder, "job-a"), checkpointer(folder, "job-b")
    a5 = save(a, 5)
    b1 = save(b, 1)
    assert Path(a5.uri).exists()  # job-b's save left job-a's newest weights alone
    a6 = save(a, 6)
    assert Path(b1.uri).exists()
    b2 = save(b, 2)
    # each job collected only its own older weights
    assert sorted(p.name for p in folder.iterdir()) == sorted(["last.json", a6.name, b2.name])
    assert torch.equal(torch.load(a6.uri, weights_only=True)["w"], torch.full((4,), 6.0))


def test_a_save_in_flight_survives_another_jobs_garbage_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, pause = tmp_path / "shared", tmp_path / "pause"
    a, b = checkpointer(folder, "job-a"), checkpointer(folder, "job-b")
    save(a, 1)
    # fault injection: job-b's first save pauses with its weights half written to a temp file
    monkeypatch.setenv("STOPLINE_FAULT_PAUSE_SAVE", f"1:{pause}")
    saved: list[Manifest] = []
    writer = threading.Thread(target=lambda: saved.append(save(b, 1)), daemon=True)
    writer.start()
    wait_until(lambda: (pause / "paused").exists(), "job-b's save to be half written")
    save(a, 2)  # job-a collects garbage while job-b's temp file is in the folder
    (pause / "resume").touch()
    writer.join(30)
    assert saved, "job-b's save failed"
    assert Path(saved[0].uri).exists()


def test_a_job_does_not_resume_from_another_jobs_checkpoint_unless_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "shared"
    save(checkpointer(folder, "job-a"), 5)
    for job, namespace in (("job-b", "ml"), ("job-a", "team-b")):
        caplog.clear()
        with Run(run_config(tmp_path, folder, job=job, namespace=namespace), handle_signals=False) as run:
            assert run.resume() is None
        refusals = [r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()]
        assert len(refusals) == 1 and "'job-a' in namespace 'ml'" in refusals[0], refusals

    settings = run_config(tmp_path, folder, job="job-b", resume_other_jobs=True)
    with Run(settings, handle_signals=False) as run:
        resumed = run.resume()
    assert resumed is not None and (resumed.manifest.job, resumed.manifest.epoch) == ("job-a", 5)
    assert torch.equal(resumed.state["w"], torch.full((4,), 5.0))


def test_resume_false_starts_fresh_from_a_folder_with_a_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stopline_trainer")
    folder = tmp_path / "ckpt"
    save(checkpointer(folder, "mlp"), 5)
    with Run(run_config(tmp_path, folder, resume=False), handle_signals=False) as run:
        assert run.resume() is None
        assert (run.epoch, run.step) == (0, 0)
    assert any("not resuming (STOPLINE_RESUME=false)" in r.getMessage() for r in caplog.records)
    with Run(run_config(tmp_path, folder), handle_signals=False) as run:
        resumed = run.resume()  # the default: the same folder resumes
    assert resumed is not None and resumed.manifest.epoch == 5


def test_a_resumed_trainer_serves_the_epochs_it_saved_before_it_was_stopped(tmp_path: Path) -> None:
    """A queue preempts the pod: epochs the operator had not read yet go with the checkpoint, and the
    resumed trainer's GET /epochs serves them, each with its own values and nothing added."""
    folder = tmp_path / "ckpt"
    with Run(run_config(tmp_path, folder), handle_signals=False) as first:
        for epoch in (1, 2, 3):
            first.report(epoch, epoch * 10, train_loss=1.0 / epoch)
            first.report(epoch, epoch * 10, val_loss=2.0 / epoch)
        first.report(4, 35, train_loss=0.2)  # preempted mid-epoch 4
        first.save({"w": torch.zeros(2)})
    with Run(run_config(tmp_path, folder), handle_signals=False) as resumed:
        assert resumed.resume() is not None
        url = f"http://127.0.0.1:{resumed.server.port}/epochs?after=1"
        with urllib.request.urlopen(url, timeout=10) as answer:
            served = json.loads(answer.read())
    epochs = {record["epoch"]: record["metrics"] for record in served["epochs"]}
    assert epochs == {
        2: {"train_loss": 0.5, "val_loss": 1.0},
        3: {"train_loss": 1 / 3, "val_loss": 2 / 3},
        4: {"train_loss": 0.2},
    }
