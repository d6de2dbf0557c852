"""The criteria that watch time rather than epochs: Stale (hung trainer), GPUIdle and PromQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from stopline.criteria.decision import Decision, Outcome
from stopline.criteria.kind import Kind
from stopline.criteria.observation import Observation
from stopline.criteria.state import State, fmt
from stopline.fields import Duration, Fields, Objective, rfc3339

STALE = "staleAfter"  # the criterion name of spec.metrics.staleAfter; no user name can have a capital letter


@dataclass(frozen=True)
class GPUIdleCriterion:
    """GPU utilisation below the bound for `for_`, while the step did not advance."""

    name: str
    utilization_below: float = 5.0
    for_: Duration = Duration("15m", 900.0)


@dataclass(frozen=True)
class PromQLCriterion:
    """A PromQL query that kept returning a non-empty result for `for_`."""

    name: str
    query: str
    for_: Duration = Duration("0s", 0.0)


def _progress(observation: Observation) -> int | None:
    """What "the trainer advanced" means: its step, or its latest epoch when the step is unknown."""
    return observation.step if observation.step is not None else observation.latest_epoch


def _minutes(seconds: float) -> str:
    return f"{fmt(seconds / 60)} min"


@dataclass
class StaleState(State):
    KIND: ClassVar[str] = "stale"
    progress: int | None = None
    quiet: float = 0.0  # seconds without a new step, counted while the source answered or the trainer hung
    last: float | None = None  # when it was last counted; None while nothing is
    silent_since: float | None = None  # when a trainer whose pod runs last answered, while it does not


def evaluate_stale(
    stale_after: Duration, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    """No new step for staleAfter: a trainer that reports the same step is hung, and so is one that stopped
    answering while the apiserver says its pod runs (trainer_silent: it answered before). A source that does
    not answer otherwise (Prometheus down, a network fault of the operator's) is an outage, shown as the
    MetricsAvailable condition, and its time is not counted."""
    state = StaleState.load(raw)
    if observation.paused:
        state.last = state.silent_since = None
        return Outcome(state.dump(), state.decision, "the queue holds the job: no pod runs (not counted)")
    hung = not observation.answered and observation.trainer_silent and state.progress is not None
    if not observation.answered and not hung:
        state.last = state.silent_since = None
        quiet = _minutes(state.quiet)
        message = f"last progress {quiet} ago; the metrics source is not answering (not counted)"
        return Outcome(state.dump(), state.decision, message)
    progress = _progress(observation)
    if hung:
        if state.silent_since is None:
            state.silent_since = state.last if state.last is not None else observation.now
    else:
        state.silent_since = None
    if not hung and progress is not None and progress != state.progress:
        state.progress, state.quiet = progress, 0.0
    elif state.last is not None:
        state.quiet += max(observation.now - state.last, 0.0)
    state.last = observation.now
    if state.stop is None and state.quiet >= stale_after.seconds:
        quiet = f"no new step for {_minutes(state.quiet)} (staleAfter {stale_after.text})"
        message = f"{quiet}, {_where(state, observation)}"
        decision = Decision("Stale", STALE, message, None, state.quiet, observation.latest_epoch)
        state.stop = decision.as_status()
    return Outcome(state.dump(), state.decision, _summary(state, observation))


def _where(state: StaleState, observation: Observation) -> str:
    if state.silent_since is not None:
        return (
            f"the trainer stopped answering at {rfc3339(state.silent_since)} while its pod runs "
            f"(last at progress {state.progress})"
        )
    return (
        f"stuck at step {observation.step}"
        if observation.step is not None
        else f"stuck at progress {state.progress}"
    )


def _summary(state: StaleState, observation: Observation) -> str:
    if state.silent_since is None:
        return f"last progress {_minutes(state.quiet)} ago"
    silent = _minutes(max(observation.now - state.silent_since, 0.0))
    return f"last progress {_minutes(state.quiet)} ago; the trainer has not answered for {silent} (counted)"


@dataclass
class GPUIdleState(State):
    KIND: ClassVar[str] = "gpuIdle"
    progress: int | None = None
    idle_since: float | None = None


def evaluate_gpu_idle(
    criterion: GPUIdleCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    """Idle = utilisation below the bound AND no progress; an evaluation or a checkpoint phase advances."""
    state = GPUIdleState.load(raw)
    if observation.paused:
        state.idle_since = None
        return Outcome(state.dump(), state.decision, "the queue holds the job: no GPU is held (not counted)")
    utilization, progress = observation.gpu_utilization, _progress(observation)
    if utilization is None:
        message = (
            "no GPU utilisation from DCGM (DCGM_FI_DEV_GPU_UTIL, DCGM_FI_PROF_GR_ENGINE_ACTIVE); no decision"
        )
        return Outcome(state.dump(), state.decision, message)
    if utilization >= criterion.utilization_below:
        state.idle_since = None
    elif state.idle_since is None or progress != state.progress:
        state.idle_since = observation.now
    state.progress = progress
    idle = observation.now - state.idle_since if state.idle_since is not None else 0.0
    if state.stop is None and state.idle_since is not None and idle >= criterion.for_.seconds:
        message = (
            f"GPU utilisation {fmt(utilization)}% below {fmt(criterion.utilization_below)}% with no new step "
            f"for {_minutes(idle)} (for {criterion.for_.text})"
        )
        state.stop = Decision(
            "GPUIdle", criterion.name, message, None, utilization, observation.latest_epoch
        ).as_status()
    return Outcome(
        state.dump(), state.decision, f"GPU utilisation {fmt(utilization)}%, idle for {_minutes(idle)}"
    )


@dataclass
class PromQLState(State):
    KIND: ClassVar[str] = "promql"
    since: float | None = None


def evaluate_promql(
    criterion: PromQLCriterion, observation: Observation, raw: Mapping[str, object] | None
) -> Outcome:
    """The query's result is an input (observation.promql[name]); a failed query keeps the clock as it was."""
    state = PromQLState.load(raw)
    if observation.paused:
        state.since = None
        return Outcome(state.dump(), state.decision, "the queue holds the job: not queried (not counted)")
    result = observation.promql.get(criterion.name)
    if result is None:
        return Outcome(state.dump(), state.decision, "no query result this time (query failed or not run)")
    state.since = (state.since if state.since is not None else observation.now) if result else None
    held = observation.now - state.since if state.since is not None else 0.0
    if state.stop is None and state.since is not None and held >= criterion.for_.seconds:
        message = (
            f"query {criterion.query!r} returned a result for {_minutes(held)} (for {criterion.for_.text})"
        )
        state.stop = Decision(
            "PromQL", criterion.name, message, None, None, observation.latest_epoch
        ).as_status()
    summary = f"query returned a result for {_minutes(held)}" if result else "query returned no result"
    return Outcome(state.dump(), state.decision, summary)


def parse_gpu_idle(name: str, fields: Fields, objective: Objective) -> GPUIdleCriterion:
    below = fields.number("utilizationBelow", 0, 100, default=5.0)
    return GPUIdleCriterion(name, below, fields.duration("for", "15m"))


def parse_promql(name: str, fields: Fields, objective: Objective) -> PromQLCriterion:
    return PromQLCriterion(
        name, fields.string("query", max_length=4096), fields.duration("for", "0s", positive=False)
    )


GPU_IDLE = Kind(
    "gpuIdle",
    GPUIdleCriterion,
    ("utilizationBelow", "for"),
    parse_gpu_idle,
    evaluate_gpu_idle,
    reads_prometheus=True,
)
PROMQL = Kind(
    "promql", PromQLCriterion, ("query", "for"), parse_promql, evaluate_promql, reads_prometheus=True
)
