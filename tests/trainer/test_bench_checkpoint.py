"""bench/checkpoint runs end to end at a tiny size (real trainers, dd, the S3 server) and prints its table.

Timings on a shared box say nothing, so none is asserted: only that the bench ends and reports each target.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stopline_local.controlplane import REPO

pytestmark = pytest.mark.trainer

BENCH = REPO / "bench" / "checkpoint" / "run.py"


def test_the_checkpoint_bench_ends_and_prints_a_row_per_target(tmp_path: Path) -> None:
    results = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--hidden", "64", "--targets", "file,s3", "--dir", str(tmp_path),
         "--deadline", "90", "--out", str(results)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| target | --hidden | bytes | stop→durable s |")
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| file", "| s3"]
    assert all(line in results.read_text() for line in rows)
    assert list(tmp_path.iterdir()) == [results]  # the trainers' folders and the S3 server's are gone
