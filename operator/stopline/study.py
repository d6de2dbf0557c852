"""A study's stops that can be taken back, live: its TrainingJobs as the resume rule sees them.

The jobs labelled with one stopline.dev/study in a namespace are a sweep. When a member ends (Succeeded or
Stopped) the study's evidence changed: the supervisor hands the members' bodies here and carries out the
plan (controller.resume_by_rule). The rule itself is stopline.criteria.resume, pure, with time an argument;
this module only says what each body means to it. Pure: no I/O.

- The rule's settings are the study's spec.resumePolicy; members that differ are judged by the earliest
  created member's policy (one sweep, one rule), and a member without the policy is never resumed.
- A member is resumable when a sweep criterion stopped it (cohort, rungs, forecast: stopReason.type) and it
  kept a checkpoint; a person's stop, a budget, a divergence or a failure is final here.
- Its budget group is spec.maxEpochs and the stopline.dev/schedule label (neighbours share both).
- It holds one of the K slots while it runs after a resume the rule made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stopline.api import TrainingJobSpec
from stopline.criteria.forecast import history_of
from stopline.criteria.resume import Phase, ResumePlan, ResumeSettings, SweepJob, plan, stop_chance
from stopline.lifecycle import resume_count
from stopline.vocabulary import (
    CANCEL_ANNOTATION,
    CANCELLED,
    FAILED,
    RESUME_RULE,
    SCHEDULE_LABEL,
    STOPPED,
    SUCCEEDED,
    SWEEP_STOP_TYPES,
    TERMINAL_PHASES,
)


@dataclass(frozen=True)
class Member:
    """One TrainingJob of the study: its body as last seen and its parsed spec (None: invalid)."""

    training_job: Mapping[str, Any]
    spec: TrainingJobSpec | None

    @property
    def name(self) -> str:
        return str(self.training_job["metadata"]["name"])

    @property
    def status(self) -> Mapping[str, Any]:
        status = self.training_job.get("status")
        return status if isinstance(status, Mapping) else {}

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")


def settings(members: Iterable[Member]) -> ResumeSettings | None:
    """The study's resume rule: the governing member's spec.resumePolicy; None when it has none, so the
    study's stops stay final."""
    first = governing(members)
    return first.spec.resume_policy if first is not None and first.spec is not None else None


def governing(members: Iterable[Member]) -> Member | None:
    """The earliest created member with a valid spec (ties by name): its spec governs the study's rule."""
    return min(
        (m for m in members if m.spec is not None),
        key=lambda m: (str(m.training_job["metadata"].get("creationTimestamp") or ""), m.name),
        default=None,
    )


def _stop_chance(status: Mapping[str, Any]) -> float | None:
    """The chance a forecast stop was decided on: the firing criterion's state in status.criteria."""
    stop = status.get("stopReason")
    if not isinstance(stop, Mapping):
        return None
    for entry in status.get("criteria") or ():
        if isinstance(entry, Mapping) and entry.get("name") == stop.get("criterion"):
            return stop_chance(stop.get("type"), entry.get("state"))
    return None


def _resumed_by_rule(status: Mapping[str, Any]) -> bool:
    resumes = status.get("resumes")
    last = resumes[-1] if isinstance(resumes, list) and resumes else None
    return isinstance(last, Mapping) and last.get("reason") == RESUME_RULE


def resumable(member: Member) -> bool:
    """Stopped by a sweep criterion with a checkpoint, runs its own Job, has the policy, no cancel."""
    spec, status = member.spec, member.status
    stop = status.get("stopReason")
    checkpoint = status.get("checkpoint")
    return (
        spec is not None
        and spec.template is not None
        and spec.resume_policy is not None
        and member.phase == STOPPED
        and isinstance(stop, Mapping)
        and stop.get("type") in SWEEP_STOP_TYPES
        and isinstance(checkpoint, Mapping)
        and isinstance(checkpoint.get("epoch"), int)
        and CANCEL_ANNOTATION not in (member.training_job["metadata"].get("annotations") or {})
    )


def sweep_job(member: Member) -> SweepJob:
    """The member as the rule sees it. Its values are its curve (status.curve) up to the epoch its weights
    were kept at when stopped: what it would resume from."""
    status = member.status
    curve = status.get("curve")
    values = {
        epoch: float(value)
        for epoch, value in enumerate(curve if isinstance(curve, list) else [], start=1)
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    phase: Phase = "running"
    if member.phase == SUCCEEDED:
        phase = "finished"
    elif member.phase in TERMINAL_PHASES:
        phase = "stopped"
    checkpoint = status.get("checkpoint")
    kept = checkpoint.get("epoch") if isinstance(checkpoint, Mapping) else None
    if phase == "stopped" and isinstance(kept, int):
        values = {epoch: value for epoch, value in values.items() if epoch <= kept}
    schedule = (member.training_job["metadata"].get("labels") or {}).get(SCHEDULE_LABEL)
    return SweepJob(
        member.name,
        phase,
        values,
        budget=member.spec.max_epochs if member.spec is not None else None,
        schedule=schedule if isinstance(schedule, str) else None,
        resumed=phase == "running" and resume_count(status) > 0 and _resumed_by_rule(status),
        resumable=resumable(member),
        stop_chance=_stop_chance(status),
    )


def decide(members: Sequence[Member], now: float, history: Iterable[Member] = ()) -> ResumePlan | None:
    """Which stopped members to resume now; None when the study has no resume policy. A failed or
    cancelled member kept no weights to count. `history`: the jobs of the earlier studies the governing
    member's forecast criteria name (`history_studies`): those that finished are evidence only."""
    rule = settings(members)
    if rule is None:
        return None
    kept = [member for member in members if member.phase not in (FAILED, CANCELLED)]
    earlier = [sweep_job(member) for member in history if member.phase == SUCCEEDED]
    return plan([sweep_job(member) for member in kept], rule, now, earlier)


def history_studies(members: Iterable[Member]) -> tuple[str, ...]:
    """The earlier studies the governing member's forecast criteria learn from (their `history`)."""
    first = governing(members)
    return history_of(first.spec.criteria) if first is not None and first.spec is not None else ()


def evidence(members: Iterable[Member]) -> tuple[tuple[str, str, int], ...]:
    """What the rule's answer depends on that changes when a member ends or is resumed: each member's
    name, its phase once ended, and its resume count. The same evidence gives the same plan: asked once."""
    return tuple(
        sorted(
            (m.name, m.phase if m.phase in TERMINAL_PHASES else "", resume_count(m.status)) for m in members
        )
    )
