"""The sweep model: each job's criteria replayed against the jobs before it, and the figures of a sweep.

The jobs of the CSV form a sequential sweep in order of first appearance: job k's cohort is jobs 1..k-1,
each with the epochs it actually ran (a job that was not stopped completed, so its last value is final).
Each epoch is fed to the same engine the operator calls, one call per epoch, with the cumulative
`seconds` column (if any) as the clock. With spec.resumePolicy the study's resume rule is asked whenever
a job ends, as the operator asks it, and the jobs it resumes run on (stopline.replay.resumes); a resumed
job's epochs after its stop count as run, and its best is its best over every epoch it ran.

The cohort, rungs and forecast criteria compare every epoch of a job with every earlier job of its sweep,
so a sweep's cost grows with the square of its jobs. Past PEER_COMPARISONS_MAX such comparisons a replay is
refused: at once when the file is sure to pass it, else before the job that could.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from stopline import api
from stopline.criteria import CohortCurve, Decision
from stopline.criteria.budget import BudgetCriterion
from stopline.criteria.cohort import CohortCriterion
from stopline.criteria.forecast import ForecastCriterion, history_of
from stopline.criteria.resume import SweepJob
from stopline.criteria.rungs import RungsCriterion
from stopline.criteria.state import is_better
from stopline.replay.curves import SECONDS, TASK, Curve, ReplayError, load_curves, load_job
from stopline.replay.resumes import Resume, SweepRun, run_epochs

SAFE_REGRET = 0.005  # a sweep that lost more than 0.5% of its best is counted, as docs/policy.md does
# One comparison: one epoch of a job fed to one cohort, rungs or forecast criterion, against the curve of
# one earlier job of its sweep; a sweep of n jobs of e epochs makes up to e * n^2 / 2. The cost is the
# rules' own: the forecast refits from every finished job at every epoch (the nearest by the largest gap
# over up to five epochs, docs/policy.md), which no view sorted on one epoch narrows when the jobs tie
# there. At 1 to 4 microseconds a comparison (2 shared cores), this bounds a replay to about a quarter of
# an hour; all of bench/policy/curves with a val_acc objective makes 1.2e8 (2 minutes).
PEER_COMPARISONS_MAX = 250_000_000
NOT_REPLAYED = (
    "stale, gpuIdle and promql criteria cannot fire in replay (they watch a live trainer, GPUs, Prometheus)"
)


@dataclass(frozen=True)
class Best:
    metric: str
    value: float
    epoch: int


@dataclass(frozen=True)
class JobResult:
    job: str
    epochs_run: int
    epochs_available: int
    decision: Decision | None
    best: Best | None
    best_if_no_stopping: Best | None
    values: tuple[tuple[int, float], ...] = ()  # the objective by epoch, up to epochs_available (the page)
    resumes: tuple[Resume, ...] | None = None  # None: no resume rule was simulated; the decision is the last

    @property
    def resumed_epochs(self) -> int:
        """The epochs it ran after its first resume."""
        return self.epochs_run - self.resumes[0].from_epoch if self.resumes else 0

    def as_json(self) -> dict[str, object]:
        decision = self.decision
        resumes = {} if self.resumes is None else {"resumes": [resume.as_json() for resume in self.resumes]}
        return {
            "job": self.job,
            "stopped": decision is not None,
            "stopEpoch": self.epochs_run if decision is not None else None,
            "epochsRun": self.epochs_run,
            "epochsAvailable": self.epochs_available,
            "reason": decision.type if decision else None,
            "criterion": decision.criterion if decision else None,
            "message": decision.message if decision else None,
            "best": _best_json(self.best),
        } | resumes


@dataclass(frozen=True)
class Sweep:
    """The jobs of one task (of the whole file, without a task column), replayed in order."""

    task: str | None
    metric: str
    mode: api.Mode
    results: tuple[JobResult, ...]
    resumes_simulated: bool = False  # spec.resumePolicy: the resume rule was asked as a job ended

    @property
    def resumed_jobs(self) -> int:
        return sum(1 for result in self.results if result.resumes)

    @property
    def resume_count(self) -> int:
        return sum(len(result.resumes or ()) for result in self.results)

    @property
    def resumed_epochs(self) -> int:
        return sum(result.resumed_epochs for result in self.results)

    def resume_json(self) -> dict[str, object]:
        """The resumes' figures, where a resume rule was simulated (else nothing, as before it was)."""
        if not self.resumes_simulated:
            return {}
        return {
            "resumedJobs": self.resumed_jobs,
            "resumes": self.resume_count,
            "resumedEpochs": self.resumed_epochs,
        }

    @property
    def epochs_run(self) -> int:
        return sum(result.epochs_run for result in self.results)

    @property
    def epochs_available(self) -> int:
        return sum(result.epochs_available for result in self.results)

    @property
    def fraction_saved(self) -> float:
        return 1 - self.epochs_run / self.epochs_available if self.epochs_available else 0.0

    def best_overall(self, *, stopping: bool) -> tuple[str, Best] | None:
        candidates = [
            (result.job, best)
            for result in self.results
            if (best := result.best if stopping else result.best_if_no_stopping) is not None
        ]
        winner: tuple[str, Best] | None = None
        for job, best in candidates:
            if winner is None or is_better(best.value, winner[1].value, self.mode):
                winner = (job, best)
        return winner

    def regret(self) -> float | None:
        """How much worse the best value the sweep kept is than the best it would have had without
        stopping, relative to the latter (docs/policy.md's regret, on best values): 0 when no stop cost it."""
        return _regret(self.best_overall(stopping=True), self.best_overall(stopping=False), self.mode)

    def verdict(self) -> str | None:
        """In words, whether the stops cost the sweep its best model, and which stop did."""
        kept, unstopped = self.best_overall(stopping=True), self.best_overall(stopping=False)
        regret = _regret(kept, unstopped, self.mode)
        if regret is None or kept is None or unstopped is None:
            return None
        if regret <= 0:
            return f"the stops kept the sweep's best ({unstopped[0]}): no stopped job would have beaten it"
        lost = next(result for result in self.results if result.job == unstopped[0])
        return (
            f"the stops lost the sweep's best: {lost.job} was stopped at epoch {lost.epochs_run} and "
            f"would have reached {unstopped[1].value:.6g}; the best kept, {kept[1].value:.6g}, is "
            f"{regret:.2%} worse"
        )

    def as_json(self) -> dict[str, object]:
        def overall(stopping: bool) -> dict[str, object] | None:
            found = self.best_overall(stopping=stopping)
            return {"job": found[0]} | (_best_json(found[1]) or {}) if found else None

        return {
            "jobs": [result.as_json() for result in self.results],
            "summary": {
                "jobs": len(self.results),
                "epochsRun": self.epochs_run,
                "epochsAvailable": self.epochs_available,
                "fractionSaved": round(self.fraction_saved, 6),
                "bestOverall": overall(True),
                "bestOverallIfNoStopping": overall(False),
                "regret": _rounded(self.regret()),
            }
            | self.resume_json(),
        }


@dataclass(frozen=True)
class Replay:
    """One sweep, or one per task; over tasks, the figures docs/policy.md's front uses."""

    job_file: str
    metric: str
    mode: api.Mode
    sweeps: tuple[Sweep, ...]
    notes: tuple[str, ...]
    by_task: bool

    @property
    def resumes_simulated(self) -> bool:
        return any(sweep.resumes_simulated for sweep in self.sweeps)

    def resume_json(self) -> dict[str, object]:
        """Over all sweeps, the resumes' figures (nothing where no resume rule was simulated)."""
        if not self.resumes_simulated:
            return {}
        return {
            "resumedJobs": sum(sweep.resumed_jobs for sweep in self.sweeps),
            "resumes": sum(sweep.resume_count for sweep in self.sweeps),
            "resumedEpochs": sum(sweep.resumed_epochs for sweep in self.sweeps),
        }

    def worst_task(self) -> tuple[str, float] | None:
        regrets = [
            (sweep.task or "", regret) for sweep in self.sweeps if (regret := sweep.regret()) is not None
        ]
        return max(regrets, key=lambda pair: pair[1]) if regrets else None

    def tasks_over(self, regret: float) -> int:
        return sum(1 for sweep in self.sweeps if (lost := sweep.regret()) is not None and lost > regret)

    def mean_saved(self) -> float:
        """Saved per task, averaged: each sweep weighs the same however long its curves."""
        return sum(sweep.fraction_saved for sweep in self.sweeps) / len(self.sweeps) if self.sweeps else 0.0

    def as_json(self) -> dict[str, object]:
        if not self.by_task:
            return self.sweeps[0].as_json()
        worst = self.worst_task()
        run = sum(sweep.epochs_run for sweep in self.sweeps)
        available = sum(sweep.epochs_available for sweep in self.sweeps)
        return {
            "tasks": [{"task": sweep.task} | sweep.as_json() for sweep in self.sweeps],
            "summary": {
                "tasks": len(self.sweeps),
                "jobs": sum(len(sweep.results) for sweep in self.sweeps),
                "epochsRun": run,
                "epochsAvailable": available,
                "fractionSaved": round(1 - run / available, 6) if available else 0.0,
                "fractionSavedMeanOfTasks": round(self.mean_saved(), 6),
                "regretMax": _rounded(worst[1] if worst else None),
                "worstTask": worst[0] if worst else None,
                "tasksOverHalfPercent": self.tasks_over(SAFE_REGRET),
            }
            | self.resume_json(),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _regret(
    kept: tuple[str, Best] | None, unstopped: tuple[str, Best] | None, mode: api.Mode
) -> float | None:
    if kept is None or unstopped is None:
        return None
    gap = kept[1].value - unstopped[1].value
    gap = gap if mode == "min" else -gap
    return gap / abs(unstopped[1].value) if unstopped[1].value else gap


def _best_json(best: Best | None) -> dict[str, object] | None:
    return {"metric": best.metric, "value": best.value, "epoch": best.epoch} if best else None


def _best(curve: Curve, metric: str, mode: api.Mode, last_epoch: int) -> Best | None:
    best: Best | None = None
    for epoch in sorted(curve.rows):
        value = curve.rows[epoch].get(metric)
        usable = epoch <= last_epoch and value is not None and math.isfinite(value)
        if usable and value is not None and (best is None or is_better(value, best.value, mode)):
            best = Best(metric, value, epoch)
    return best


def replay_job(
    spec: api.TrainingJobSpec, curve: Curve, cohort: tuple[CohortCurve, ...], available: int
) -> tuple[int, Decision | None]:
    """Feed the job's epochs one call at a time; a decision on epoch e's values means the job ran e epochs."""
    leg = run_epochs(spec, curve, cohort, available)
    return leg.run, leg.decision


def replay(
    job_file: Path,
    curves_file: Path,
    task: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    history_file: Path | None = None,
) -> Replay:
    """Replay the job's criteria over the file's sweeps (only `task`'s when given); `progress` hears the
    jobs replayed so far and the total after each job. `history_file`: the curves of earlier sweeps, each
    job one that ran to its end, for the forecast criteria's `history` (whatever studies they name)."""
    spec = load_job(job_file)
    objective = spec.objective
    curves, metrics = load_curves(curves_file, objective.metric, spec.watched_metrics)
    earlier = _earlier(spec, history_file)
    by_task = any(curve.task is not None for curve in curves)
    if task is not None:
        if not by_task:
            raise ReplayError(
                f"{curves_file}: no column {TASK!r}, so --task {task!r} names nothing; drop --task"
            )
        chosen = [curve for curve in curves if curve.task == task]
        if not chosen:
            names = list(dict.fromkeys(str(curve.task) for curve in curves))
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ReplayError(f"{curves_file}: no task {task!r}; the file has {shown}")
        curves = chosen
    notes = [NOT_REPLAYED]
    named = [(c.name, c.history) for c in spec.criteria if isinstance(c, ForecastCriterion) and c.history]
    if named and history_file is None:
        notes += [
            f"criterion {name}: learns from earlier studies ({', '.join(studies)}) this replay has not "
            "got: pass their curves with --history FILE"
            for name, studies in named
        ]
    for criterion in spec.criteria:
        metric = getattr(criterion, "metric", None)
        if metric is not None and metric not in metrics:
            notes.append(
                f"criterion {criterion.name}: no column {metric!r} in {curves_file.name}, so it never fired"
            )
    if not any(curve.seconds for curve in curves) and any(
        isinstance(c, BudgetCriterion) and (c.max_duration or c.max_gpu_hours) for c in spec.criteria
    ):
        notes.append(f"no {SECONDS!r} values: maxDuration and maxGPUHours were not replayed")
    tasks: dict[str | None, list[Curve]] = {}
    for curve in curves:
        tasks.setdefault(curve.task, []).append(curve)
    done = itertools.count(1)

    def replayed() -> None:
        if progress is not None:
            progress(next(done), len(curves))

    comparisons = _PeerComparisons(curves_file, spec)
    comparisons.foresee(tasks.values())
    sweeps = tuple(
        _sweep(spec, name, members, replayed, comparisons, earlier) for name, members in tasks.items()
    )
    for sweep in sweeps:
        if all(result.best_if_no_stopping is None for result in sweep.results):
            where = f"task {sweep.task}" if sweep.task is not None else curves_file.name
            notes.append(
                f"{where}: no {objective.metric} values, so no job there was judged on the objective; "
                "replay it with a job whose objective is a metric it has"
            )
    return Replay(str(job_file), objective.metric, objective.mode, sweeps, tuple(notes), by_task)


class _PeerComparisons:
    """The comparisons with earlier jobs a replay makes (see PEER_COMPARISONS_MAX): foreseen before any job
    runs, so that a file sure to pass the limit is refused at once, then counted as the jobs run."""

    def __init__(self, curves_file: Path, spec: api.TrainingJobSpec) -> None:
        peer_kinds = CohortCriterion | RungsCriterion | ForecastCriterion
        self.curves_file = curves_file
        self.spec = spec
        self.readers = sum(1 for criterion in spec.criteria if isinstance(criterion, peer_kinds))
        self.metrics = {c.metric for c in spec.criteria if isinstance(c, peer_kinds)}
        self.made = 0

    def foresee(self, sweeps: Iterable[list[Curve]]) -> None:
        """Refuse the file if it passes the limit even when every job stops at its first epoch, counting only
        the earlier curves sure to be kept (a finite value at their first epoch)."""
        least = jobs = 0
        for curves in sweeps:
            kept = 0
            for curve in curves:
                jobs += 1
                first = min(curve.rows)
                if first <= _available(curve, self.spec):
                    least += self.readers * kept
                    kept += sum(math.isfinite(curve.rows[first].get(m, math.nan)) for m in self.metrics)
        if least > PEER_COMPARISONS_MAX:
            raise self._refusal(f"{jobs} jobs, even if each stopped at its first epoch,")

    def allow(self, comparisons: int, task: str | None, number: int, jobs: int, job: str) -> None:
        """Refuse job `number` of its sweep if its `comparisons`, all its epochs run, could pass the limit."""
        if self.made + comparisons > PEER_COMPARISONS_MAX:
            where = f"task {task!r}: " if task is not None else ""
            raise self._refusal(f"{where}job {number} of {jobs} ({job!r})")

    def _refusal(self, what: str) -> ReplayError:
        return ReplayError(
            f"{self.curves_file}: {what} would take the replay past {PEER_COMPARISONS_MAX:,} comparisons "
            "of an epoch with an earlier job's curve (the cohort, rungs and forecast criteria compare each "
            "epoch with every earlier job, so the cost grows with the square of the jobs); replay fewer jobs "
            "at a time (split the file by job)"
        )


def _available(curve: Curve, spec: api.TrainingJobSpec) -> int:
    """The epochs the job would have run: its curve's, up to maxEpochs."""
    return int(min(max(curve.rows), spec.max_epochs or math.inf))


def _fed(curve: Curve, last: int) -> int:
    """How many epochs replay_job feeds the criteria when the job runs to `last`."""
    return sum(1 for epoch in curve.rows if epoch <= last)


@dataclass(frozen=True)
class _Earlier:
    """Earlier sweeps' jobs: for the forecast criteria (by the studies they name) and for the resume rule."""

    history: Mapping[str, tuple[CohortCurve, ...]]
    jobs: tuple[SweepJob, ...]


def _earlier(spec: api.TrainingJobSpec, history_file: Path | None) -> _Earlier:
    """The --history file's jobs, each read as one that ran to its end, standing for every study the
    forecast criteria name in `history`; a file no criterion would read is refused."""
    if history_file is None:
        return _Earlier({}, ())
    studies = history_of(spec.criteria)
    if not studies:
        raise ReplayError(
            f"--history {history_file}: no forecast criterion names earlier studies (forecast.history), so "
            "nothing would read it; add history: [STUDY] to the forecast, or drop --history"
        )
    objective = spec.objective
    metrics = {c.metric for c in spec.criteria if isinstance(c, ForecastCriterion)}
    curves, _ = load_curves(history_file, objective.metric, metrics)
    peers = tuple(
        peer
        for curve in curves
        for metric in sorted(metrics)
        if (peer := _finished_curve(curve, metric)).last is not None
    )
    jobs = tuple(
        SweepJob(f"history/{curve.job}", "finished", _finished_curve(curve, objective.metric).values,
                 budget=spec.max_epochs, schedule=curve.schedule)
        for curve in curves
    )  # fmt: skip
    return _Earlier(dict.fromkeys(studies, peers), jobs)


def _finished_curve(curve: Curve, metric: str) -> CohortCurve:
    values = {epoch: row[metric] for epoch, row in curve.rows.items() if metric in row}
    return CohortCurve(curve.job, metric, values, completed=True)


def _sweep(
    spec: api.TrainingJobSpec,
    task: str | None,
    curves: list[Curve],
    replayed: Callable[[], None],
    comparisons: _PeerComparisons,
    earlier: _Earlier,
) -> Sweep:
    """One sweep: each job judged against the ones before it, with the epochs they ran; with a resume rule,
    the rule asked after each job ends and at the sweep's end (stopline.replay.resumes)."""
    objective = spec.objective

    def charge(epochs: int, cohort: int) -> None:
        comparisons.made += comparisons.readers * cohort * epochs

    run = SweepRun(spec, comparisons.metrics, spec.resume_policy, charge, earlier.history, earlier.jobs)
    for number, curve in enumerate(curves, start=1):
        available = _available(curve, spec)
        per_epoch = comparisons.readers * len(run.cohort())
        comparisons.allow(per_epoch * _fed(curve, available), task, number, len(curves), curve.job)
        run.start(curve, available)
        run.ask()
        replayed()
    results = []
    for member in run.members:
        curve, available, last = member.curve, member.available, member.run
        results.append(
            JobResult(
                curve.job,
                last,
                available,
                member.decision,
                _best(curve, objective.metric, objective.mode, last),
                _best(curve, objective.metric, objective.mode, available),
                tuple(
                    (epoch, curve.rows[epoch][objective.metric])
                    for epoch in sorted(curve.rows)
                    if epoch <= available and objective.metric in curve.rows[epoch]
                ),
                None if spec.resume_policy is None else tuple(member.resumes),
            )
        )
    simulated = spec.resume_policy is not None
    return Sweep(task, objective.metric, objective.mode, tuple(results), simulated)
