"""How far more evidence could take the forecast: every earlier job's whole curve as a finished neighbour.

The forecast learns only from the jobs that finished; a stopped job's epochs after its stop are never
seen. Resumes (bench/policy/resume.py) and partial curves could show it more. This bench gives the ceiling
of that route: each task of bench/policy/curves is replayed in file order as bench/policy/run.py does
(the same engine, stopline.replay.replay_job), but a job the forecast stopped also joins the evidence
with its whole curve, as if it had finished, at no cost (an oracle; the jobs' runs are still what the
policy ran). The value to beat stays honest: the best value each ended job keeps. Printed, not asserted.

Run: .venv/bin/python bench/policy/evidence.py [--max-configs 100] [--bounds 0.01,0.03,0.1] [--jobs 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import DIVERGED, REPO, SAFE_REGRET, Task, TaskScore, load, ours, score
from stopline.criteria import CohortCurve, Observation
from stopline.criteria import forecast as forecast_module
from stopline.criteria.forecast import ForecastCriterion
from stopline.replay import Curve

ORACLE: list[CohortCurve] = []  # the whole curves of the jobs stopped so far in the task being replayed
_evidence = forecast_module.evidence


def with_oracle(criterion: ForecastCriterion, observation: Observation) -> tuple[CohortCurve, ...]:
    return _evidence(criterion, observation) + tuple(ORACLE)


def simulate(task: Task, probability: float, oracle: bool) -> list[int]:
    criteria = [{"name": "f", "forecast": {"probability": probability, "similarity": 2}}, DIVERGED]
    forecast_module.evidence = with_oracle if oracle else _evidence
    ORACLE.clear()

    def ended(curve: Curve, stopped: bool) -> None:
        if stopped:
            whole = {e: row[task.metric] for e, row in curve.rows.items()}
            ORACLE.append(CohortCurve(f"{curve.job} (whole)", task.metric, whole, completed=True))

    runs: list[int] = ours(criteria, task, ended)  # `run` is found on sys.path at run time: Any to mypy
    return runs


TASKS: list[Task] = []


def _one(case: tuple[int, float, bool]) -> tuple[tuple[int, float, bool], TaskScore | str]:
    index, probability, oracle = case
    task = TASKS[index]
    return case, score(task, simulate(task, probability, oracle))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--curves", type=Path, default=REPO / "bench" / "policy" / "curves" / "curves.csv.gz")
    parser.add_argument("--max-configs", type=int, default=0, help="a seeded sample of N configs per task")
    parser.add_argument("--bounds", default="0.01,0.03,0.1", help="forecast bounds, a,b,...")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()
    tasks, skipped = load(args.curves, args.max_configs or None)
    TASKS[:] = tasks
    bounds = [float(b) for b in args.bounds.split(",") if b]
    cases = [(t, p, oracle) for oracle in (False, True) for p in bounds for t in range(len(tasks))]
    results: dict[tuple[int, float, bool], TaskScore | str] = {}
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for case, result in pool.imap_unordered(_one, cases):
            results[case] = result
    sample = f", at most {args.max_configs} configs per task" if args.max_configs else ""
    print(f"{len(tasks)} tasks{sample}; not scored: {len(skipped)}")
    print("| evidence | forecast bound | saved (mean of tasks) | worst task | tasks > 0.5% |")
    print("|---|---|---|---|---|")
    for oracle in (False, True):
        for p in bounds:
            scored = [
                (tasks[t].name, result)
                for t in range(len(tasks))
                if isinstance(result := results[(t, p, oracle)], TaskScore)
            ]
            saved = statistics.mean(1 - s.run / s.available for _, s in scored)
            name, worst = max(scored, key=lambda pair: pair[1].regret)
            over = sum(s.regret * 100 > SAFE_REGRET for _, s in scored)
            label = "finished jobs + every stopped job's whole curve" if oracle else "finished jobs"
            regret = f"{worst.regret * 100:.2f}% ({name})"
            print(f"| {label} | {p} | {saved:.1%} | {regret} | {over}/{len(scored)} |")


if __name__ == "__main__":
    main()
