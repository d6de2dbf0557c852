"""Stop policies on real learning curves: GPU-epochs saved versus the sweep's lost final quality.

Each task of bench/policy/curves/curves.csv.gz (licences beside it) is one sweep; its configs are the
jobs, run one after another in file order (the cohort is the jobs before). Ours runs through the real
engine (stopline.replay.replay_job); the peers run their own code: Lightning's EarlyStopping, Optuna's
Percentile (Median), SuccessiveHalving, Hyperband and Wilcoxon pruners, and Ray Tune's ASHAScheduler in
stop mode (when `ray[tune]` is importable: `pip install -e '.[bench-ray]'`; Wilcoxon needs scipy, which
that extra brings too). Every policy's main knob is swept; the front is epochs saved (mean of tasks)
against the worst task's regret. A task that cannot be scored (no metric values, a policy that fails on
it) is reported and left out; the run goes on.
Run: .venv/bin/python bench/policy/run.py [--max-configs N] [--jobs 2] [--half a|b] [--plot PATH]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import math
import multiprocessing
import random
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib
import optuna
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping
from matplotlib.figure import Figure

from stopline import api
from stopline.criteria import CohortCurve
from stopline.replay import Curve, replay_job

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "out"
SAFE_REGRET = 0.5  # % of the sweep's best final metric: the acceptance bound of the front table


@dataclass
class Task:
    name: str
    metric: str
    mode: api.Mode
    jobs: list[Curve]


@dataclass(frozen=True)
class Setting:
    family: str
    knob: str
    run: Callable[[Task], list[int]]


def load(path: Path, max_configs: int | None) -> tuple[list[Task], list[str]]:
    """Tasks with their configs in file order (val_loss, min, where a task has it, else val_acc, max), and
    the tasks that have neither, which cannot be scored."""
    raw: dict[str, dict[str, Curve]] = {}
    with gzip.open(path, "rt") as handle:
        for row in csv.DictReader(handle):
            curve = raw.setdefault(row["task"], {}).setdefault(row["config"], Curve(row["config"]))
            curve.rows[int(row["epoch"])] = {
                k: float(row[k]) for k in ("val_loss", "val_acc") if row.get(k, "") != ""
            }
            if row.get("epoch_seconds"):
                curve.seconds[int(row["epoch"])] = float(row["epoch_seconds"])
    tasks, skipped = [], []
    for name, configs in raw.items():
        jobs = list(configs.values())
        present = {metric for job in jobs for values in job.rows.values() for metric in values}
        metric = next((m for m in ("val_loss", "val_acc") if m in present), None)
        if metric is None:
            skipped.append(f"{name}: no val_loss or val_acc values")
            continue
        if max_configs is not None and len(jobs) > max_configs:
            keep = set(random.Random(name).sample(range(len(jobs)), max_configs))
            jobs = [job for index, job in enumerate(jobs) if index in keep]
        tasks.append(Task(name, metric, "min" if metric == "val_loss" else "max", jobs))
    return tasks, skipped


def values(task: Task, job: Curve) -> list[float]:
    """What every policy is fed, epoch by epoch: a cell the source left empty is NaN, as a trainer whose
    evaluation failed reports it."""
    return [job.rows[e].get(task.metric, math.nan) for e in sorted(job.rows)]


# A NaN or infinite objective stops the job in every stopline setting, as it does in the recommended
# policy: Lightning's EarlyStopping (check_finite) and Optuna's pruners (at a rung) stop it by themselves.
DIVERGED: dict[str, object] = {"name": "diverged", "divergence": {}}
RECOMMENDED_POLICY = REPO / "examples" / "recommended-policy.yaml"


def recommended_criteria() -> list[dict[str, object]]:
    criteria: list[dict[str, object]] = yaml.safe_load(RECOMMENDED_POLICY.read_text())["spec"]["criteria"]
    return criteria


def ours(
    criteria: list[dict[str, object]], task: Task, ended: Callable[[Curve, bool], None] | None = None
) -> list[int]:
    """Each job's epochs run under `criteria`, the jobs before it its cohort; `ended(curve, stopped)` is
    told of each job as it ends (bench/policy/evidence.py adds a stopped one's whole curve to evidence)."""
    spec = api.parse_spec(
        {
            "template": {"spec": {"containers": [{"name": "trainer"}]}},
            "objective": {"metric": task.metric, "mode": task.mode},
            "checkpoint": {"pvc": {"claimName": "bench"}},
            "criteria": criteria,
        }
    )
    cohort: list[CohortCurve] = []
    runs = []
    for job in task.jobs:
        epochs = zip(sorted(job.rows), values(task, job), strict=True)
        fed = Curve(job.job, rows={epoch: {task.metric: value} for epoch, value in epochs})
        ran, decision = replay_job(spec, fed, tuple(cohort), max(job.rows))
        kept = {e: row[task.metric] for e, row in fed.rows.items() if e <= ran}  # NaN: dropped as live
        stopped = decision is not None
        cohort.append(CohortCurve(job.job, task.metric, kept, stopped=stopped, completed=not stopped))
        if ended is not None:
            ended(fed, stopped)
        runs.append(ran)
    return runs


def lightning(patience: int, task: Task) -> list[int]:
    runs = []
    for job in task.jobs:
        callback = EarlyStopping("m", mode=task.mode, patience=patience)  # min_delta 0, check_finite True
        curve = values(task, job)
        stop = next(
            (e for e, v in enumerate(curve, 1) if callback._evaluate_stopping_criteria(torch.tensor(v))[0]),
            len(curve),
        )
        runs.append(stop)
    return runs


def optuna_pruner(make: Callable[[], optuna.pruners.BasePruner], task: Task) -> list[int]:
    """A pruner as users write it: trial.report(value, epoch), stop when should_prune()."""
    direction = (
        optuna.study.StudyDirection.MINIMIZE if task.mode == "min" else optuna.study.StudyDirection.MAXIMIZE
    )
    # Hyperband puts a trial in a bracket by a hash of the study's name: a fixed name, the same brackets
    # in every run (optuna's default name is random).
    study = optuna.create_study(study_name=task.name, direction=direction, pruner=make())
    runs = []
    for job in task.jobs:
        trial, curve = study.ask(), values(task, job)
        stop = None
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
            if epoch < len(curve) and trial.should_prune():
                stop = epoch
                break
        if stop is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif math.isfinite(curve[-1]):
            study.tell(trial, curve[-1])
        else:  # a diverged run: optuna refuses NaN objective values, a failed trial is what users record
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        runs.append(stop or len(curve))
    return runs


class _RayTrial:
    """What ASHAScheduler reads of a trial: its id."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def ray_asha(reduction_factor: int, task: Task) -> list[int]:
    """Ray Tune's ASHAScheduler in stop mode (grace_period 1, max_t the sweep's budget), fed as Tune does."""
    from ray.tune.schedulers import ASHAScheduler  # optional: pip install -e '.[bench-ray]'

    horizon = max(len(job.rows) for job in task.jobs)
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        metric="m",
        mode=task.mode,
        max_t=horizon,
        grace_period=1,
        reduction_factor=reduction_factor,
    )
    runs = []
    for index, job in enumerate(task.jobs):
        trial, curve, stop = _RayTrial(str(index)), values(task, job), None
        scheduler.on_trial_add(None, trial)  # type: ignore[arg-type, unused-ignore]
        for epoch, value in enumerate(curve, 1):
            action = scheduler.on_trial_result(None, trial, {"training_iteration": epoch, "m": value})  # type: ignore[arg-type, unused-ignore]
            if action == "STOP" and epoch < len(curve):
                stop = epoch
                break
        if stop is None:
            scheduler.on_trial_complete(None, trial, {"training_iteration": len(curve), "m": curve[-1]})  # type: ignore[arg-type, unused-ignore]
        runs.append(stop or len(curve))
    return runs


def no_stopping(task: Task) -> list[int]:
    return [len(job.rows) for job in task.jobs]


Rungs = tuple[int, int, int, str]  # (reductionFactor, minEpochs, minJobs, compare)

# chosen on the sample's grid in docs/policy.md
RUNGS_TUNED: tuple[Rungs, ...] = (
    (4, 3, 3, "best"),
    (8, 4, 2, "current"),
    (3, 2, 2, "best"),
    (6, 1, 2, "current"),
    (12, 1, 2, "best"),
    (12, 1, 1, "current"),
    (16, 1, 1, "current"),
    (4, 1, 1, "current"),  # Ray Tune's ASHAScheduler rule at its default reduction_factor
    (8, 1, 1, "current"),
)


# (probability, similarity, cohort percentile), chosen on the sample's grid in docs/policy.md
FORECAST_AND_COHORT = ((0.1, 1, 85), (0.1, 1, 90), (0.1, 2, 90))

# with cut=rank, chosen on all curves (docs/policy.md)
RUNGS_RANK: tuple[Rungs, ...] = (
    (3, 1, 2, "best"),
    (5, 1, 2, "best"),
    (4, 1, 2, "current"),
    (5, 1, 1, "best"),
)
# the rank setting the forecast goes beside, and its probabilities: it also stops between the rungs
RANK_BESIDE_FORECAST: Rungs = (5, 1, 2, "best")
RANK_AND_FORECAST = (0.1, 0.3)


def rungs(setting: Rungs, cut: str = "quantile") -> dict[str, object]:
    eta, first, jobs, compare = setting
    knobs = {"reductionFactor": eta, "minEpochs": first, "minJobs": jobs, "compare": compare, "cut": cut}
    return {"name": "r", "rungs": knobs}


def rungs_knob(setting: Rungs) -> str:
    eta, first, jobs, compare = setting
    return f"reductionFactor {eta}, minEpochs {first}, minJobs {jobs}, compare {compare}"


# Optuna's pruners: (class, the knob swept, its values, its default, how the default is marked, fixed
# keyword arguments)
OPTUNA_KNOBS: tuple[tuple[str, str, tuple[float, ...], float, str, dict[str, int]], ...] = (
    (
        "PercentilePruner",
        "percentile",
        (25, 50, 75),
        50,
        " (= MedianPruner defaults)",
        {"n_startup_trials": 5},
    ),
    ("SuccessiveHalvingPruner", "reduction_factor", (2, 4, 8), 4, " (default)", {}),
    ("HyperbandPruner", "reduction_factor", (2, 3, 5), 3, " (default)", {}),
    ("WilcoxonPruner", "p_threshold", (0.01, 0.1, 0.3), 0.1, " (default)", {}),
)


def settings(ray: bool) -> list[Setting]:
    """Every policy with its main knob swept; the peers' defaults are marked."""
    out = [Setting("no stopping", "-", no_stopping)]
    out += [
        Setting(
            "Lightning EarlyStopping", f"patience {p}{' (default)' if p == 3 else ''}", partial(lightning, p)
        )
        for p in (3, 10, 30)
    ]
    out += [
        Setting(
            f"Optuna {pruner}",
            f"{knob} {value}{mark if value == default else ''}",
            partial(optuna_pruner, partial(getattr(optuna.pruners, pruner), **{knob: value}, **fixed)),
        )
        for pruner, knob, values, default, mark, fixed in OPTUNA_KNOBS
        for value in values
    ]
    if ray:
        out += [
            Setting(
                "Ray Tune ASHAScheduler",
                f"reduction_factor {rf}{' (default)' if rf == 4 else ''}",
                partial(ray_asha, rf),
            )
            for rf in (2, 4, 8)
        ]
    out += [
        Setting(
            "stopline cohort",
            f"percentile {q}{' (default)' if q == 50 else ''}",
            partial(ours, [{"name": "c", "cohort": {"percentile": q}}, DIVERGED]),
        )
        for q in (25, 50, 75)
    ]
    out += [
        Setting(
            "stopline rungs",
            f"reductionFactor {eta}{' (default)' if eta == 3 else ''}",
            partial(ours, [{"name": "r", "rungs": {"reductionFactor": eta}}, DIVERGED]),
        )
        for eta in (2, 3, 4)
    ]
    # Rungs judged sooner (minEpochs) or with fewer peers (minJobs): the front between the peers' 6% and
    # 30% worst-task regret. minJobs 1 with compare=current is Ray Tune's ASHAScheduler rule.
    out += [
        Setting(
            "stopline rungs, tuned",
            rungs_knob(setting),
            partial(ours, [rungs(setting), DIVERGED]),
        )
        for setting in RUNGS_TUNED
    ]
    # The cut by rank (Optuna's, the ASHA paper's: the best floor(n/eta), this job counted) is stricter
    # than Ray's quantile: more saved at the same rungs, and the thrifty end of the front.
    out += [
        Setting(
            "stopline rungs, cut rank",
            rungs_knob(setting),
            partial(ours, [rungs(setting, "rank"), DIVERGED]),
        )
        for setting in RUNGS_RANK
    ]
    out += [
        Setting(
            "stopline rungs, cut rank + forecast",
            f"{rungs_knob(RANK_BESIDE_FORECAST)}; forecast probability {p}",
            partial(
                ours,
                [
                    rungs(RANK_BESIDE_FORECAST, "rank"),
                    {"name": "f", "forecast": {"probability": p}},
                    DIVERGED,
                ],
            ),
        )
        for p in RANK_AND_FORECAST
    ]
    out += [
        Setting(
            f"stopline forecast, similarity {similarity}",
            f"probability {p}{' (defaults, recommended)' if (p, similarity) == (0.01, 2) else ''}",
            partial(
                ours,
                recommended_criteria()
                if (p, similarity) == (0.01, 2)
                else [{"name": "f", "forecast": {"probability": p, "similarity": similarity}}, DIVERGED],
            ),
        )
        for similarity, probabilities in ((2, (0.003, 0.01, 0.03, 0.1, 0.3)), (1, (0.01, 0.03, 0.1)))
        for p in probabilities
    ]
    # Either stops: the forecast, or the cohort rule keeping all but the worst tenth or sixth (percentile
    # 90/85): the front between the forecast's 1.5% and the rungs' 6% worst-task regret.
    out += [
        Setting(
            "stopline forecast + cohort",
            f"probability {p}, similarity {similarity}, cohort percentile {q}",
            partial(
                ours,
                [
                    {"name": "f", "forecast": {"probability": p, "similarity": similarity}},
                    {"name": "c", "cohort": {"percentile": q}},
                    DIVERGED,
                ],
            ),
        )
        for p, similarity, q in FORECAST_AND_COHORT
    ]
    return out


@dataclass
class TaskScore:
    run: int
    available: int
    regret: float  # relative loss of the sweep's best final metric, > 0 is worse


def worse_by(value: float, reference: float, mode: api.Mode) -> float:
    """How much worse value is than reference, relative to |reference| (negative when better)."""
    gap = value - reference if mode == "min" else reference - value
    return gap / abs(reference) if reference else gap


def score(task: Task, runs: list[int]) -> TaskScore | str:
    """The task's score, or why it cannot be scored."""
    finals, stopped_values = [], []
    for job, ran in zip(task.jobs, runs, strict=True):
        curve = values(task, job)
        finals.append(curve[-1])
        stopped_values.append(curve[ran - 1])
    pick = min if task.mode == "min" else max
    finite_finals = [v for v in finals if math.isfinite(v)]
    finite_stopped = [v for v in stopped_values if math.isfinite(v)]
    if not finite_finals or not finite_stopped:
        return f"no finite final {task.metric} value"
    return TaskScore(
        sum(runs),
        sum(len(job.rows) for job in task.jobs),
        worse_by(pick(finite_stopped), pick(finite_finals), task.mode),
    )


# The worker processes are forked after these are set, so they read them instead of unpickling closures.
TASKS: list[Task] = []
SETTINGS: list[Setting] = []


def _one(pair: tuple[int, int]) -> tuple[int, int, TaskScore | str, float]:
    setting, task = SETTINGS[pair[0]], TASKS[pair[1]]
    clock = time.monotonic()
    try:
        result: TaskScore | str = score(task, setting.run(task))
    except Exception as error:  # a policy that fails on one task is reported; the run goes on
        result = f"{type(error).__name__}: {error} ({traceback.extract_tb(error.__traceback__)[-1].name})"
    return pair[0], pair[1], result, time.monotonic() - clock


@dataclass
class Row:
    setting: Setting
    scored: int
    saved_mean: float
    saved_pooled: float
    regret_mean: float
    regret_max: float
    worst_task: str
    over: int  # tasks with regret > SAFE_REGRET
    seconds: float


def summarise(setting: Setting, scores: list[tuple[Task, TaskScore]], seconds: float) -> Row:
    regrets = [s.regret * 100 for _, s in scores]
    worst = max(range(len(scores)), key=lambda i: regrets[i])
    return Row(
        setting,
        len(scores),
        statistics.mean(1 - s.run / s.available for _, s in scores),
        1 - sum(s.run for _, s in scores) / sum(s.available for _, s in scores),
        statistics.mean(regrets),
        regrets[worst],
        scores[worst][0].name,
        sum(r > SAFE_REGRET for r in regrets),
        seconds,
    )


def ahead_of_peers(rows: list[Row]) -> list[str]:
    """For every peer setting, the stopline setting that saves the most at no more worst-task regret, and
    whether that is ahead of the peer: it saves more, or as much for less regret."""
    ours_rows = [r for r in rows if r.setting.family.startswith("stopline")]
    lines = []
    for peer in rows:
        if peer.setting.family.startswith("stopline") or peer.setting.family == "no stopping":
            continue
        within = [r for r in ours_rows if r.regret_max <= peer.regret_max]
        best = max(within, key=lambda r: r.saved_mean, default=None)
        name = f"{peer.setting.family} {peer.setting.knob} ({peer.saved_mean:.1%}, {peer.regret_max:.2f}%)"
        if best is None:
            lines.append(f"not ahead of {name}: no stopline setting within {peer.regret_max:.2f}%")
            continue
        ahead = best.saved_mean > peer.saved_mean or (
            best.saved_mean >= peer.saved_mean and best.regret_max < peer.regret_max
        )
        verdict = "ahead of" if ahead else "not ahead of"
        lines.append(
            f"{verdict} {name}: {best.setting.family} {best.setting.knob} saves {best.saved_mean:.1%} "
            f"for {best.regret_max:.2f}%"
        )
    return lines


def front_plot(rows: list[Row], title: str, path: Path) -> None:
    figure = Figure(figsize=(9, 6))
    axes = figure.subplots()
    families: dict[str, list[Row]] = {}
    for row in rows:
        families.setdefault(row.setting.family, []).append(row)
    colours = matplotlib.colormaps["tab20"]
    for index, (family, members) in enumerate(families.items()):
        members.sort(key=lambda r: r.saved_mean)
        ours_family = family.startswith("stopline")
        axes.plot(
            [r.saved_mean * 100 for r in members],
            [max(r.regret_max, 0.01) for r in members],
            marker="o" if ours_family else "s",
            linewidth=2.5 if ours_family else 1.2,
            label=family,
            color=colours(index % 20),
        )
    axes.axhline(SAFE_REGRET, color="grey", linestyle="--", linewidth=1)
    axes.axvline(70, color="grey", linestyle=":", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("GPU-epochs saved, mean over tasks (%)")
    axes.set_ylabel("worst task's regret of the sweep's best final metric (%, log; 0 drawn at 0.01)")
    axes.set_title(title)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3, which="both")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--curves", type=Path, default=REPO / "bench" / "policy" / "curves" / "curves.csv.gz")
    parser.add_argument("--max-configs", type=int, default=0, help="a seeded sample of N configs per task")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--half", choices=("a", "b"), help="only every other task (a: 1st, 3rd, ...)")
    parser.add_argument("--only", default="", help="only the settings whose 'family knob' has this text")
    parser.add_argument("--skip", default="", help="leave out the families whose name has this text")
    parser.add_argument("--plot", type=Path, default=OUT / "front.png")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")  # optuna's experimental warnings, numpy's all-NaN slices
    started = time.monotonic()
    tasks, skipped = load(args.curves, args.max_configs or None)
    if args.half:
        tasks = tasks[args.half == "b" :: 2]
    total = sum(len(task.jobs) for task in tasks)
    print(f"{args.curves}: {len(tasks)} tasks, {total} curves")
    for line in skipped:
        print(f"  not scored: {line}")
    if args.max_configs:
        print(f"  at most {args.max_configs} configs per task, a seeded sample (--max-configs)")
    ray = importlib.util.find_spec("ray") is not None
    if not ray:
        print(
            "  Ray Tune's ASHAScheduler left out: ray[tune] is not installed (pip install -e '.[bench-ray]')"
        )
    TASKS[:] = tasks
    wanted, unwanted = args.only.lower(), args.skip.lower()
    SETTINGS[:] = [
        s
        for s in settings(ray)
        if s.family == "no stopping"
        or (wanted in f"{s.family} {s.knob}".lower() and not (unwanted and unwanted in s.family.lower()))
    ]
    pairs = [(s, t) for s in range(len(SETTINGS)) for t in range(len(TASKS))]
    results: dict[int, list[tuple[Task, TaskScore]]] = {s: [] for s in range(len(SETTINGS))}
    seconds = dict.fromkeys(range(len(SETTINGS)), 0.0)
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for s, t, result, spent in pool.imap_unordered(_one, pairs):
            seconds[s] += spent
            if isinstance(result, str):
                print(f"  not scored: {SETTINGS[s].family} {SETTINGS[s].knob} on {TASKS[t].name}: {result}")
            else:
                results[s].append((TASKS[t], result))
    rows = [summarise(SETTINGS[s], results[s], seconds[s]) for s in range(len(SETTINGS)) if results[s]]
    OUT.mkdir(exist_ok=True)
    with (OUT / "tasks.csv").open("w", newline="") as handle:  # per task, for hold-out checks
        writer = csv.writer(handle)
        writer.writerow(["family", "knob", "task", "saved", "regret_percent"])
        for s, scored in results.items():
            for task, result in sorted(scored, key=lambda pair: pair[0].name):
                saved = 1 - result.run / result.available
                writer.writerow(
                    [
                        SETTINGS[s].family,
                        SETTINGS[s].knob,
                        task.name,
                        f"{saved:.6f}",
                        f"{result.regret * 100:.6f}",
                    ]
                )
    print(
        "\n| policy | knob | saved (mean of tasks) | saved (pooled) | regret mean | regret max (worst task) "
        f"| tasks > {SAFE_REGRET}% | CPU s |\n|" + "---|" * 8
    )
    for r in rows:
        print(
            f"| {r.setting.family} | {r.setting.knob} | {r.saved_mean:.1%} | {r.saved_pooled:.1%} "
            f"| {r.regret_mean:.2f}% | {r.regret_max:.2f}% ({r.worst_task}) | {r.over}/{r.scored} "
            f"| {r.seconds:.0f} |"
        )
    print(f"\nbest saving with worst-task regret <= {SAFE_REGRET}%, per family:")
    for family in dict.fromkeys(r.setting.family for r in rows):
        safe = [r for r in rows if r.setting.family == family and r.regret_max <= SAFE_REGRET]
        best = max(safe, key=lambda r: r.saved_mean, default=None)
        print(f"  {family}: " + (f"{best.saved_mean:.1%} ({best.setting.knob})" if best else "none"))
    print(
        "\nstopline against each peer setting (ahead: at the peer's worst-task regret or less it saves more):"
    )
    for line in ahead_of_peers(rows):
        print(f"  {line}")
    sample = f", {args.max_configs} configs per task" if args.max_configs else ""
    front_plot(rows, f"Stop policies on {len(tasks)} real sweeps ({total} curves{sample})", args.plot)
    print(
        f"\nplot: {args.plot}; per task: {OUT / 'tasks.csv'}  (total {time.monotonic() - started:.0f} s wall)"
    )


if __name__ == "__main__":
    main()
