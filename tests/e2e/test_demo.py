"""`make demo` applies examples/local/demo-sweep.yaml, runs to its summary and leaves no process behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stopline_local.controlplane import REPO

pytestmark = pytest.mark.e2e


def test_the_demo_prints_each_jobs_stop_and_leaves_no_process_behind() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "stopline_local.demo", "--timeout", "240"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        stdin=subprocess.DEVNULL,
    )
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    out = demo.stdout
    assert "demo: kubectl apply -n demo -f examples/local/demo-sweep.yaml" in out
    summary = out[out.index("summary:") :]
    assert "lr-1e-7: Stopped" in summary and "Cohort (median)" in summary, summary
    assert "/15; " in summary, "the summary reads maxEpochs from the applied TrainingJobs"
    assert "epochs saved" in summary or "saved (" in summary
    policy = out[out.index("demo: the recommended policy on a recorded sweep") :]
    assert "Forecast" in policy and "40 jobs, " in policy
    assert "the stops kept the sweep's best" in policy, policy[-2000:]
    assert out.rstrip().endswith("demo: every process stopped")
    root = next(line for line in out.splitlines() if line.startswith("demo: starting")).split(" in ")[-1]
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert root not in left, "a control plane process outlived the demo"
    assert "--sleep-per-step 0.15" not in left, "a demo trainer outlived the demo"
    assert "operator -n demo" not in left, "the demo's operator outlived it"
