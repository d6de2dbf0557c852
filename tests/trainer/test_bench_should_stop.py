"""bench/should_stop runs end to end at a tiny size (two gloo ranks) and prints its table.

Timings on a shared box say nothing, so none is asserted: only that the bench ends and reports each step.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stopline_local.controlplane import REPO

pytestmark = pytest.mark.trainer

BENCH = REPO / "bench" / "should_stop" / "run.py"


def test_the_should_stop_bench_ends_and_prints_a_row_per_step_time(tmp_path: Path) -> None:
    results = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--step-ms", "5,1", "--seconds", "0.1", "--rounds", "1",
         "--check-every", "10", "--out", str(results)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| step | steps a round | no check, ms a step | every step: overhead")
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 5 ms", "| 1 ms"]
    assert all(line in results.read_text() for line in rows)
