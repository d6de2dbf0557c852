"""The trainer's window of recent epochs and the operator's reader of it: every epoch once, in order,
whatever the read interval; an answer that is not a window is an error value, a bad record is skipped."""

from __future__ import annotations

import json
import math

import pytest

from stopline.metrics.epochs import EpochsError, parse_epochs
from stopline_trainer.metrics import PAGE_EPOCHS, EpochWindow


def test_the_trainers_window_reaches_the_operator_epoch_by_epoch_with_non_finite_values() -> None:
    window = EpochWindow(size=10)
    for epoch in range(1, 16):
        window.record(epoch, epoch * 10, {"train_loss": 1.0 / epoch})
        window.record(epoch, epoch * 10 + 5, {"val_loss": math.nan if epoch == 13 else 2.0 / epoch})
        window.finished(epoch, 0.2)
    epochs, oldest = parse_epochs(window.after(11), after=11)
    assert oldest == 6  # the window keeps the last 10 epochs
    assert sorted(epochs) == [12, 13, 14, 15]
    assert epochs[12] == {"train_loss": 1.0 / 12, "val_loss": 2.0 / 12}  # values of one epoch add up
    assert math.isnan(epochs[13]["val_loss"])


def test_a_page_holds_at_most_page_epochs_oldest_first() -> None:
    window = EpochWindow(size=2 * PAGE_EPOCHS)
    for epoch in range(1, 2 * PAGE_EPOCHS):
        window.record(epoch, epoch, {"val_loss": 1.0})
    epochs, _ = parse_epochs(window.after(0), after=0)
    assert sorted(epochs) == list(range(1, PAGE_EPOCHS + 1))


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"epochs": {}}', b"[" * 100_000 + b"]" * 100_000],
    ids=["text", "list", "epochs-not-a-list", "deep"],
)
def test_an_answer_that_is_not_a_window_is_an_error_value(body: bytes) -> None:
    with pytest.raises(EpochsError):
        parse_epochs(body, after=0)


def test_records_that_are_not_epochs_are_skipped_one_by_one() -> None:
    records = [
        "junk",
        {"epoch": "3", "metrics": {}},
        {"epoch": 2.5, "metrics": {}},
        {"epoch": True, "metrics": {}},
        {"epoch": 2**60, "metrics": {}},
        {"epoch": 1, "metrics": {"val_loss": 0.5}},  # not after `after`
        {"epoch": 4, "metrics": "none"},
        {"epoch": 5, "metrics": {"val_loss": 0.4, "bad": "text", "flag": True, "inf": "+Inf"}},
    ]
    epochs, oldest = parse_epochs(json.dumps({"oldest": "x", "epochs": records}).encode(), after=2)
    assert epochs == {5: {"val_loss": 0.4, "inf": math.inf}} and oldest is None
