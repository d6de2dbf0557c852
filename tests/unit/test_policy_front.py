"""bench/policy's verdict on each peer setting: ahead when stopline saves more at no more regret."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from scripts import load_script

BENCH = Path(__file__).resolve().parents[2] / "bench" / "policy" / "run.py"


def bench() -> ModuleType:
    return load_script(BENCH, "policy_bench")


def test_each_peer_setting_is_judged_against_the_best_stopline_setting_within_its_regret() -> None:
    run = bench()

    def row(family: str, knob: str, saved: float, worst: float) -> object:
        return run.Row(run.Setting(family, knob, run.no_stopping), 37, saved, saved, 0.0, worst, "t", 0, 0.0)

    rows = [
        row("no stopping", "-", 0.0, 0.0),
        row("Optuna HyperbandPruner", "reduction_factor 2", 0.677, 7.20),
        row("Optuna WilcoxonPruner", "p_threshold 0.01", 0.544, 5.15),
        row("Optuna SuccessiveHalvingPruner", "reduction_factor 8", 0.897, 14.11),
        row("Optuna PercentilePruner", "percentile 50", 0.80, 7.62),
        row("stopline forecast", "probability 0.1", 0.342, 1.46),
        row("stopline rungs", "a", 0.758, 6.05),
        row("stopline rungs", "b", 0.893, 7.89),
        row("stopline rungs", "c", 0.80, 6.0),
    ]
    verdicts = run.ahead_of_peers(rows)
    assert len(verdicts) == 4  # the peers only
    hyperband, wilcoxon, halving, percentile = verdicts
    assert hyperband.startswith("ahead of Optuna HyperbandPruner") and "rungs c saves 80.0%" in hyperband
    assert wilcoxon.startswith("not ahead of Optuna WilcoxonPruner")
    assert "forecast probability 0.1" in wilcoxon
    assert halving.startswith("not ahead of Optuna SuccessiveHalvingPruner")  # 89.3% < 89.7%
    assert percentile.startswith("ahead of Optuna PercentilePruner")  # as much (80%) for less regret (6%)


def test_the_benchs_recommended_row_is_the_example_and_every_stopline_setting_stops_a_nan_job() -> None:
    run = bench()
    criteria = run.recommended_criteria()
    assert [c["forecast"] for c in criteria if "forecast" in c] == [{"probability": 0.01, "similarity": 2}]
    assert [c["divergence"] for c in criteria if "divergence" in c] == [{}]
    assert len(criteria) == 2  # the label "probability 0.01 (defaults, recommended)" holds
    task = run.Task("t", "val_loss", "min", [])
    for job, rows in (("good", {1: 1.0, 2: 0.5, 3: 0.4}), ("diverged", {1: 0.9, 2: None, 3: 0.1})):
        cells = {e: ({} if v is None else {"val_loss": v}) for e, v in rows.items()}  # an empty cell
        task.jobs.append(run.Curve(job, rows=cells))
    for setting in run.settings(ray=False):
        if setting.family.startswith("stopline"):
            assert setting.run(task) == [3, 2], f"{setting.family} {setting.knob}"
