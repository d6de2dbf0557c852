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


def bench(out: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(REPO / "bench" / "operator" / "run.py"),
        f"--jobs={JOBS}",
        "--interval=1",
        "--epoch=2",
        "--steady=6",
        "--spread=3",
        "--deadline=60",
        f"--out={out}",
        *flags,
    ]
    run = subprocess.run(  # as `make bench-operator` runs it: no PYTHONPATH, stopline_local is installed
        command,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_the_scale_benchmark_stops_every_job_at_its_crossing_on_both_read_paths(tmp_path: Path) -> None:
    run = bench(tmp_path, "--source=scrape,promql")
    results = json.loads((tmp_path / "results.json").read_text())
    assert {(row["source"], row["jobs"]) for row in results} == {("promql", JOBS), ("scrape", JOBS)}
    for row in results:
        assert row["stopped"] == JOBS, row  # each pod received POST /stop ...
        assert row["early"] == 0, row  # ... never before its deciding sample was available
        assert row["epochs_in_window"] > 0, row
    assert "| read path | criteria | epoch (s) | jobs |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "scale.png").read_bytes().startswith(b"\x89PNG")
    assert "latency p99" in run.stdout


def test_with_forecast_the_ended_jobs_succeed_first_and_every_measured_job_still_stops_at_its_crossing(
    tmp_path: Path,
) -> None:
    """The forecast is fitted at each epoch on the study's ended jobs and never fires (its target is one
    every job beats): the stops, and so the latencies, stay the threshold's."""
    run = bench(tmp_path, "--source=scrape", "--forecast")
    assert "jobs run to their end first, for the forecast" in run.stderr
    assert "finished jobs like this one by epoch" in run.stderr  # fitted, not skipped for want of peers
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert (row["criteria"], row["stopped"], row["early"]) == ("threshold+forecast", JOBS, 0), row
