"""One visit of a running (or held) job, without I/O: what the reads gave (`Inputs`), turned into what to do
(`Plan`): the status fields and conditions to write in one patch, a stop to begin, the Events to post.

The supervisor reads, calls `plan`, and carries the plan out; the only state `plan` changes is the job's
own in-process memory (criteria state, failed reads, the epochs fed), which lives in this process only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stopline.api import TrainingJobSpec
from stopline.criteria.cohort import CohortCriterion
from stopline.criteria.decision import Decision
from stopline.criteria.engine import evaluate
from stopline.criteria.forecast import ForecastCriterion
from stopline.criteria.observation import CohortCurve, Observation, Request, Samples
from stopline.criteria.rungs import RungsCriterion
from stopline.lifecycle import Condition, run_seconds, seconds, stop_request
from stopline.metrics.exposition import TrainerReport
from stopline.pointer import exported_checkpoint, newer
from stopline.progress import JobMemory, progress_status
from stopline.registry import Tracked
from stopline.vocabulary import (
    ADMITTED,
    CANCEL_ANNOTATION,
    EPOCHS_MISSED,
    EPOCHS_READ,
    EPOCHS_UNREAD,
    HELD_PHASES,
    MANUAL_TYPES,
    METRICS_AVAILABLE,
    RUNNING,
    RUNNING_CONDITION,
    SCRAPE_FAILED,
    SCRAPED,
    STOP_ANNOTATION,
    WOULD_STOP,
    find_condition,
)

FAILURES_BEFORE_CONDITION = 3  # one lost read is noise; three in a row is a condition worth showing

Event = tuple[str, str, bool]  # reason, message, warning


@dataclass(frozen=True)
class Inputs:
    """What one visit read: rank 0's report or why there is none, whether the trainer went silent while its
    pod runs, the epochs since the last read (and those it missed), the live inputs, and when."""

    report: TrainerReport | None
    error: str | None
    silent: bool
    epochs: Samples
    missed: str | None
    promql: Mapping[str, bool]
    gpu_utilization: float | None
    now: float
    stamp: str  # `now` as the status writes it (RFC 3339)


@dataclass(frozen=True)
class Plan:
    """What a visit does: one patch of `fields` and `conditions`; or begin `stop` (the fields go with it)."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    conditions: tuple[Condition, ...] = ()
    stop: Decision | None = None
    events: tuple[Event, ...] = ()  # posted once the patch is written


def plan(
    tracked: Tracked,
    spec: TrainingJobSpec,
    memory: JobMemory,
    inputs: Inputs,
    cohort: tuple[CohortCurve, ...],
    history: Mapping[str, tuple[CohortCurve, ...]] | None = None,
) -> Plan:
    """The visit's plan from its inputs: feed the new epochs to the criteria, and say what to write.
    `history`: the jobs of the earlier studies its forecast criteria name (`criteria.forecast.history_of`)."""
    report, epochs = inputs.report, inputs.epochs
    if report is not None or tracked.phase != RUNNING:
        memory.failures = 0  # a job no pod runs for (a queue holds it) has no failed reads
    else:
        memory.failures += 1
    new_epoch = report is not None and memory.record(spec, epochs, report.epoch_seconds)
    if report is not None:
        memory.in_progress(report.epoch)
    observation = observe(tracked, spec, inputs, cohort, history or {})
    if memory.restart_clocks:  # the first visit since a resume: the clocks start afresh, as after a queue
        observation, memory.restart_clocks = replace(observation, paused=True), False
    evaluation = evaluate(spec, memory.states, observation)
    memory.states = dict(evaluation.states)
    fields: dict[str, Any] = {}
    if new_epoch and report is not None:
        fields |= progress_status(spec, memory, report, evaluation, inputs.stamp)
    saved = exported_checkpoint(report.checkpoint) if report is not None else None
    if saved is not None and newer(saved, memory.checkpoint):
        # the trainer keeps only its newest weights: the status follows each save, or names a deleted
        # file; and should the trainer hang and never save again, these are its last weights
        fields["checkpoint"] = saved
    decision = evaluation.decision
    if decision is not None and (not spec.stop_policy.dry_run or decision.type in MANUAL_TYPES):
        return Plan(fields=fields, stop=decision)
    events: list[Event] = []
    if decision is not None and not tracked.status.get("dryRun"):
        fields["dryRun"] = {"wouldStopAt": decision.as_status() | {"at": inputs.stamp}}
        message = f"dryRun: would stop now: {decision.type} ({decision.criterion}): {decision.message}"
        events.append((WOULD_STOP, message, False))
    conditions = _metrics_availability(tracked, memory, inputs.error) + _epochs_missed(
        tracked, inputs.missed, epochs
    )
    events += [(c.reason, c.message, True) for c in conditions if c.reason in (SCRAPE_FAILED, EPOCHS_UNREAD)]
    return Plan(fields=fields, conditions=conditions, events=tuple(events))


def observe(
    tracked: Tracked,
    spec: TrainingJobSpec,
    inputs: Inputs,
    cohort: tuple[CohortCurve, ...],
    history: Mapping[str, tuple[CohortCurve, ...]] | None = None,
) -> Observation:
    """What the engine sees of a job: from the watched body, the visit's inputs and its study's curves."""
    report, now = inputs.report, inputs.now
    annotations = tracked.annotations
    stop = stop_request(tracked.training_job)  # a value a resume answered does not stop the job again
    cancel = annotations.get(CANCEL_ANNOTATION)
    return Observation(
        now=now,
        samples=inputs.epochs,
        started_at=_started_at(tracked, now),
        step=report.step if report is not None else None,
        gpus=spec.gpus,
        gpu_utilization=inputs.gpu_utilization,
        promql=inputs.promql,
        cohort=cohort,
        history=history or {},
        answered=report is not None,
        trainer_silent=inputs.silent,
        paused=tracked.phase in HELD_PHASES,
        stop=Request(STOP_ANNOTATION, stop) if stop is not None else None,
        cancel=Request(CANCEL_ANNOTATION, cancel) if cancel is not None else None,
    )


def _metrics_availability(tracked: Tracked, memory: JobMemory, error: str | None) -> tuple[Condition, ...]:
    """MetricsAvailable: False after a few failed reads in a row, True when a read works; () if unchanged."""
    current = find_condition(tracked.status.get("conditions"), METRICS_AVAILABLE) or {}
    if memory.failures >= FAILURES_BEFORE_CONDITION and error and current.get("status") != "False":
        message = f"{error}; check spec.metrics.port and path"
        return (Condition(METRICS_AVAILABLE, False, SCRAPE_FAILED, message),)
    if memory.failures == 0 and tracked.phase == RUNNING and current.get("status") != "True":
        return (Condition(METRICS_AVAILABLE, True, SCRAPED, "rank 0's metrics are read every interval"),)
    return ()


def cohort_study(spec: TrainingJobSpec) -> str | None:
    """The study a cohort, rungs or forecast criterion names, if any; else the job's study label."""
    peer_kinds = CohortCriterion | RungsCriterion | ForecastCriterion
    named = (c.study for c in spec.criteria if isinstance(c, peer_kinds) and c.study)
    return next(named, None)


def _epochs_missed(tracked: Tracked, missed: str | None, epochs: Samples) -> tuple[Condition, ...]:
    """EpochsMissed: True naming the epochs no criterion saw; False again once a jump was read whole."""
    current = find_condition(tracked.status.get("conditions"), EPOCHS_MISSED) or {}
    if missed is not None:
        return (Condition(EPOCHS_MISSED, True, EPOCHS_UNREAD, missed),)
    if len(epochs) > 1 and current.get("status") == "True":
        return (Condition(EPOCHS_MISSED, False, EPOCHS_READ, "every epoch since was read"),)
    return ()


def _started_at(tracked: Tracked, now: float) -> float | None:
    """When the budget's clock started: when every rank was up (the Running condition), less the time the
    pods ran before a queue preempted them (status.runSeconds); while a queue holds the job, the clock
    stands still. A job no queue held counts from its creation until it runs."""
    before = run_seconds(tracked.status)
    running = find_condition(tracked.status.get("conditions"), RUNNING_CONDITION)
    if running is not None and running.get("status") == "True":
        since = seconds(running.get("lastTransitionTime"))
        return since - before if since is not None else None
    if tracked.phase in HELD_PHASES or find_condition(tracked.status.get("conditions"), ADMITTED):
        return now - before
    created = seconds(tracked.training_job["metadata"].get("creationTimestamp"))
    return created - before if created is not None else None
