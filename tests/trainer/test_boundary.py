"""Where the ranks agree on a stop: every check_every-th should_stop() is a boundary (one all-reduce);
the calls between cost no collective and answer False until the ranks agreed."""

from __future__ import annotations

from pathlib import Path

import pytest

from stopline_trainer import Config, Run

from .support import counting_all_reduces

pytestmark = pytest.mark.trainer


def run_with(tmp_path: Path, check_every: int) -> Run:
    config = Config(metrics_port=0, bind_address="127.0.0.1", termination_log=tmp_path / "log")
    return Run(config, handle_signals=False, check_every=check_every)


def test_only_every_nth_call_is_a_collective_and_a_stop_waits_for_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = counting_all_reduces(monkeypatch)
    run = run_with(tmp_path, check_every=4)
    try:
        assert [run.should_stop() for _ in range(9)] == [False] * 9
        assert asked == [False, False]  # calls 4 and 8

        run.flag.request("test")  # between boundaries: calls 10 and 11 do not see it, 12 does
        assert [run.should_stop() for _ in range(3)] == [False, False, True]
        assert asked == [False, False, True]
        assert [run.should_stop() for _ in range(5)] == [True] * 5  # agreed: no more collectives
        assert asked == [False, False, True]
    finally:
        run.close()


def test_by_default_every_call_is_a_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = counting_all_reduces(monkeypatch)
    run = run_with(tmp_path, check_every=1)
    try:
        assert [run.should_stop() for _ in range(3)] == [False] * 3
        run.flag.request("test")
        assert run.should_stop() and asked == [False, False, False, True]
    finally:
        run.close()


def test_check_every_below_1_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="check_every=0: must be at least 1"):
        run_with(tmp_path, check_every=0)
