"""The sweep as live runs it, resumes included: each job through the engine against the jobs that ended
before it, and, with spec.resumePolicy, the study's resume rule (stopline.criteria.resume.plan) asked
whenever a job ends.

Sequential, in file order: job k starts after job k-1 ended, its criteria judged with the ended jobs as
cohort. With a resume rule, after each job ends (finished or stopped) and once at the sweep's end, `plan()`
is asked again and again until it resumes nothing. A resumed job goes on from its stop epoch + 1 through the
engine under its own criteria: their states are carried and only the fired decision (`state["stop"]`) is
dropped, as the operator does (stopline.lifecycle's `_unfired`), and it is judged against the sweep's
current cohort (every ended job but itself). It runs to its next stop or its end before the rule is asked
again: its end is new evidence, and a job stopped again may be resumed again later. So no resumed job is
still running when the rule is asked and the free slots are always K (`maxConcurrent`): K bounds only how
many one answer resumes (they run one after another, each with the others' new ends in its cohort).

The rule sees each ended job as the operator builds it: its objective up to the epoch it ran; stopped or
finished; resumable when a sweep criterion stopped it (Cohort, Rungs, Forecast; never a divergence or
another criterion's stop); the chance a forecast stop was decided on; budget = spec.maxEpochs (one for the
file: never a task name or a curve's length) and schedule = the curve's `schedule` column (None without
one). Its clock (`now`, stamped on the plan) is the sweep's simulated clock: the seconds of every epoch run
so far when the file has them, else the number of jobs started.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from stopline import api
from stopline.criteria import CohortCurve, Decision, Observation, evaluate
from stopline.criteria.decision import JSONState
from stopline.criteria.resume import (
    ResumeSettings,
    SweepJob,
    finished_by_group,
    judge,
    plan,
    stop_chance,
    to_beat,
)
from stopline.replay.curves import Curve
from stopline.vocabulary import SWEEP_STOP_TYPES


@dataclass(frozen=True)
class Resume:
    """One resume: from the epoch it was stopped at (it runs on at from_epoch + 1), the rule's chance (None:
    like too few finished jobs), its words, and the epoch it ran to before it ended again."""

    from_epoch: int
    probability: float | None
    message: str
    to_epoch: int

    def as_json(self) -> dict[str, object]:
        return {
            "fromEpoch": self.from_epoch,
            "probability": self.probability,
            "message": self.message,
            "toEpoch": self.to_epoch,
        }


@dataclass(frozen=True)
class Leg:
    """What one run of a job through the engine ended with: the last epoch run, the decision (None: it ran
    to `available`), the criteria states after it, and the job's own clock (its seconds so far)."""

    run: int
    decision: Decision | None
    states: Mapping[str, JSONState]
    clock: float


def run_epochs(
    spec: api.TrainingJobSpec,
    curve: Curve,
    cohort: tuple[CohortCurve, ...],
    available: int,
    after: int = 0,
    states: Mapping[str, JSONState] | None = None,
    clock: float = 0.0,
    history: Mapping[str, tuple[CohortCurve, ...]] | None = None,
) -> Leg:
    """Feed the job's epochs after `after` up to `available` to the engine, one call an epoch, from `states`;
    a decision on epoch e's values means the job ran e epochs. `history`: earlier studies' jobs, by study."""
    states = states or {}
    for epoch in sorted(e for e in curve.rows if after < e <= available):
        clock += curve.seconds.get(epoch, 0.0)
        observation = Observation(
            now=clock,
            samples={epoch: curve.rows[epoch]},
            started_at=0.0,
            gpus=spec.gpus,
            cohort=cohort,
            history=history or {},
        )
        evaluation = evaluate(spec, states, observation)
        if evaluation.decision is not None:
            return Leg(epoch, evaluation.decision, evaluation.states, clock)
        states = evaluation.states
    return Leg(max(available, after), None, states, clock)


def unfired(states: Mapping[str, JSONState]) -> dict[str, JSONState]:
    """The criteria states without the decision a criterion fired (state["stop"]): a resumed job is judged on
    from there by its criteria, as stopline.lifecycle carries them."""
    return {
        name: {key: value for key, value in state.items() if key != "stop"} for name, state in states.items()
    }


@dataclass
class Member:
    """One job of the sweep as far as it ran: its last leg, and the resumes that brought it back."""

    curve: Curve
    available: int
    leg: Leg
    resumes: list[Resume] = field(default_factory=list)
    peers: tuple[CohortCurve, ...] = ()  # its curves in the cohort: one per metric a peer criterion reads
    job: SweepJob | None = None  # as the rule sees it, since it last ended

    @property
    def run(self) -> int:
        return self.leg.run

    @property
    def decision(self) -> Decision | None:
        return self.leg.decision

    @property
    def resumed_epochs(self) -> int:
        """The epochs it ran after its first resume (the epochs a resume cost)."""
        return self.run - self.resumes[0].from_epoch if self.resumes else 0


class SweepRun:
    """One sweep in progress: start its jobs in order (`start`), and with a resume rule ask it after each
    end (`ask`). `charge(epochs, cohort)` hears each leg's epochs fed and its cohort's size (the replay's
    bound on peer comparisons). `history`: the jobs of earlier studies, for the forecast criteria that name
    them, and `earlier` the same as the rule sees them: evidence only, never the sweep's own."""

    def __init__(
        self,
        spec: api.TrainingJobSpec,
        metrics: Collection[str],
        settings: ResumeSettings | None,
        charge: Callable[[int, int], None] | None = None,
        history: Mapping[str, tuple[CohortCurve, ...]] | None = None,
        earlier: tuple[SweepJob, ...] = (),
    ) -> None:
        self.history = history or {}
        self.earlier = earlier
        self.spec = spec
        self.metrics = tuple(metrics)
        self.settings = settings
        self.charge = charge
        self.members: list[Member] = []
        self.seconds = 0.0  # every epoch run so far in the sweep
        # After an ask that resumed nothing: the value to beat and the finished jobs it was judged on, and
        # the jobs that ended since (see `_quiet`).
        self.quiet: tuple[float, dict[tuple[int | None, str | None], tuple[str, ...]]] | None = None
        self.fresh: list[Member] = []

    def cohort(self, without: Member | None = None) -> tuple[CohortCurve, ...]:
        """The ended jobs' curves, in file order (all of them, every job ends before the next starts)."""
        return tuple(peer for member in self.members if member is not without for peer in member.peers)

    def start(self, curve: Curve, available: int) -> Member:
        """Run a new job through the engine with the ended jobs as its cohort."""
        cohort = self.cohort()
        leg = run_epochs(self.spec, curve, cohort, available, history=self.history)
        member = Member(curve, available, leg)
        self._ended(member, 0, len(cohort))
        self.members.append(member)
        return member

    def _ended(self, member: Member, after: int, cohort: int) -> None:
        fed = [epoch for epoch in member.curve.rows if after < epoch <= member.run]
        self.seconds += sum(member.curve.seconds.get(epoch, 0.0) for epoch in fed)
        if self.charge is not None:
            self.charge(len(fed), cohort)
        stopped = member.decision is not None
        peers = []
        for metric in self.metrics:
            rows = member.curve.rows.items()
            values = {e: row[metric] for e, row in rows if e <= member.run and metric in row}
            peer = CohortCurve(member.curve.job, metric, values, stopped=stopped, completed=not stopped)
            if peer.last is not None:  # every criterion skips a curve with no finite value: left out
                peers.append(peer)
        member.peers = tuple(peers)
        member.job = None
        self.fresh.append(member)

    def now(self) -> float:
        """The sweep's clock: its seconds so far when the file has them, else the jobs started."""
        return self.seconds if self.seconds else float(len(self.members))

    def sweep_job(self, member: Member) -> SweepJob:
        """The job as the operator shows it to the resume rule."""
        if member.job is None:
            member.job = self._sweep_job(member)
        return member.job

    def _sweep_job(self, member: Member) -> SweepJob:
        decision, metric = member.decision, self.spec.objective.metric
        values = {e: row[metric] for e, row in member.curve.rows.items() if e <= member.run and metric in row}
        states = member.leg.states
        chance = None if decision is None else stop_chance(decision.type, states.get(decision.criterion))
        return SweepJob(
            member.curve.job,
            "stopped" if decision is not None else "finished",
            values,
            budget=self.spec.max_epochs,
            schedule=member.curve.schedule,
            resumable=decision is not None and decision.type in SWEEP_STOP_TYPES,
            stop_chance=chance,
        )

    def ask(self) -> None:
        """Ask the rule until it resumes nothing; each answer's jobs run on to their next end in turn."""
        if self.settings is None:
            return
        while True:
            jobs = [self.sweep_job(m) for m in self.members]
            if self._quiet(jobs, self.settings):
                return
            answer = plan(jobs, self.settings, self.now(), self.earlier)
            if not answer.resume:
                beat = to_beat(jobs, self.settings)
                self.quiet = None if beat is None else (beat[0], self._finished(jobs))
                self.fresh = []
                return
            self.quiet = None
            by_name = {member.curve.job: member for member in self.members}
            for judgement in answer.resume:
                self.resume(by_name[judgement.job], judgement.probability, judgement.message)

    @staticmethod
    def _finished(jobs: list[SweepJob]) -> dict[tuple[int | None, str | None], tuple[str, ...]]:
        return {group: tuple(c.job for c in curves) for group, curves in finished_by_group(jobs).items()}

    def _quiet(self, jobs: list[SweepJob], settings: ResumeSettings) -> bool:
        """True when plan() is sure to resume nothing, without asking it: the last ask resumed nothing, and
        since then the value to beat and the finished jobs stayed the same (the jobs that ended since were
        stopped), so every job judged then is judged the same now (whether a job is a candidate depends on
        nothing else; its standing only orders the candidates), and none of the jobs stopped since is a
        candidate, judged as plan() judges it. A speed-up only: the answer is plan()'s."""
        if self.quiet is None:
            return False
        beat = to_beat(jobs, settings)
        if beat is None or beat[0] != self.quiet[0] or self._finished(jobs) != self.quiet[1]:
            return False
        finished = finished_by_group([*jobs, *self.earlier])
        for member in self.fresh:
            job = self.sweep_job(member)
            eligible = job.phase == "stopped" and job.resumable and job.curve.last == job.epoch
            if not eligible or (job.budget is not None and job.epoch >= job.budget):
                continue
            others = (other for other in jobs if other.group == job.group and other is not job)
            verdict = judge(job, finished.get(job.group, ()), others, beat, settings)
            if verdict is not None and verdict.resume:
                return False
        self.fresh = []  # judged against the same quiet state: not candidates until it changes
        return True

    def resume(self, member: Member, probability: float | None, message: str) -> None:
        """Run a stopped job on from its stop epoch under its own criteria, with the current cohort."""
        after = member.run
        cohort = self.cohort(without=member)
        states = unfired(member.leg.states)
        member.leg = run_epochs(
            self.spec, member.curve, cohort, member.available, after, states, member.leg.clock, self.history
        )
        member.resumes.append(Resume(after, probability, message, member.run))
        self._ended(member, after, len(cohort))
