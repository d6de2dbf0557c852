"""The operator reads exactly what the real trainer library exports."""

from __future__ import annotations

import math

import pytest

from stopline.metrics.exposition import ExpositionError, parse_exposition
from stopline_trainer.control import StopFlag
from stopline_trainer.metrics import TrainerMetrics


def exported(flag: StopFlag | None = None) -> TrainerMetrics:
    trainer = TrainerMetrics(flag or StopFlag())
    trainer.observe(7, 1400, {"val_loss": 0.231, "val_accuracy": 0.91, "train_loss": float("nan")})
    trainer.epoch_duration.set(12.5)
    return trainer


def test_a_trainers_scrape_reads_back_as_its_epoch_step_and_metrics() -> None:
    report = parse_exposition(exported().exposition().decode())
    assert (report.epoch, report.step) == (7, 1400)
    assert report.metrics["val_loss"] == 0.231
    assert report.metrics["val_accuracy"] == 0.91
    assert math.isnan(report.metrics["train_loss"])  # NaN reaches the divergence criterion as NaN
    assert report.epoch_seconds == 12.5
    assert report.stop_requested is False
    assert report.checkpoint is None


def test_a_stop_request_and_a_checkpoint_show_in_the_scrape() -> None:
    flag = StopFlag()
    trainer = exported(flag)
    flag.request("test")
    trainer.checkpoint.info({"uri": "s3://bucket/run/last.pt", "epoch": "7", "sha256": "ab12"})
    report = parse_exposition(trainer.exposition().decode())
    assert report.stop_requested is True
    assert report.checkpoint == {"uri": "s3://bucket/run/last.pt", "epoch": "7", "sha256": "ab12"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<html>502 Bad Gateway</html>", "not Prometheus text format"),
        ("# HELP up x\n# TYPE up gauge\nup 1\n", "no stopline_epoch or stopline_step series"),
    ],
)
def test_what_is_not_a_trainer_scrape_is_an_error_that_says_so(text: str, problem: str) -> None:
    with pytest.raises(ExpositionError, match=problem):
        parse_exposition(text)


@pytest.mark.parametrize("epoch", ["NaN", "+Inf", "-Inf", "1e300", "-1", "1.5", "9007199254740992"])
def test_an_epoch_that_is_no_position_is_an_exposition_error(epoch: str) -> None:
    """Not a ValueError or OverflowError from int(): the operator counts it as a failed scrape."""
    with pytest.raises(ExpositionError, match=r"stopline_epoch is .*: it must be a whole number"):
        parse_exposition(f"stopline_epoch {epoch}\nstopline_step 10\n")


@pytest.mark.parametrize("step", ["NaN", "1e300", "-3"])
def test_a_step_that_is_no_position_is_an_exposition_error(step: str) -> None:
    with pytest.raises(ExpositionError, match="stopline_step is"):
        parse_exposition(f"stopline_epoch 1\nstopline_step {step}\n")


def test_the_largest_exact_position_is_read() -> None:
    report = parse_exposition(f"stopline_epoch 12\nstopline_step {2**53 - 1}\n")
    assert (report.epoch, report.step) == (12, 2**53 - 1)


def test_an_unparsable_line_shows_as_a_short_printable_excerpt() -> None:
    """Whatever the pod serves is quoted in status only as a short excerpt, one line, no control codes."""
    secret = "DB_PASSWORD=hunter2\x1b[31m" + "x" * 5000
    with pytest.raises(ExpositionError) as raised:
        parse_exposition(f"{secret}\nmore lines\n")
    text = str(raised.value)
    assert text.startswith("not Prometheus text format: ")
    assert len(text) <= 200
    assert all(" " <= c <= "~" for c in text)
