"""Stops that can be taken back: a stop policy plus the resume rule (stopline.criteria.resume) on real sweeps.

Each task of bench/policy/curves is one sweep whose configs start one after another in file order, as in
bench/policy/run.py. A new job runs under the stop policy through the engine (stopline.replay.replay_job)
with the jobs that ended before it as its cohort. When the sweep's evidence changes (a job finishes; with
--at end only when the sweep ends, after its last new job) the resume rule is asked which stopped jobs to
bring back: at most K at a time, most promising first; a resumed job goes on from its stop epoch (its
remaining epochs are run epochs) and, with --resumed judged, is judged again by the rule's own numbers at
every epoch (stopped again when its chance falls below the bound), with --resumed end runs to its end; its
finish is new evidence, and the rule is asked again until it resumes nothing. Those two are research knobs.
--resumed criteria is the live operator's way, and runs `stopline replay`'s own simulation
(stopline.replay.resumes.SweepRun): the rule is asked whenever a job ends (finished or stopped; --at is not
read), and a resumed job runs on under its own stop criteria (their states carried, the fired stop
dropped), so it may be stopped again by them and resumed again on new evidence. Regret is judged on the
weights each job keeps at its end: the value at the last epoch it ran (a stopped-and-never-resumed job
keeps its stop-time weights), as bench/policy/run.py scores it. The curves carry no maxEpochs or schedule
column, so every job of a task shares one budget group (the rule never reads task names or curve lengths).

Held out: every setting is scored per task; then a setting is chosen on some tasks only (the one that saves
the most with every chosen-on task within 0.5%) and reported on the others: on half a, judged on half b and
the other way round (every other task in file order, as run.py's --half), and leave-one-task-out (for each
task, the setting chosen on the 36 others, scored on it).

Run: .venv/bin/python bench/policy/resume.py [--max-configs 100] [--jobs 2] [--grid small|full]
Writes bench/policy/out/resume.md and bench/policy/out/resume-tasks.csv.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import multiprocessing
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import (
    DIVERGED,
    OUT,
    REPO,
    SAFE_REGRET,
    Task,
    load,
    recommended_criteria,
    score,
    values,
)
from stopline import api
from stopline.criteria import CohortCurve
from stopline.criteria import resume as rule
from stopline.replay import Curve, replay_job
from stopline.replay.resumes import SweepRun


@dataclass(frozen=True)
class Setting:
    """A stop policy and, unless `resume` is None, the resume rule beside it."""

    stop_name: str
    stop: tuple[dict[str, object], ...]
    resume: rule.ResumeSettings | None = None
    at: str = "finish"  # finish: every finish and the sweep's end; end: the sweep's end only
    # judged: a resumed job is judged again each epoch by the rule's numbers; end: it runs to its end;
    # criteria: as live and `stopline replay` do (stopline.replay.resumes): judged by its own criteria
    resumed: str = "judged"
    # the unseen jobs (like fewer than minJobs finished ones) kept while the sweep runs, resumed at its end
    defer_unseen: bool = False

    @property
    def label(self) -> str:
        if self.resume is None:
            return f"{self.stop_name}; no resume"
        r = self.resume
        return (
            f"{self.stop_name}; resume p {r.probability}, K {r.max_resumes}, sim {r.similarity:g}, "
            f"minJobs {r.min_jobs}, unseen {r.unseen}, "
            + (
                "at every end, resumed criteria (live)"
                if self.resumed == "criteria"
                else f"at {self.at}, resumed {self.resumed}"
            )
            + (", unseen deferred to the end" if self.defer_unseen else "")
        )


@dataclass
class Result:
    runs: list[int]
    resumes: int = 0
    resumed_epochs: int = 0


@dataclass
class Sim:
    """One sweep in progress: per job the epochs it ran, whether it is stopped, finished, resumed."""

    task: Task
    setting: Setting
    spec: api.TrainingJobSpec
    curves: list[list[float]] = field(default_factory=list)
    ran: dict[int, int] = field(default_factory=dict)
    phase: dict[int, rule.Phase] = field(default_factory=dict)
    members: dict[int, rule.SweepJob] = field(default_factory=dict)
    cohort: dict[int, CohortCurve] = field(default_factory=dict)
    resumes: int = 0
    resumed_epochs: int = 0

    def record(
        self, index: int, ran: int, phase: rule.Phase, chance: float | None = None, resumable: bool = True
    ) -> None:
        self.ran[index], self.phase[index] = ran, phase
        curve = self.curves[index]
        kept = {e: v for e, v in enumerate(curve[:ran], start=1) if math.isfinite(v)}
        self.members[index] = rule.SweepJob(str(index), phase, kept, resumable=resumable, stop_chance=chance)
        stopped = phase == "stopped"
        peer = CohortCurve(str(index), self.task.metric, kept, stopped=stopped, completed=not stopped)
        if peer.last is not None:
            self.cohort[index] = peer
        else:
            self.cohort.pop(index, None)

    def run_new(self, index: int) -> None:
        curve = self.curves[index]
        fed = Curve(str(index), rows={e: {self.task.metric: v} for e, v in enumerate(curve, start=1)})
        cohort = tuple(self.cohort[i] for i in sorted(self.cohort))
        ran, decision = replay_job(self.spec, fed, cohort, len(curve))
        # a forecast's stop had a chance below its bound behind it (the bound stands in for the chance)
        chance = None
        if decision is not None and decision.type == "Forecast":
            chance = next(
                getattr(c, "probability", None) for c in self.spec.criteria if c.name == decision.criterion
            )
        diverged = decision is not None and decision.criterion == DIVERGED["name"]  # never resumed
        self.record(index, ran, "stopped" if decision is not None else "finished", chance, not diverged)

    def go_on(self, index: int, settings: rule.ResumeSettings) -> None:
        """A resumed job from its stop epoch: to its end, or judged again at every epoch."""
        curve, start = self.curves[index], self.ran[index]
        self.resumes += 1
        stop_at, chance, diverged = len(curve), None, False
        if self.setting.resumed == "judged":
            members = [job for i, job in self.members.items() if i != index]
            finished = rule.finished_by_group(members).get((None, None), ())
            beat = rule.to_beat(members, settings)
            # the whole curve once: the rule reads a job's best so far at `epoch` and before only
            job = rule.SweepJob(str(index), "running", dict(enumerate(curve, start=1)))
            for epoch in range(start + 1, len(curve)):
                if not math.isfinite(curve[epoch - 1]):  # diverged: the divergence criterion stops it
                    stop_at, diverged = epoch, True
                    break
                if beat is None:
                    continue
                verdict = rule.judge(job, finished, (), beat, settings, epoch)
                if verdict is not None and verdict.probability is not None and not verdict.resume:
                    stop_at, chance = epoch, verdict.probability
                    break
        self.resumed_epochs += stop_at - start
        self.record(index, stop_at, "finished" if stop_at == len(curve) else "stopped", chance, not diverged)

    def resume_round(self, settings: rule.ResumeSettings, now: float) -> None:
        """Ask the rule until it resumes nothing; each round's resumed jobs run before the next ask."""
        while True:
            members = [self.members[i] for i in sorted(self.members)]
            chosen = rule.plan(members, settings, now).resume
            if not chosen:
                return
            for judgement in chosen:
                self.go_on(int(judgement.job), settings)


def simulate_live(setting: Setting, task: Task, spec: api.TrainingJobSpec) -> Result:
    """The live operator's way, with `stopline replay`'s code: the rule asked after every end, a resumed
    job judged on by its own criteria."""
    run = SweepRun(spec, {task.metric}, setting.resume)
    for index, job in enumerate(task.jobs):
        curve = values(task, job)
        run.start(
            Curve(str(index), rows={e: {task.metric: v} for e, v in enumerate(curve, start=1)}), len(curve)
        )
        run.ask()
    members = run.members
    return Result(
        [m.run for m in members], sum(len(m.resumes) for m in members), sum(m.resumed_epochs for m in members)
    )


def simulate(setting: Setting, task: Task) -> Result:
    spec = api.parse_spec(
        {
            "template": {"spec": {"containers": [{"name": "trainer"}]}},
            "objective": {"metric": task.metric, "mode": task.mode},
            "checkpoint": {"pvc": {"claimName": "bench"}},
            "criteria": list(setting.stop),
        }
    )
    if setting.resumed == "criteria":
        return simulate_live(setting, task, spec)
    sim = Sim(task, setting, spec, [values(task, job) for job in task.jobs])
    settings = setting.resume
    during = dataclasses.replace(settings, unseen="keep") if settings and setting.defer_unseen else settings
    for index in range(len(task.jobs)):
        sim.run_new(index)
        if during is not None and setting.at == "finish" and sim.phase[index] == "finished":
            sim.resume_round(during, float(index))
    if settings is not None:
        sim.resume_round(settings, float(len(task.jobs)))
    return Result([sim.ran[i] for i in range(len(task.jobs))], sim.resumes, sim.resumed_epochs)


def forecast(probability: float, similarity: float = 2) -> tuple[dict[str, object], ...]:
    return ({"name": "f", "forecast": {"probability": probability, "similarity": similarity}}, DIVERGED)


def rungs_rank(eta: int, min_jobs: int = 2) -> tuple[dict[str, object], ...]:
    knobs = {"reductionFactor": eta, "minEpochs": 1, "minJobs": min_jobs, "compare": "best", "cut": "rank"}
    return ({"name": "r", "rungs": knobs}, DIVERGED)


STOPS: dict[str, tuple[dict[str, object], ...]] = {
    "forecast 0.01 (recommended)": tuple(recommended_criteria()),
    "forecast 0.03": forecast(0.03),
    "forecast 0.1": forecast(0.1),
    "forecast 0.3": forecast(0.3),
    "rungs rank 5/1/2 best": rungs_rank(5),
    "rungs rank 5/1/2 best + forecast 0.1": (rungs_rank(5)[0], *forecast(0.1)),
}


def grid(
    name: str, custom: str = "", bounds: str = "", unseen: rule.Unseen = "keep", defer_unseen: bool = False
) -> list[Setting]:
    """The settings of a run: every stop alone, then beside the resume rule (the mode is set per task)."""
    if name == "custom":  # one stop of STOPS alone and beside the rule at each bound
        out = [Setting(custom, STOPS[custom])]
        for bound in (float(b) for b in bounds.split(",") if b):
            settings = rule.ResumeSettings("min", probability=bound, unseen=unseen)
            out.append(Setting(custom, STOPS[custom], settings, defer_unseen=defer_unseen))
        return out
    if name in ("final", "final-all"):  # the settings main chose, their neighbours, and the recommended
        out = [Setting(stop_name, STOPS[stop_name]) for stop_name in ("forecast 0.01 (recommended)",)]
        chosen = FINAL if name == "final" else FINAL[:1]
        for stop_name, bound, unseen in chosen:
            settings = rule.ResumeSettings("min", probability=bound, unseen=unseen)
            out.append(Setting(stop_name, STOPS[stop_name], settings))
        return out
    out = [Setting(stop_name, stop) for stop_name, stop in STOPS.items() if "+" not in stop_name]
    if name == "variants":  # when and how to resume, K, unseen jobs: beside three stops, bound 0.01
        for stop_name in ("forecast 0.1", "forecast 0.3", "rungs rank 5/1/2 best"):
            stop, settings = STOPS[stop_name], rule.ResumeSettings("min", probability=0.01)
            out.append(Setting(stop_name, stop, settings))
            out.append(Setting(stop_name, stop, settings, at="end"))
            out.append(Setting(stop_name, stop, settings, resumed="end"))
            out.append(Setting(stop_name, stop, rule.ResumeSettings("min", probability=0.01, max_resumes=4)))
            out.append(Setting(stop_name, stop, rule.ResumeSettings("min", probability=0.01, unseen="keep")))
        return out
    if name == "probe":  # every stop beside bounds 0.03 and 0.1, unseen jobs resumed or kept
        for stop_name, stop in STOPS.items():
            for bound in (0.03, 0.1):
                for unseen in ("resume", "keep"):
                    settings = rule.ResumeSettings("min", probability=bound, unseen=unseen)
                    out.append(Setting(stop_name, stop, settings))
        return out
    # main: what the probe on four hard tasks left standing (resume.md's note), on every task
    for stop_name, bound, unseen in MAIN:
        settings = rule.ResumeSettings("min", probability=bound, unseen=unseen)
        out.append(Setting(stop_name, STOPS[stop_name], settings))
    return out


FINAL: tuple[tuple[str, float, rule.Unseen], ...] = (
    ("forecast 0.3", 0.03, "keep"),
    ("forecast 0.3", 0.03, "evidence"),
    ("forecast 0.3", 0.05, "keep"),
    ("forecast 0.1", 0.05, "keep"),
    ("rungs rank 5/1/2 best + forecast 0.1", 0.03, "evidence"),
)
MAIN: tuple[tuple[str, float, rule.Unseen], ...] = (
    ("forecast 0.01 (recommended)", 0.1, "keep"),
    ("forecast 0.03", 0.03, "keep"),
    ("forecast 0.03", 0.1, "keep"),
    ("forecast 0.1", 0.03, "keep"),
    ("forecast 0.1", 0.03, "resume"),
    ("forecast 0.1", 0.1, "keep"),
    ("forecast 0.3", 0.03, "keep"),
    ("forecast 0.3", 0.03, "resume"),
    ("forecast 0.3", 0.1, "keep"),
    ("rungs rank 5/1/2 best", 0.03, "resume"),
)


def with_mode(setting: Setting, mode: api.Mode) -> Setting:
    if setting.resume is None:
        return setting
    r = setting.resume
    settings = rule.ResumeSettings(
        mode, r.probability, r.max_resumes, r.similarity, r.neighbours, r.min_jobs, r.unseen
    )
    return dataclasses.replace(setting, resume=settings)


TASKS: list[Task] = []
SETTINGS: list[Setting] = []


@dataclass(frozen=True)
class Scored:
    saved: float
    regret: float  # percent
    run: int
    available: int
    resumes: int
    resumed_epochs: int


def _one(pair: tuple[int, int]) -> tuple[int, int, Scored | str, float]:
    setting, task = SETTINGS[pair[0]], TASKS[pair[1]]
    clock = time.monotonic()
    try:
        result = simulate(with_mode(setting, task.mode), task)
        scored = score(task, result.runs)
        out: Scored | str = (
            scored
            if isinstance(scored, str)
            else Scored(
                1 - scored.run / scored.available,
                scored.regret * 100,
                scored.run,
                scored.available,
                result.resumes,
                result.resumed_epochs,
            )
        )
    except Exception as error:  # reported, the run goes on
        out = f"{type(error).__name__}: {error} ({traceback.extract_tb(error.__traceback__)[-1].name})"
    return pair[0], pair[1], out, time.monotonic() - clock


Table = dict[int, dict[str, Scored]]  # setting index -> task name -> score


def summary(scores: dict[str, Scored], names: list[str]) -> tuple[float, float, str, int]:
    """Saved (mean of tasks), worst regret, worst task, tasks over 0.5% over `names`."""
    chosen = [(name, scores[name]) for name in names if name in scores]
    if not chosen:
        return math.nan, math.nan, "-", 0
    worst = max(chosen, key=lambda pair: pair[1].regret)
    return (
        statistics.mean(s.saved for _, s in chosen),
        worst[1].regret,
        worst[0],
        sum(s.regret > SAFE_REGRET for _, s in chosen),
    )


def choose(table: Table, names: list[str]) -> int | None:
    """The setting (with the resume rule) that saves the most on `names` with every one within 0.5%."""
    best: tuple[float, int] | None = None
    for index, scores in table.items():
        if SETTINGS[index].resume is None or not all(name in scores for name in names):
            continue
        saved, worst, _, _ = summary(scores, names)
        if worst <= SAFE_REGRET and (best is None or saved > best[0]):
            best = (saved, index)
    return best[1] if best else None


def held_out(table: Table, names: list[str]) -> list[str]:
    lines = ["", "## Held out", ""]
    half_a, half_b = names[0::2], names[1::2]
    lines += ["| chosen on | setting chosen | on chosen half: saved, worst | held-out half: saved, worst |"]
    lines += ["|---|---|---|---|"]
    for tune, check, label in ((half_a, half_b, "half a"), (half_b, half_a, "half b")):
        index = choose(table, tune)
        if index is None:
            lines.append(f"| {label} | none within {SAFE_REGRET}% | | |")
            continue
        s_in, w_in, t_in, _ = summary(table[index], tune)
        s_out, w_out, t_out, over = summary(table[index], check)
        lines.append(
            f"| {label} | {SETTINGS[index].label} | {s_in:.1%}, {w_in:.2f}% ({t_in}) | "
            f"{s_out:.1%}, {w_out:.2f}% ({t_out}), {over} over {SAFE_REGRET}% |"
        )
    picks: dict[str, int] = {}
    saved, regrets = [], []
    for name in names:
        index = choose(table, [other for other in names if other != name])
        if index is None or name not in table[index]:
            continue
        picks[name] = index
        saved.append(table[index][name].saved)
        regrets.append((table[index][name].regret, name))
    if saved:
        worst = max(regrets)
        over = sum(r > SAFE_REGRET for r, _ in regrets)
        lines += [
            "",
            f"Leave-one-task-out ({len(saved)} tasks, each scored with the setting chosen on the others): "
            f"saved {statistics.mean(saved):.1%} (mean of tasks), worst task {worst[0]:.2f}% ({worst[1]}), "
            f"{over} over {SAFE_REGRET}%; settings chosen: "
            + "; ".join(
                f"{SETTINGS[i].label} ({sum(1 for p in picks.values() if p == i)} tasks)"
                for i in sorted(set(picks.values()))
            ),
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--curves", type=Path, default=REPO / "bench" / "policy" / "curves" / "curves.csv.gz")
    parser.add_argument("--max-configs", type=int, default=0, help="a seeded sample of N configs per task")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--grid", choices=("main", "probe", "variants", "final", "final-all", "custom"), default="main"
    )
    parser.add_argument("--only", default="", help="only the settings whose label has this text")
    parser.add_argument("--tasks", default="", help="only the tasks whose name has one of these (a,b,...)")
    parser.add_argument("--out", type=Path, default=OUT / "resume.md")
    parser.add_argument("--stop", default="forecast 0.3", choices=list(STOPS), help="with --grid custom")
    parser.add_argument("--bounds", default="0.03", help="with --grid custom: resume bounds, a,b,...")
    parser.add_argument("--unseen", default="keep", choices=("resume", "evidence", "keep"))
    parser.add_argument(
        "--defer-unseen",
        action="store_true",
        help="with --grid custom: keep unseen jobs while the sweep runs and resume them at its end "
        "(as --unseen says)",
    )
    parser.add_argument("--progress", action="store_true", help="a line per task and setting as it ends")
    parser.add_argument(
        "--resumed",
        choices=("judged", "end", "criteria"),
        default="judged",
        help="how a resumed job goes on: judged by the rule's numbers, to its end, or by its own criteria "
        "(criteria: the live operator's way, stopline replay's simulation)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    tasks, skipped = load(args.curves, args.max_configs or None)
    tasks = [task for task in tasks if any(part in task.name for part in args.tasks.split(","))]
    TASKS[:] = tasks
    chosen = [
        s
        for s in grid(args.grid, args.stop, args.bounds, args.unseen, args.defer_unseen)
        if args.only in s.label
    ]
    keep = args.resumed == "judged"  # the grid's own: its variants set "end" where they mean it
    SETTINGS[:] = [
        s if keep or s.resume is None else dataclasses.replace(s, resumed=args.resumed) for s in chosen
    ]
    total = sum(len(task.jobs) for task in tasks)
    sample = f", at most {args.max_configs} configs per task (seeded)" if args.max_configs else ""
    print(f"{args.curves}: {len(tasks)} tasks, {total} curves{sample}; {len(SETTINGS)} settings", flush=True)
    for line in skipped:
        print(f"  not scored: {line}")
    pairs = [(s, t) for s in range(len(SETTINGS)) for t in range(len(TASKS))]
    # the longest tasks first, so the pool does not wait on one at the end
    pairs.sort(key=lambda pair: -sum(len(job.rows) for job in TASKS[pair[1]].jobs))
    table: Table = {s: {} for s in range(len(SETTINGS))}
    seconds = dict.fromkeys(range(len(SETTINGS)), 0.0)
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for s, t, result, spent in pool.imap_unordered(_one, pairs):
            seconds[s] += spent
            if isinstance(result, str):
                print(f"  not scored: {SETTINGS[s].label} on {TASKS[t].name}: {result}", flush=True)
            else:
                table[s][TASKS[t].name] = result
                if args.progress:
                    print(
                        f"  {TASKS[t].name}: {SETTINGS[s].label}: saved {result.saved:.1%}, regret "
                        f"{result.regret:.2f}%, {result.resumes} resumes, {spent:.0f} s",
                        flush=True,
                    )
    names = [task.name for task in tasks]
    lines = [
        f"# Stop + resume on {len(tasks)} sweeps ({total} curves{sample})",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'bench/policy/resume.py', *sys.argv[1:]])}`",
        "",
        "| setting | saved (mean of tasks) | saved (pooled) | regret mean | worst task | "
        f"tasks > {SAFE_REGRET}% | resumes | resumed epochs | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s, scores in table.items():
        if not scores:
            continue
        saved, worst, worst_task, over = summary(scores, names)
        pooled = 1 - sum(x.run for x in scores.values()) / sum(x.available for x in scores.values())
        lines.append(
            f"| {SETTINGS[s].label} | {saved:.1%} | {pooled:.1%} | "
            f"{statistics.mean(x.regret for x in scores.values()):.2f}% | {worst:.2f}% ({worst_task}) | "
            f"{over}/{len(scores)} | {sum(x.resumes for x in scores.values())} | "
            f"{sum(x.resumed_epochs for x in scores.values())} | {seconds[s]:.0f} |"
        )
    lines += held_out(table, names)
    lines += ["", f"({time.monotonic() - started:.0f} s wall)"]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    with args.out.with_name(args.out.stem + "-tasks.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["setting", "task", "saved", "regret_percent", "resumes", "resumed_epochs"])
        for s, scores in table.items():
            for name, x in sorted(scores.items()):
                writer.writerow(
                    [
                        SETTINGS[s].label,
                        name,
                        f"{x.saved:.6f}",
                        f"{x.regret:.6f}",
                        x.resumes,
                        x.resumed_epochs,
                    ]
                )


if __name__ == "__main__":
    main()
