"""The sweep criteria (forecast, rungs) decide live as `stopline replay` decides on the same curves.

A sweep of seven jobs runs one after another through the operator against the real apiserver, each trainer
played on its real endpoint: every job reports its epochs until the operator stops it or its curve ends.
Then the jobs' curves as the operator recorded them (status.curve) go through `stopline replay` with the
same TrainingJob: every job must stop at the same epoch for the same criterion with the same words, or run
to its end in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from operatorharness import (
    manifest,
    operator,
    play_curve,
    replay_recorded,
    running_trainer,
)
from stopline import replay
from stopline_local.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

STUDY = {"stopline.dev/study": "sweep"}
CRITERIA = [
    {"name": "forecast", "forecast": {"probability": 0.05, "minJobs": 2}},
    {"name": "halving", "rungs": {"minEpochs": 4, "reductionFactor": 2, "minJobs": 2}},
]
# val_loss by epoch, in the order the sweep runs them: two finish, then one no better than the first two
# (rungs), one hopeless (rungs), a new best, one just behind it (rungs), and one like the finished jobs
# but behind them (forecast).
SWEEP = {
    "lr-1e-3": [1.0, 0.8, 0.6, 0.5, 0.45, 0.42],
    "lr-2e-3": [1.0, 0.82, 0.63, 0.52, 0.47, 0.44],
    "lr-5e-3": [1.1, 0.9, 0.7, 0.6, 0.55, 0.52],
    "lr-1e-1": [1.3, 1.2, 1.15, 1.1, 1.08, 1.07],
    "lr-7e-4": [1.02, 0.81, 0.61, 0.5, 0.44, 0.40],
    "lr-3e-3": [1.05, 0.85, 0.66, 0.56, 0.5, 0.47],
    "lr-1e-4": [0.99, 0.83, 0.62, 0.51, 0.46, 0.43],
}


def run_job(plane: ControlPlane, namespace: str, name: str, values: list[float]) -> dict[str, Any]:
    """Run one job of the sweep through the operator, its trainer played to its stop or its end."""
    training_job = manifest(name=name, criteria=CRITERIA, metrics={"interval": "1s"})
    training_job["metadata"]["labels"] = STUDY
    with running_trainer(plane, namespace, training_job) as (trainer, pod):
        return play_curve(plane, namespace, name, values, trainer, pod)


def test_forecast_and_rungs_stop_live_where_stopline_replay_of_the_recorded_curves_stops(
    plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    with operator(namespace):
        live = {name: run_job(plane, namespace, name, values) for name, values in SWEEP.items()}
    for name, values in SWEEP.items():
        curve = live[name]["curve"]
        assert curve == values[: len(curve)], f"{name}: status.curve is not what the trainer reported"

    recorded = {name: live[name]["curve"] for name in SWEEP}
    (sweep,) = replay_recorded(tmp_path, manifest(name="sweep", criteria=CRITERIA), recorded).sweeps
    replayed = {result.job: result for result in sweep.results}

    def live_decision(current: dict[str, Any]) -> tuple[object, ...] | None:
        if current["phase"] == "Succeeded":
            return None
        reason = current["stopReason"]
        return reason["type"], reason["criterion"], reason["epoch"], reason["message"]

    def replay_decision(result: replay.JobResult) -> tuple[object, ...] | None:
        decision = result.decision
        if decision is None:
            return None
        return decision.type, decision.criterion, result.epochs_run, decision.message

    assert {name: live_decision(live[name]) for name in SWEEP} == {
        name: replay_decision(replayed[name]) for name in SWEEP
    }
    kinds = sorted(str(decision[0]) for current in live.values() if (decision := live_decision(current)))
    assert "Forecast" in kinds and "Rungs" in kinds  # both criteria decided some job, not only one
