"""Graceful stops of a real training process: over HTTP with the token, by signal, and with faults."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from .conftest import StartTrainer
from .support import TOKEN, assert_points_at, assert_reproduces_outputs, read_local_checkpoint, wait_until

pytestmark = pytest.mark.trainer

SLOW = ["--epochs", "1000", "--steps-per-epoch", "20", "--sleep-per-step", "0.02"]


def test_http_stop_saves_weights_that_load(start_trainer: StartTrainer, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    t = start_trainer(*SLOW, env={"STOPLINE_CHECKPOINT_URI": str(ckpt)})

    t.wait_metric("stopline_epoch", 2)  # an epoch finished: validation loss, duration and a checkpoint exist
    metrics = t.metrics()
    assert metrics is not None
    assert 'stopline_metric{name="val_loss"}' in metrics
    assert metrics["stopline_epoch_duration_seconds"] > 0
    assert metrics["stopline_stop_requested"] == 0
    assert any(k.startswith("stopline_checkpoint_info{") and f'uri="{ckpt}/ckpt-' in k for k in metrics)
    assert t.get("/healthz") == (200, b"ok\n")
    step_before = metrics["stopline_step"]

    assert t.post_stop({"reason": "manual: enough"}) == (
        202,
        {"stopping": True, "reason": "manual: enough", "rank": 0},
    )

    assert t.wait_exit() == 0, t.log()
    manifest, state = read_local_checkpoint(ckpt)
    assert step_before <= manifest["step"] < 1000 * 20
    assert manifest["stopReason"] == "manual: enough"
    assert (manifest["job"], manifest["namespace"], manifest["worldSize"]) == ("test-job", "test-ns", 1)
    assert set(manifest) >= {"epoch", "step", "metrics", "bytes", "sha256", "savedAt", "worldSize", "format"}
    assert_points_at(t.termination_log, manifest)
    assert_reproduces_outputs(state)
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["last.json", Path(manifest["uri"]).name])


def test_a_second_stop_while_the_first_is_saving_is_accepted_and_the_first_reason_kept(
    start_trainer: StartTrainer, tmp_path: Path
) -> None:
    """An operator that retries POST /stop (its answer was lost) must not change what the save records.
    The stop's save is held midway, so the trainer is still serving when the retry comes."""
    ckpt, pause = tmp_path / "ckpt", tmp_path / "pause"
    t = start_trainer(
        *SLOW,
        "--save-every",
        "0",
        env={"STOPLINE_CHECKPOINT_URI": str(ckpt), "STOPLINE_FAULT_PAUSE_SAVE": f"1:{pause}"},
    )
    t.wait_metric("stopline_step", 3)
    assert t.post_stop({"reason": "manual: enough"})[0] == 202
    wait_until(lambda: (pause / "paused").exists(), "the stop's save to start", on_fail=t.log)
    status, body = t.post_stop({"reason": "again"})
    assert (status, body["stopping"], body["reason"]) == (202, True, "manual: enough")
    (pause / "resume").touch()

    assert t.wait_exit() == 0, t.log()
    manifest, _ = read_local_checkpoint(ckpt)
    assert manifest["stopReason"] == "manual: enough"


def test_wrong_token_is_refused_and_sigterm_stops_even_when_signalled_again_during_the_save(
    start_trainer: StartTrainer, tmp_path: Path
) -> None:
    ckpt, pause = tmp_path / "ckpt", tmp_path / "pause"
    # only one save (at the end), paused midway so that more signals land while it is being written
    t = start_trainer(
        *SLOW,
        "--save-every",
        "0",
        env={"STOPLINE_CHECKPOINT_URI": str(ckpt), "STOPLINE_FAULT_PAUSE_SAVE": f"1:{pause}"},
    )
    step = t.wait_metric("stopline_step", 3)
    assert t.post_stop({"reason": "x"}, token="wrong")[0] == 401
    assert t.post_stop({"reason": "x"}, token=None)[0] == 401
    assert t.post_stop({"reason": "x"}, token=TOKEN + "0")[0] == 401
    t.wait_metric("stopline_step", step + 5)  # training went on
    metrics = t.metrics()
    assert metrics is not None and metrics["stopline_stop_requested"] == 0

    t.signal(signal.SIGTERM)
    wait_until(lambda: (pause / "paused").exists(), "the final save to start", on_fail=t.log)
    t.signal(signal.SIGTERM)
    t.signal(signal.SIGINT)
    (pause / "resume").touch()

    assert t.wait_exit() == 0, t.log()
    manifest, state = read_local_checkpoint(ckpt)
    assert manifest["stopReason"] == "SIGTERM"
    assert manifest["step"] > step
    assert_points_at(t.termination_log, manifest)
    assert_reproduces_outputs(state)


def test_ignore_stop_fault_answers_404_and_only_a_signal_stops_it(
    start_trainer: StartTrainer, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    t = start_trainer(*SLOW, "--fault", "ignore-stop", env={"STOPLINE_CHECKPOINT_URI": str(ckpt)})
    step = t.wait_metric("stopline_step", 2)
    assert t.post_stop({"reason": "please"})[0] == 404
    t.wait_metric("stopline_step", step + 5)
    t.signal(signal.SIGINT)
    assert t.wait_exit() == 0, t.log()
    manifest, _ = read_local_checkpoint(ckpt)
    assert manifest["stopReason"] == "SIGINT"


def test_sigkill_during_a_save_keeps_the_previous_checkpoint_and_a_rerun_resumes_from_it(
    start_trainer: StartTrainer, tmp_path: Path
) -> None:
    ckpt, pause = tmp_path / "ckpt", tmp_path / "pause"
    flags = ["--epochs", "3", "--steps-per-epoch", "10"]
    t = start_trainer(
        *flags, env={"STOPLINE_CHECKPOINT_URI": str(ckpt), "STOPLINE_FAULT_PAUSE_SAVE": f"2:{pause}"}
    )
    wait_until(lambda: (pause / "paused").exists(), "the second save to be half written", on_fail=t.log)
    partial = [p for p in ckpt.iterdir() if p.name.startswith(".tmp-")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    t.signal(signal.SIGKILL)
    assert t.wait_exit() == -signal.SIGKILL

    manifest, state = read_local_checkpoint(ckpt)
    assert (manifest["epoch"], manifest["step"]) == (1, 10)
    assert_points_at(t.termination_log, manifest)
    assert_reproduces_outputs(state)

    rerun = start_trainer(*flags, env={"STOPLINE_CHECKPOINT_URI": str(ckpt)}, name="rerun")
    assert rerun.wait_exit() == 0, rerun.log()
    assert "resuming from" in rerun.log()
    manifest, state = read_local_checkpoint(ckpt)
    assert (manifest["epoch"], manifest["step"]) == (3, 30)  # continued from step 10, not from 0
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        ["last.json", Path(manifest["uri"]).name]
    )  # temp gone
    assert_points_at(rerun.termination_log, manifest)
    assert_reproduces_outputs(state)


def test_keep_best_beside_last_when_the_loss_turns_nan(start_trainer: StartTrainer, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    t = start_trainer(
        "--epochs", "4", "--steps-per-epoch", "5", "--keep-best", "--fault", "nan", "--fault-epoch", "3",
        env={"STOPLINE_CHECKPOINT_URI": str(ckpt)},
    )  # fmt: skip
    assert t.wait_exit() == 0, t.log()
    last, _ = read_local_checkpoint(ckpt)
    best, best_state = read_local_checkpoint(ckpt, "best.json")
    assert (last["epoch"], last["metrics"]["val_loss"]) == (4, None)  # NaN is recorded as null
    assert best["epoch"] == 2 and best["metrics"]["val_loss"] > 0
    assert_points_at(t.termination_log, last)
    assert_reproduces_outputs(best_state)
    names = {Path(m["uri"]).name for m in (last, best)}
    assert sorted(p.name for p in ckpt.iterdir()) == sorted({"last.json", "best.json", *names})


def test_crash_fault_exits_1_and_leaves_the_last_good_checkpoint(
    start_trainer: StartTrainer, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    t = start_trainer(
        "--epochs", "5", "--steps-per-epoch", "5", "--fault", "crash", "--fault-epoch", "2",
        env={"STOPLINE_CHECKPOINT_URI": str(ckpt)},
    )  # fmt: skip
    assert t.wait_exit() == 1, t.log()
    manifest, _ = read_local_checkpoint(ckpt)
    assert manifest["epoch"] == 1
    assert_points_at(t.termination_log, manifest)
