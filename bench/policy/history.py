"""Prior sweeps for small sweeps: the recommended policy with and without `forecast.history` on real sweeps.

Each task of bench/policy/curves (loaded as bench/policy/run.py does: val_loss, min where a task has it,
else val_acc, max; by default run.py's seeded sample of at most 100 configs per task, file order kept;
--max-configs 0 takes every config) with at least N_H + N_S configs is cut in file order:
- the history: its first N_H configs, whole curves (they ran to their end in an earlier sweep of the task);
- the small sweep: the next N_S configs, run one after another in that order under the recommended policy
  (examples/recommended-policy.yaml, objective set to the task's metric and mode), (a) without history and
  (b) with `history: [earlier]` added to its forecast and the history's curves passed as the earlier study.
Both run through `stopline replay`'s own code (stopline.replay.replay with history_file=...): the sweep and
the history are written as job,epoch,<metric> CSVs to a temp dir, each cell as run.py's values() feeds it
(a cell the source left empty is written `nan`: a failed evaluation, which the divergence criterion stops).
The history is evidence for the forecast only; the value to beat stays the small sweep's own best.

Scored per sweep as `stopline replay` scores it (Sweep.fraction_saved, Sweep.regret(): the best value the
sweep kept against its best without stopping, relative); run.py's score() (the value at the epoch each job
ended) is given beside it. Per setting: saved (mean of tasks, pooled), regret mean and max (worst task),
tasks over 0.5%; then (a) against (b) on the same small sweeps.

Run: .venv/bin/python bench/policy/history.py [--max-configs 100] [--jobs 2] [--small 12,15,20]
     [--history 10,20,40]
Writes bench/policy/out/history.md (--out; and history-tasks.csv beside it, per task) and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import OUT, RECOMMENDED_POLICY, REPO, SAFE_REGRET, Task, TaskScore, load, score, values
from stopline.replay import replay
from stopline.replay.curves import Curve

EARLIER = "earlier"  # the earlier study's name in the job's forecast.history
STUDY = "small-sweep"  # the small sweep's study (every job of it, with or without history)


@dataclass(frozen=True)
class Cut:
    small: int  # N_S: jobs of the small sweep
    history: int  # N_H: the earlier sweep's configs before it
    with_history: bool

    @property
    def label(self) -> str:
        side = f"(b) history of {self.history}" if self.with_history else "(a) no history"
        return f"N_S {self.small}, sweep after {self.history}: {side}"


@dataclass(frozen=True)
class Outcome:
    task: str
    saved: float
    run: int
    available: int
    regret: float  # replay's Sweep.regret(), relative
    final_regret: float  # run.py's score(): the value at the epoch each job ended, relative
    stopped: int


def job_manifest(task: Task, with_history: bool) -> dict[str, object]:
    """The recommended policy for this task: its objective, and the forecast's history when asked."""
    manifest: dict[str, object] = yaml.safe_load(RECOMMENDED_POLICY.read_text())
    manifest = copy.deepcopy(manifest)
    metadata = manifest["metadata"]
    spec = manifest["spec"]
    assert isinstance(metadata, dict) and isinstance(spec, dict)
    metadata["labels"] = {"stopline.dev/study": STUDY}
    spec["objective"] = {"metric": task.metric, "mode": task.mode}
    if with_history:
        forecasts = [c for c in spec["criteria"] if "forecast" in c]
        assert len(forecasts) == 1, "the recommended policy has one forecast"
        forecasts[0]["forecast"] = {**forecasts[0]["forecast"], "history": [EARLIER]}
    return manifest


def write_curves(path: Path, task: Task, jobs: list[Curve]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["job", "epoch", task.metric])
        for job in jobs:
            for epoch, value in zip(sorted(job.rows), values(task, job), strict=True):
                writer.writerow([job.job, epoch, repr(value) if math.isfinite(value) else str(value)])


def simulate(task: Task, cut: Cut) -> Outcome:
    """The small sweep of `cut` on `task` through stopline.replay.replay, scored."""
    earlier, sweep = task.jobs[: cut.history], task.jobs[cut.history : cut.history + cut.small]
    with tempfile.TemporaryDirectory(prefix="stopline-history-") as folder:
        root = Path(folder)
        job_file, curves_file, history_file = root / "job.yaml", root / "sweep.csv", root / "earlier.csv"
        job_file.write_text(yaml.safe_dump(job_manifest(task, cut.with_history), sort_keys=False))
        write_curves(curves_file, task, sweep)
        if cut.with_history:
            write_curves(history_file, task, earlier)
        result = replay(job_file, curves_file, history_file=history_file if cut.with_history else None)
    (replayed,) = result.sweeps
    regret = replayed.regret()
    if regret is None:
        raise ValueError(f"no finite {task.metric} value in the small sweep")
    runs = [job.epochs_run for job in replayed.results]
    scored = score(Task(task.name, task.metric, task.mode, sweep), runs)
    if not isinstance(scored, TaskScore):
        raise ValueError(scored)
    return Outcome(
        task.name,
        replayed.fraction_saved,
        replayed.epochs_run,
        replayed.epochs_available,
        regret + 0.0,  # -0.0 (a kept best equal to the best) as 0
        scored.regret + 0.0,
        sum(job.decision is not None for job in replayed.results),
    )


# The worker processes are forked after these are set, so they read them instead of unpickling tasks.
TASKS: list[Task] = []
CUTS: list[Cut] = []


def _one(pair: tuple[int, int]) -> tuple[int, int, Outcome | str, float]:
    cut, task = CUTS[pair[0]], TASKS[pair[1]]
    clock = time.monotonic()
    try:
        result: Outcome | str = simulate(task, cut)
    except Exception as error:  # a task that cannot be replayed is reported; the run goes on
        result = f"{type(error).__name__}: {error} ({traceback.extract_tb(error.__traceback__)[-1].name})"
    return pair[0], pair[1], result, time.monotonic() - clock


@dataclass(frozen=True)
class Row:
    cut: Cut
    scored: int
    saved_mean: float
    saved_pooled: float
    regret_mean: float  # %
    regret_max: float  # %
    worst_task: str
    over: int
    final_max: float  # %, run.py's score()
    final_worst: str
    final_over: int


def summarise(cut: Cut, outcomes: list[Outcome]) -> Row:
    regrets = [o.regret * 100 for o in outcomes]
    finals = [o.final_regret * 100 for o in outcomes]
    worst = max(range(len(outcomes)), key=lambda i: regrets[i])
    final_worst = max(range(len(outcomes)), key=lambda i: finals[i])

    def named(index: int, regret: float) -> str:
        return outcomes[index].task if regret > 0 else "none lost"

    return Row(
        cut,
        len(outcomes),
        statistics.mean(o.saved for o in outcomes),
        1 - sum(o.run for o in outcomes) / sum(o.available for o in outcomes),
        statistics.mean(regrets),
        regrets[worst],
        named(worst, regrets[worst]),
        sum(r > SAFE_REGRET for r in regrets),
        finals[final_worst],
        named(final_worst, finals[final_worst]),
        sum(r > SAFE_REGRET for r in finals),
    )


def tables(rows: dict[Cut, Row], outcomes: dict[Cut, list[Outcome]], eligible: int) -> list[str]:
    lines = [
        "| N_S | sweep after N_H | policy | saved (mean of tasks) | saved (pooled) | regret mean "
        f"| regret max (worst task) | tasks > {SAFE_REGRET}% | run.py score: regret max (worst task) "
        f"| run.py score: tasks > {SAFE_REGRET}% |",
        "|" + "---|" * 10,
    ]
    for cut, r in rows.items():
        policy = f"(b) history of {cut.history}" if cut.with_history else "(a) no history"
        lines.append(
            f"| {cut.small} | {cut.history} | {policy} | {r.saved_mean:.1%} | {r.saved_pooled:.1%} "
            f"| {r.regret_mean:.2f}% | {r.regret_max:.2f}% ({r.worst_task}) | {r.over}/{r.scored} "
            f"| {r.final_max:.2f}% ({r.final_worst}) | {r.final_over}/{r.scored} |"
        )
    lines += [
        "",
        f"(a) against (b) on the same small sweeps ({eligible} tasks with enough configs; saved is the mean "
        "of tasks, worst the worst task's regret by Sweep.regret(); more/less: tasks where (b) saved more or "
        "less than (a)):",
        "",
        "| N_S | N_H | saved (a) | saved (b) | (b) - (a) | tasks (b) saved more / less | worst (a) "
        f"| worst (b) | > {SAFE_REGRET}% (a) | > {SAFE_REGRET}% (b) | jobs stopped (a) | jobs stopped (b) |",
        "|" + "---|" * 12,
    ]
    for cut, b in rows.items():
        if not cut.with_history:
            continue
        plain = Cut(cut.small, cut.history, False)
        a = rows.get(plain)
        if a is None:
            continue
        by_task = {o.task: o for o in outcomes[plain]}
        pairs = [(by_task[o.task], o) for o in outcomes[cut] if o.task in by_task]
        more = sum(ob.saved > oa.saved + 1e-12 for oa, ob in pairs)
        less = sum(ob.saved < oa.saved - 1e-12 for oa, ob in pairs)
        stopped_a = sum(o.stopped for o in outcomes[plain])
        stopped_b = sum(o.stopped for o in outcomes[cut])
        jobs = cut.small * len(outcomes[cut])
        lines.append(
            f"| {cut.small} | {cut.history} | {a.saved_mean:.1%} | {b.saved_mean:.1%} "
            f"| {(b.saved_mean - a.saved_mean) * 100:+.1f} pts | {more} / {less} "
            f"| {a.regret_max:.2f}% ({a.worst_task}) | {b.regret_max:.2f}% ({b.worst_task}) "
            f"| {a.over}/{a.scored} | {b.over}/{b.scored} | {stopped_a}/{len(outcomes[plain]) * cut.small} "
            f"| {stopped_b}/{jobs} |"
        )
    lines += [
        "",
        "Per N_S, the small sweeps of every N_H together (each task's sweeps after 10, 20 and 40 configs: "
        "the same sweeps with and without history; saved is the mean over them, worst the worst sweep):",
        "",
        f"| N_S | sweeps | saved (a) | saved (b) | worst (a) | worst (b) | sweeps > {SAFE_REGRET}% (a) "
        f"| sweeps > {SAFE_REGRET}% (b) |",
        "|" + "---|" * 8,
    ]
    for small in dict.fromkeys(cut.small for cut in rows):
        sides = []
        for with_history in (False, True):
            pooled = [
                (cut.history, o)
                for cut, scored in outcomes.items()
                if cut.small == small and cut.with_history == with_history
                for o in scored
            ]
            worst_h, worst = max(pooled, key=lambda pair: pair[1].regret)
            where = f"{worst.task}, after {worst_h}" if worst.regret > 0 else "none lost"
            sides.append(
                (
                    len(pooled),
                    statistics.mean(o.saved for _, o in pooled),
                    f"{worst.regret:.2%} ({where})",
                    sum(o.regret * 100 > SAFE_REGRET for _, o in pooled),
                )
            )
        (n, saved_a, worst_a, over_a), (_, saved_b, worst_b, over_b) = sides
        lines.append(
            f"| {small} | {n} | {saved_a:.1%} | {saved_b:.1%} | {worst_a} | {worst_b} | {over_a}/{n} "
            f"| {over_b}/{n} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--curves", type=Path, default=REPO / "bench" / "policy" / "curves" / "curves.csv.gz")
    parser.add_argument(
        "--max-configs", type=int, default=100, help="run.py's seeded sample per task (0: every config)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--small", default="12,15,20", help="N_S: the small sweeps' sizes")
    parser.add_argument("--history", default="10,20,40", help="N_H: the earlier sweeps' sizes")
    parser.add_argument("--out", type=Path, default=OUT / "history.md")
    args = parser.parse_args()
    started = time.monotonic()
    smalls = [int(n) for n in args.small.split(",")]
    histories = [int(n) for n in args.history.split(",")]
    tasks, skipped = load(args.curves, args.max_configs or None)
    need = max(smalls) + max(histories)
    eligible = [task for task in tasks if len(task.jobs) >= need]
    short = [f"{task.name} ({len(task.jobs)})" for task in tasks if len(task.jobs) < need]
    TASKS[:] = eligible
    CUTS[:] = [Cut(s, h, b) for s in smalls for h in histories for b in (False, True)]
    pairs = [(c, t) for c in range(len(CUTS)) for t in range(len(TASKS))]
    outcomes: dict[Cut, list[Outcome]] = {cut: [] for cut in CUTS}
    problems, seconds = [], 0.0
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for c, t, result, spent in pool.imap_unordered(_one, pairs):
            seconds += spent
            if isinstance(result, str):
                problems.append(f"not scored: {CUTS[c].label} on {TASKS[t].name}: {result}")
            else:
                outcomes[CUTS[c]].append(result)
    for scored in outcomes.values():
        scored.sort(key=lambda o: o.task)
    rows = {cut: summarise(cut, scored) for cut, scored in outcomes.items() if scored}
    sample = (
        f"run.py's seeded sample of at most {args.max_configs} configs per task (file order kept)"
        if args.max_configs
        else "every config of each task, in file order"
    )
    lines = [
        "# Prior sweeps (forecast.history) for small sweeps",
        "",
        f"{args.curves.relative_to(REPO) if args.curves.is_relative_to(REPO) else args.curves}: {sample}; "
        f"{len(eligible)} of {len(tasks)} tasks have at least {need} configs (N_H {max(histories)} + N_S "
        f"{max(smalls)}), so every setting is scored on the same tasks"
        + (f"; left out: {', '.join(short)}" if short else "")
        + ". History: the task's first N_H configs, whole; the small sweep: the next N_S, run in order under "
        "examples/recommended-policy.yaml through stopline.replay.replay, (a) as it is, (b) with "
        f"`history: [{EARLIER}]` on its forecast and the history passed as --history. Saved and regret as "
        "`stopline replay` gives them (Sweep.fraction_saved, Sweep.regret()); run.py's score() beside.",
        "",
        *tables(rows, outcomes, len(eligible)),
        "",
        *(f"- {line}" for line in [*skipped, *problems]),
        f"{len(pairs)} replays, {seconds:.0f} s CPU in {args.jobs} workers, "
        f"{time.monotonic() - started:.0f} s wall.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    per_task = args.out.with_name(f"{args.out.stem}-tasks.csv")
    with per_task.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["n_s", "n_h", "history", "task", "saved", "regret_percent", "final_regret_percent"])
        for cut, scored in outcomes.items():
            for o in scored:
                writer.writerow(
                    [
                        cut.small,
                        cut.history,
                        int(cut.with_history),
                        o.task,
                        f"{o.saved:.6f}",
                        f"{o.regret * 100:.6f}",
                        f"{o.final_regret * 100:.6f}",
                    ]
                )
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out} and {per_task}")


if __name__ == "__main__":
    main()
