"""Resume: which stopped jobs of a sweep to bring back, from their kept weights, when its evidence changes.

A stop by a sweep criterion (cohort, rungs, forecast) keeps the job's weights, so it need not be final. When
the sweep's evidence changes (a job finishes, the sweep ends) the caller asks `plan(jobs, settings, now)`
which stopped jobs to resume. Each stopped job is judged with the forecast's own chance (forecast.py): its
best-so-far curve up to the epoch it stopped at is matched with the finished jobs of its budget that went
past that epoch; their further moves, smoothed into a mixture of normals, give P(its final value beats the
current best). The current best is the best value an ended job keeps (a finished job's last value, a
stopped job's value at its stop: the weights each one keeps).

- P at or above `probability`: the evidence now says it may win; it is a candidate.
- Fewer than minJobs finished jobs of its budget were like it by its stop epoch (P unknown): nothing says
  how it ends. unseen="resume": a candidate (the forecast's honesty: a job like no finished one runs on).
  unseen="evidence": a candidate only when its stop had no chance behind it (a rungs or cohort stop); a
  stop a forecast decided (`stop_chance`, its chance then) keeps that verdict until new evidence judges
  it. unseen="keep": it stays stopped.
- Below the bound: it stays stopped, with the numbers that say why.

Neighbours share a budget: a job is judged only by finished jobs with the same maxEpochs and schedule label
(None matches None), never across budgets, so a longer run is not judged by shorter ones' endings. A job that
already ran its whole budget has nothing to resume.

At most `max_resumes` (K) resumed jobs run at a time: the free slots are K minus the resumed jobs still
running; candidates are taken most promising first (those with a chance, highest first; then the unseen ones,
best standing first: the share of the jobs of their budget at their stop epoch that they were ahead of).
Pure: no I/O, `now` is an argument and is stamped on the plan, so status can say "resumed at epoch E
because P(beat best)=x" and a replay decides as the operator did.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from stopline.criteria.forecast import ForecastCriterion, checkpoints, forecast, reference
from stopline.criteria.observation import CohortCurve
from stopline.criteria.state import fmt, is_better
from stopline.fields import Mode

Phase = Literal["running", "stopped", "finished"]
Unseen = Literal["resume", "evidence", "keep"]
DEFAULT_PROBABILITY = 0.02  # docs/policy.md: the bound at which the recommended forecast lost nothing
OBJECTIVE = "objective"  # the metric name the rule gives the curves it builds (one objective per sweep)


@dataclass(frozen=True)
class SweepJob:
    """One member of the sweep as the rule sees it.

    values: the objective by epoch, the epochs it ran so far (non-finite values are dropped; a stopped job
    whose last epoch is not finite kept diverged weights and is never resumed).
    phase: running, stopped (with its weights), or finished (ran its whole budget: its last value is final).
    budget / schedule: its maxEpochs and schedule label, where known; neighbours share both.
    resumed: running again after a resume (it holds one of the K slots).
    resumable: a stop that may be taken back (a sweep criterion's); False for a person's stop or a failure.
    stop_chance: the chance to beat the best that its last stop was decided on (a forecast's, or this rule's
    when a resumed job fell below the bound again); None when no chance stood behind the stop.
    """

    name: str
    phase: Phase
    values: Mapping[int, float]
    budget: int | None = None
    schedule: str | None = None
    resumed: bool = False
    resumable: bool = True
    stop_chance: float | None = None
    curve: CohortCurve = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        curve = CohortCurve(
            self.name,
            OBJECTIVE,
            self.values,
            stopped=self.phase == "stopped",
            completed=self.phase == "finished",
        )
        object.__setattr__(self, "curve", curve)

    @property
    def group(self) -> tuple[int | None, str | None]:
        return self.budget, self.schedule

    @property
    def epoch(self) -> int:
        """The last epoch it ran (0: none)."""
        return max(self.values, default=0)


@dataclass(frozen=True)
class ResumeSettings:
    """The rule's knobs: the forecast's (similarity, neighbours, minJobs), the bound and K."""

    mode: Mode
    probability: float = DEFAULT_PROBABILITY
    max_resumes: int = 1
    similarity: float = 2.0
    neighbours: int = 20
    min_jobs: int = 5
    unseen: Unseen = "resume"

    def __post_init__(self) -> None:
        if not 0 < self.probability < 1:
            raise ValueError(f"probability must be within (0, 1), got {self.probability}")
        if self.max_resumes < 1 or self.min_jobs < 1 or self.neighbours < 1 or self.similarity <= 0:
            raise ValueError("max_resumes, min_jobs and neighbours must be at least 1, similarity above 0")

    @property
    def criterion(self) -> ForecastCriterion:
        return ForecastCriterion(
            name="resume",
            metric=OBJECTIVE,
            mode=self.mode,
            probability=self.probability,
            similarity=self.similarity,
            neighbours=self.neighbours,
            min_jobs=self.min_jobs,
        )


@dataclass(frozen=True)
class Judgement:
    """One stopped job's numbers: what it would resume from, its forecast, and the verdict in words."""

    job: str
    epoch: int  # the epoch it stopped at: it resumes at epoch + 1
    best: float  # its best so far
    probability: float | None  # P(final beats the reference); None: like fewer than minJobs finished jobs
    predicted: float | None
    low: float | None
    high: float | None
    peers: int
    standing: float  # share of its budget's jobs at `epoch` it was ahead of (0..1)
    resume: bool  # a candidate (at or above the bound, or unseen and resumed as `unseen` says)
    message: str

    def as_status(self) -> dict[str, object]:
        return {
            "job": self.job,
            "epoch": self.epoch,
            "best": self.best,
            "probability": self.probability,
            "predicted": self.predicted,
            "low": self.low,
            "high": self.high,
            "peers": self.peers,
            "message": self.message,
        }


@dataclass(frozen=True)
class ResumePlan:
    """What to do now: `resume` in order (at most the free slots), the candidates left `waiting` for a slot,
    and every stopped job `judged` (candidates first, in order; then those that stay stopped)."""

    now: float
    reference: float | None
    reference_words: str
    slots: int
    resume: tuple[Judgement, ...]
    waiting: tuple[Judgement, ...]
    judged: tuple[Judgement, ...]


def stop_chance(stop_type: object, state: object) -> float | None:
    """The chance a stop was decided on: a forecast's, the `probability` of the firing criterion's state
    (status.criteria[].state live, the engine's states in a replay); None for any other stop or value."""
    chance = state.get("probability") if stop_type == "Forecast" and isinstance(state, Mapping) else None
    if not isinstance(chance, int | float) or isinstance(chance, bool) or not math.isfinite(chance):
        return None
    return float(chance)


def percent(probability: float) -> str:
    return "under 0.1%" if probability < 0.0005 else f"{probability:.1%}"


def _mine(job: SweepJob, mode: Mode, epoch: int) -> dict[int, float]:
    """The job's best so far at the forecast's checkpoints of `epoch`."""
    best = job.curve.best_so_far(mode)
    return {e: best[e] for e in checkpoints(epoch) if e in best}


def _standing(job: SweepJob, others: Iterable[SweepJob], mode: Mode, epoch: int, mine: float) -> float:
    """The share of the other jobs at `epoch` (best so far) that this one is ahead of; ties count half."""
    levels = [other.curve.best_so_far(mode)[epoch] for other in others if epoch in other.curve.values]
    if not levels:
        return 1.0
    ahead = sum(is_better(mine, level, mode) + 0.5 * (level == mine) for level in levels)
    return ahead / len(levels)


def judge(
    job: SweepJob,
    finished: tuple[CohortCurve, ...],
    others: Iterable[SweepJob],
    beat: tuple[float, str],
    settings: ResumeSettings,
    epoch: int | None = None,
) -> Judgement | None:
    """Judge one job at `epoch` (default: its last) against the finished jobs of its budget (`finished`,
    already filtered by the caller) and the value to beat; None when it has no finite value there. The
    same call judges a resumed job epoch by epoch, so one that falls below the bound again can be stopped
    again by the same numbers."""
    at = job.epoch if epoch is None else epoch
    best_so_far = job.curve.best_so_far(settings.mode)
    if at not in best_so_far:
        return None
    mine = _mine(job, settings.mode, at)
    level = best_so_far[at]
    standing = _standing(job, others, settings.mode, at, level)
    result = forecast(settings.criterion, finished, at, mine, beat[0])
    bound = percent(settings.probability)
    if result is None:
        stop_chance = job.stop_chance if settings.unseen == "evidence" else None
        resume = settings.unseen == "resume" or (settings.unseen == "evidence" and job.stop_chance is None)
        if resume:
            verdict = "resume: nothing says"
        elif stop_chance is not None:
            verdict = (
                f"stays stopped on the chance it was stopped on ({percent(stop_chance)}); nothing new says"
            )
        else:
            verdict = "stays stopped (unseen: keep), though nothing says"
        message = (
            f"{verdict} it cannot beat {fmt(beat[0])} ({beat[1]}): fewer than {settings.min_jobs} finished "
            f"jobs of its budget were like it by epoch {at}"
        )
        return Judgement(job.name, at, level, None, None, None, None, 0, standing, resume, message)
    resume = result.probability >= settings.probability
    head = f"P(beat best)={percent(result.probability)}, " + (
        f"at or above the {bound} bound: resume" if resume else f"below the {bound} bound: stays stopped"
    )
    message = (
        f"{head} from epoch {at}; it would end near {fmt(result.predicted)} (80% of {result.peers} finished "
        f"jobs of its budget that were like it imply {fmt(result.low)} to {fmt(result.high)}); the best to "
        f"beat is {fmt(beat[0])} ({beat[1]})"
    )
    return Judgement(
        job.name,
        at,
        level,
        result.probability,
        result.predicted,
        result.low,
        result.high,
        result.peers,
        standing,
        resume,
        message,
    )


def to_beat(jobs: Iterable[SweepJob], settings: ResumeSettings) -> tuple[float, str] | None:
    """The current best: the best value an ended job keeps (finished: its last value; stopped: its value at
    the stop), and how to say it; None while no job has ended with a finite value."""
    return reference(settings.criterion, tuple(job.curve for job in jobs if job.phase != "running"))


def finished_by_group(
    jobs: Iterable[SweepJob],
) -> dict[tuple[int | None, str | None], tuple[CohortCurve, ...]]:
    groups: dict[tuple[int | None, str | None], tuple[CohortCurve, ...]] = {}
    for job in jobs:
        if job.phase == "finished":
            groups[job.group] = (*groups.get(job.group, ()), job.curve)
    return groups


def plan(
    jobs: Iterable[SweepJob], settings: ResumeSettings, now: float, history: Iterable[SweepJob] = ()
) -> ResumePlan:
    """The stopped jobs to resume now, most promising first, at most the free slots of K. `history`: jobs
    of earlier sweeps; those that finished are evidence, as the sweep's own, but never the best to beat."""
    members = list(jobs)
    running_resumed = sum(1 for job in members if job.phase == "running" and job.resumed)
    slots = max(0, settings.max_resumes - running_resumed)
    beat = to_beat(members, settings)
    if beat is None:
        return ResumePlan(now, None, "no job has ended yet: nothing to beat", slots, (), (), ())
    finished = finished_by_group([*members, *history])
    by_group: dict[tuple[int | None, str | None], list[SweepJob]] = {}
    for job in members:
        by_group.setdefault(job.group, []).append(job)
    judged = []
    for job in members:
        if job.phase != "stopped" or not job.resumable or job.curve.last is None:
            continue
        if job.curve.last != job.epoch:  # its last epoch was not finite: the weights it kept diverged
            continue
        if job.budget is not None and job.epoch >= job.budget:
            continue
        others = (other for other in by_group[job.group] if other is not job)
        verdict = judge(job, finished.get(job.group, ()), others, beat, settings)
        if verdict is not None:
            judged.append(verdict)
    candidates = sorted((j for j in judged if j.resume), key=_promise)
    kept = sorted((j for j in judged if not j.resume), key=_promise)
    return ResumePlan(
        now,
        beat[0],
        beat[1],
        slots,
        tuple(candidates[:slots]),
        tuple(candidates[slots:]),
        (*candidates, *kept),
    )


def _promise(judgement: Judgement) -> tuple[int, float, float, str]:
    """Sort key, most promising first: a chance before none, the higher chance first, then standing."""
    if judgement.probability is None:
        return 1, 0.0, -judgement.standing, judgement.job
    chance = judgement.probability if math.isfinite(judgement.probability) else 0.0
    return 0, -chance, -judgement.standing, judgement.job
