"""bench/operator runs as the docs say, on a few jobs: every job is stopped by its own threshold crossing,
on both read paths, and the table and plot are written. The figures themselves are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stopline_local.controlplane import REPO

pytestmark = pytest.mark.cluster
JOBS = 3


def test_the_scale_benchmark_stops_every_job_at_its_crossing_on_both_read_paths(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(REPO / "bench" / "operator" / "run.py"),
        f"--jobs={JOBS}",
        "--source=scrape,promql",
        "--interval=1",
        "--epoch=2",
        "--steady=6",
        "--spread=3",
        "--deadline=60",
        f"--out={tmp_path}",
    ]
    run = subprocess.run(  # as `make bench-operator` runs it: no PYTHONPATH, stopline_local is installed
        command,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {(row["source"], row["jobs"]) for row in results} == {("promql", JOBS), ("scrape", JOBS)}
    for row in results:
        assert row["stopped"] == JOBS, row  # each pod received POST /stop ...
        assert row["early"] == 0, row  # ... never before its deciding sample was available
        assert row["epochs_in_window"] > 0, row
    assert "| read path | epoch (s) | jobs |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "scale.png").read_bytes().startswith(b"\x89PNG")
    assert "latency p99" in run.stdout
