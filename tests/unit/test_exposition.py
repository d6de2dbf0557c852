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
