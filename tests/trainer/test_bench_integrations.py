"""bench/integrations runs end to end at a tiny size (torchrun, two gloo ranks) and prints its table.

Timings on a shared box say nothing, so none is asserted: only that the bench ends, reports a row for each
framework, and says where stopline's collectives ran (none between steps: the callbacks agree at epoch ends).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stopline_local.controlplane import REPO

pytestmark = pytest.mark.trainer

BENCH = REPO / "bench" / "integrations" / "run.py"


def test_the_integrations_bench_ends_and_prints_a_row_per_framework(tmp_path: Path) -> None:
    results = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--step-ms", "5", "--steps", "12", "--warmup", "2", "--rounds", "1",
         "--out", str(results)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| framework | step | steps | bare ms/step | with stopline ms/step | overhead")
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| lightning", "| hf"]
    assert all(line in results.read_text() for line in rows)
    seen = [line for line in done.stdout.splitlines() if "stopline's collectives between steps" in line]
    assert [line.split(":")[0] for line in seen] == ["lightning", "hf"]
    assert all("between steps 1 and 12: none" in line for line in seen), seen
