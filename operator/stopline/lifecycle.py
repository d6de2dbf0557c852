"""The TrainingJob's phase and conditions, decided from the resource and its batch Job. Pure: no I/O.

`desired_status` returns the change to the part of the status this module owns (phase,
observedGeneration, conditions); the status writer patches it only when it differs from what is stored,
so an unchanged Job costs no write. Phases move forward, but for a queue: a Job created suspended for a
queue (Kueue) is Queued until the queue unsuspends it (then Pending, Running), and a Job the queue suspends
again after it was admitted is Preempted until it is admitted again; a Running job whose pods go away for
another reason (a kubelet restart) stays Running, and a finished job never changes again, with one
exception: a Stopped job that kept its weights may be resumed (`resume`, the stopline.dev/resume
annotation); it goes back to Pending and its Job is made again, the trainers resuming from the checkpoint.

Condition types (metav1.Condition style, one per type; the names are stopline.vocabulary's):

- ``Created``: True once the control-token Secret, the headless Service (replicas > 1) and the Job
  exist (reason ChildrenCreated); False with reason InvalidSpec and the offending field in the message
  when the spec cannot run.
- ``Running``: True once every rank is ready (reason AllRanksReady); False again when the Job finishes.
- ``Finished``: True when the Job completed (reason JobComplete) or failed (the Job's own reason, e.g.
  BackoffLimitExceeded, and its message), or when a stop ended (reasons of stopline.stopping).
- ``StopRequested``: True from the moment a stop was decided (reason: the stop reason's type).
- ``CheckpointTarget``: while Pending, whether spec.checkpoint.pvc's claim exists (pods wait for it).
- ``MetricsAvailable``: whether the last scrapes of rank 0's /metrics worked (message: the error).
- ``Admitted``: for a Job a queue holds: True once unsuspended (reason Admitted); False while suspended,
  reason Queued (never admitted) or Preempted (admitted, then taken back), message the queue's own words.

While a job is Stopping, the stop protocol (stopline.stopping) owns the phase: the Job finishing is how
that stop ends, not a success, so this module leaves the phase alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stopline.vocabulary import (
    ADMITTED,
    ALL_RANKS_READY,
    CANCEL_ANNOTATION,
    CANCELLED,
    CHECKPOINT_SAVED,
    CHILDREN_CREATED,
    CREATED,
    FAILED,
    FINISHED,
    HELD_PHASES,
    INVALID_SPEC,
    JOB_COMPLETE,
    JOB_FAILED,
    MANUAL,
    PENDING,
    PREEMPTED,
    QUEUE_LABEL,
    QUEUED,
    RESTARTING,
    RESUME_ANNOTATION,
    RESUME_RULE,
    RESUMED,
    RUNNING,
    RUNNING_CONDITION,
    STOP_ANNOTATION,
    STOP_REQUESTED,
    STOPPED,
    STOPPING,
    SUCCEEDED,
    TERMINAL_PHASES,
    find_condition,
)

MAX_MESSAGE = 1024  # status.conditions[].message: long enough for an apiserver error, bounded for etcd


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class StatusChange:
    """What one writer wants: merge-patched fields, conditions to set, and the phase (None: unchanged)."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    conditions: Sequence[Condition] = ()
    phase: str | None = None

    @property
    def guarded(self) -> bool:
        """Touches what another writer may change too: sent only against the version it was composed on."""
        return self.phase is not None or bool(self.conditions)


@dataclass(frozen=True)
class Ending:
    """What the trainer pods left when their Job finished: rank 0's checkpoint, and what failed."""

    checkpoint: Mapping[str, Any] | None = None
    failure: str | None = None  # e.g. "rank 1 exited with code 3; its last log lines: ..."
    verified: Condition | None = None  # CheckpointVerified, for a checkpoint on an object store
    stopped: Mapping[str, str] | None = None  # the decision the trainer stopped on (POST /stop), if any
    last: Mapping[int, float] = field(default_factory=dict)  # rank 0's last epochs' objective (pointer)


def seconds(text: object) -> float | None:
    """An RFC 3339 timestamp of the status as seconds since the epoch; None when absent or not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_seconds(status: Mapping[str, Any]) -> float:
    """status.runSeconds: how long the pods ran in admissions a queue took back (0 when never preempted)."""
    value = status.get("runSeconds")
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0


def job_finished(job: Mapping[str, Any]) -> Condition | None:
    """The Job's terminal condition (Complete or Failed, status True), as a Finished condition."""
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return Condition(FINISHED, True, JOB_COMPLETE, "every rank exited 0")
        if condition.get("type") == "Failed":
            reason = condition.get("reason") or JOB_FAILED
            return Condition(FINISHED, True, reason, condition.get("message") or reason)
    return None


def all_ranks_started(job: Mapping[str, Any], replicas: int) -> bool:
    """Every rank is ready or already done: `active` alone would count pods still waiting for a node.
    A target's summary (stopline.targets) says how many pods it runs in spec.parallelism."""
    parallelism = (job.get("spec") or {}).get("parallelism")
    if job.get("kind", "Job") != "Job" and isinstance(parallelism, int):
        replicas = parallelism
    status = job.get("status", {})
    return int(status.get("ready") or 0) + int(status.get("succeeded") or 0) >= replicas


def desired_status(
    training_job: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    *,
    invalid_spec: str | None = None,
    checkpoint_target: Condition | None = None,
    ending: Ending | None = None,
    queue_says: str | None = None,
    now: float = 0.0,
    governed: Condition | None = None,
) -> StatusChange:
    """Phase, observedGeneration and conditions for `training_job` given its Job (None: not created yet).

    `invalid_spec` is the parse error's message; `checkpoint_target` says whether the PVC exists (shown
    while Pending); `ending` is what the pods left once the Job finished: the checkpoint goes to
    status.checkpoint (a job run to the end shows its final weights too), a failure to the Finished
    condition's message. `queue_says`: the queue's words on a suspended Job (its Workload's message,
    already excerpted). `now`: for status.runSeconds when a preemption ends a run. `governed`: for a
    TrainingJob with spec.targetRef, the Created condition (the target found, or not yet). A terminal
    phase is kept as it is: only a new generation updates observedGeneration.
    """
    current: Mapping[str, Any] = training_job.get("status") or {}
    phase = current.get("phase") or PENDING
    replicas = int(training_job.get("spec", {}).get("replicas") or 1)
    wanted: list[Condition] = []
    fields: dict[str, Any] = {"observedGeneration": training_job["metadata"].get("generation")}
    if invalid_spec is not None and phase not in TERMINAL_PHASES:
        phase = FAILED
        wanted.append(Condition(CREATED, False, INVALID_SPEC, invalid_spec))
    elif job is not None and phase not in TERMINAL_PHASES and phase != STOPPING:
        finished = job_finished(job)
        if previous_run(training_job, job):
            return StatusChange(fields=fields)  # the failed or resumed run's Job, going: the next one decides
        wanted.append(
            governed or Condition(CREATED, True, CHILDREN_CREATED, f"Job {job['metadata']['name']} created")
        )
        if finished is not None and ending is not None and ending.stopped and finished.reason == JOB_COMPLETE:
            return _stopped_unrecorded(training_job, ending, wanted, fields)
        if finished is not None and finished.reason != JOB_COMPLETE and restarts_left(training_job):
            return _restarting(training_job, phase, finished, ending, now, wanted, fields)
        held = _held(current, phase, job, finished, queue_says, now)
        if held is not None:
            return StatusChange(
                fields={**fields, **held.fields}, conditions=[*wanted, *held.conditions], phase=held.phase
            )
        if queue_holds(job) or phase in HELD_PHASES:
            wanted.append(Condition(ADMITTED, True, ADMITTED, "the queue admitted the Job: its pods may run"))
            phase = PENDING if phase in HELD_PHASES else phase
        if finished is not None:
            phase = SUCCEEDED if finished.reason == JOB_COMPLETE else FAILED
            if ending is not None and ending.failure and phase == FAILED:
                finished = Condition(FINISHED, True, finished.reason, f"{finished.message}; {ending.failure}")
            if ending is not None and ending.last:
                fields |= _last_epochs(current, ending.last)
            if ending is not None and ending.checkpoint:
                fields["checkpoint"] = dict(ending.checkpoint)
                if ending.verified is not None:
                    wanted.append(ending.verified)
            wanted.append(Condition(RUNNING_CONDITION, False, finished.reason, "the Job finished"))
            wanted.append(finished)
        elif phase == RUNNING or all_ranks_started(job, replicas):
            phase = RUNNING
            wanted.append(Condition(RUNNING_CONDITION, True, ALL_RANKS_READY, f"{replicas} rank(s) started"))
        if checkpoint_target is not None and phase == PENDING:
            wanted.append(checkpoint_target)
    elif governed is not None and phase == PENDING:
        wanted.append(governed)  # the target is not there (yet): say so, and wait for it
    return StatusChange(fields=fields, conditions=wanted, phase=phase)


def _last_epochs(current: Mapping[str, Any], last: Mapping[int, float]) -> dict[str, Any]:
    """status.curve and progress with the trainer's last epochs, those it ended before the operator read
    them (kubectl get tj shows the epoch the job ended at, not one before); epochs read are kept."""
    fields: dict[str, Any] = {}
    final = max(last)
    progress = current.get("progress")
    if isinstance(progress, Mapping) and isinstance(progress.get("epoch"), int) and progress["epoch"] < final:
        fields["progress"] = {**progress, "epoch": final}
    curve = list(current.get("curve") or [])
    curve += [None] * (final - len(curve))
    missing = {epoch: value for epoch, value in last.items() if curve[epoch - 1] is None}
    for epoch, value in missing.items():
        curve[epoch - 1] = value
    if missing:
        fields["curve"] = curve
    return fields


def restarts_left(training_job: Mapping[str, Any]) -> bool:
    """spec.failurePolicy.maxRestarts is not used up by status.restarts."""
    policy = (training_job.get("spec") or {}).get("failurePolicy") or {}
    allowed = policy.get("maxRestarts") if isinstance(policy, Mapping) else None
    return isinstance(allowed, int) and restarts(training_job.get("status") or {}) < allowed


def restarts(status: Mapping[str, Any]) -> int:
    """status.restarts: how many times a failed rank restarted the job (0 when never)."""
    done = status.get("restarts")
    return done if isinstance(done, int) and done >= 0 else 0


def restarting(training_job: Mapping[str, Any]) -> bool:
    """The job's Job is being made again: a rank failed (its Running condition says Restarting), or the
    Stopped job was resumed (Resumed); either way the trainers resume from the last checkpoint."""
    status = training_job.get("status") or {}
    running = find_condition(status.get("conditions"), RUNNING_CONDITION) or {}
    return status.get("phase") == PENDING and running.get("reason") in (RESTARTING, RESUMED)


def previous_run(training_job: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    """While the job is made again (`restarting`), whether `job` is the run before's, which is going: it
    finished, it is being deleted, or it was made before the last resume. Its end decides nothing."""
    if not restarting(training_job):
        return False
    metadata = job.get("metadata") or {}
    if job_finished(job) is not None or metadata.get("deletionTimestamp"):
        return True
    resumes = (training_job.get("status") or {}).get("resumes")
    last = resumes[-1] if isinstance(resumes, list) and resumes else None
    resumed_at = seconds(last.get("at")) if isinstance(last, Mapping) else None
    created = seconds(metadata.get("creationTimestamp"))
    return resumed_at is not None and created is not None and created < resumed_at


def ran(current: Mapping[str, Any], phase: str, now: float) -> float:
    """status.runSeconds with the run that just ended (the pods ran since the Running condition): a
    preemption's, a failed rank's, or a stop's, so that budgets count it when the job runs again."""
    if phase != RUNNING:
        return run_seconds(current)
    running = find_condition(current.get("conditions"), RUNNING_CONDITION) or {}
    since = seconds(running.get("lastTransitionTime")) if running.get("status") == "True" else None
    return round(run_seconds(current) + (max(now - since, 0.0) if since is not None else 0.0), 1)


def _restarting(
    training_job: Mapping[str, Any],
    phase: str,
    finished: Condition,
    ending: Ending | None,
    now: float,
    wanted: list[Condition],
    fields: dict[str, Any],
) -> StatusChange:
    """A rank failed and spec.failurePolicy allows another run: back to Pending, the restart counted, the
    run's time added to runSeconds; the controller then makes the Job again, and the trainers resume from
    their last checkpoint. The Job's own failure and the rank's exit code say why."""
    current: Mapping[str, Any] = training_job.get("status") or {}
    done = restarts(current)
    allowed = training_job["spec"]["failurePolicy"]["maxRestarts"]
    why = (
        f"{finished.message}; {ending.failure}" if ending is not None and ending.failure else finished.message
    )
    message = f"restart {done + 1} of {allowed} from the last checkpoint: {why}"
    fields |= {"restarts": done + 1, "runSeconds": ran(current, phase, now)}
    if ending is not None and ending.checkpoint:
        fields["checkpoint"] = dict(ending.checkpoint)
    wanted.append(Condition(RUNNING_CONDITION, False, RESTARTING, message))
    return StatusChange(fields=fields, conditions=wanted, phase=PENDING)


def checkpoint_place(checkpoint: Mapping[str, Any]) -> str:
    """Where a status.checkpoint is, in the words every message uses: `epoch 3, step 300: <uri>`."""
    return f"epoch {checkpoint.get('epoch')}, step {checkpoint.get('step')}: {checkpoint.get('uri')}"


def queue_holds(job: Mapping[str, Any]) -> bool:
    """A queue (Kueue) admits this Job: it carries the queue-name label stopline copied onto it."""
    return bool((job["metadata"].get("labels") or {}).get(QUEUE_LABEL))


def _held(
    current: Mapping[str, Any],
    phase: str,
    job: Mapping[str, Any],
    finished: Condition | None,
    queue_says: str | None,
    now: float,
) -> StatusChange | None:
    """Queued or Preempted while the Job is suspended (by a queue: stopline suspends only a job it stops).

    Preempted once it was admitted before; the run the preemption ended adds to status.runSeconds, so
    budgets count only time in which the pods ran.
    """
    if (job.get("spec") or {}).get("suspend") is not True or finished is not None:
        return None
    admitted = find_condition(current.get("conditions"), ADMITTED) or {}
    was_admitted = phase in (RUNNING, PREEMPTED) or admitted.get("status") == "True"
    held = PREEMPTED if was_admitted else QUEUED
    default = (
        "the queue took the Job's pods back (the trainers saved on SIGTERM); it runs again when re-admitted"
        if held == PREEMPTED
        else "waiting for the queue to admit the Job"
    )
    conditions = [Condition(ADMITTED, False, held, queue_says or default)]
    fields: dict[str, Any] = {}
    if phase == RUNNING:
        fields["runSeconds"] = ran(current, phase, now)
    if phase in (RUNNING, PENDING) and held == PREEMPTED:
        conditions.append(Condition(RUNNING_CONDITION, False, PREEMPTED, "the queue suspended the Job"))
    return StatusChange(fields=fields, conditions=conditions, phase=held)


def _stopped_unrecorded(
    training_job: Mapping[str, Any], ending: Ending, wanted: list[Condition], fields: dict[str, Any]
) -> StatusChange:
    """The trainers stopped on the operator's POST /stop, saved and exited, and the Job completed before
    the operator recorded the stop (it restarted between the two): Stopped for that reason, not Succeeded."""
    assert ending.stopped is not None and ending.checkpoint is not None
    stop_type, criterion = ending.stopped["type"], ending.stopped["criterion"]
    checkpoint = ending.checkpoint
    message = (
        f"the trainer stopped on POST /stop ({stop_type}, {criterion}) before the operator recorded it; "
        f"weights saved at {checkpoint_place(checkpoint)}"
    )
    fields["checkpoint"] = dict(checkpoint)
    fields["stopReason"] = {"type": stop_type, "criterion": criterion, "message": message}
    if isinstance(checkpoint.get("epoch"), int):
        fields["stopReason"]["epoch"] = checkpoint["epoch"]
    wanted += [
        Condition(STOP_REQUESTED, True, stop_type, message),
        Condition(RUNNING_CONDITION, False, CHECKPOINT_SAVED, "the stop ended"),
        Condition(FINISHED, True, CHECKPOINT_SAVED, message),
    ]
    if ending.verified is not None:
        wanted.append(ending.verified)
    return StatusChange(fields=fields, conditions=wanted, phase=STOPPED)


def merge_conditions(
    existing: Sequence[Mapping[str, Any]], wanted: Sequence[Condition], now: str
) -> list[dict[str, Any]]:
    """Existing conditions with `wanted` applied; lastTransitionTime moves only when the status flips."""
    merged = {condition["type"]: dict(condition) for condition in existing}
    for condition in wanted:
        status = "True" if condition.status else "False"
        previous = merged.get(condition.type, {})
        merged[condition.type] = {
            "type": condition.type,
            "status": status,
            "reason": condition.reason,
            "message": condition.message[:MAX_MESSAGE],
            "lastTransitionTime": (
                previous["lastTransitionTime"]
                if previous.get("status") == status and "lastTransitionTime" in previous
                else now
            ),
        }
    return list(merged.values())


# A person's resume (the stopline.dev/resume annotation): one request per annotation value

MAX_RESUME_WORDS = 256  # the annotation's value as status.resumes[].message: bounded, printable
MAX_RESUMES = 100  # status.resumes keeps the latest (the CRD's maxItems)
REQUEST_ID_CHARS = 16


def request_id(value: str) -> str:
    """Which annotation value a request was: a digest, so status holds none of a long value's text."""
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:REQUEST_ID_CHARS]


def printable(text: str, limit: int) -> str:
    """At most `limit` characters of `text` as printable ASCII (whitespace a space, anything else `?`; a cut
    shows as `...`): a person's words, safe for status, an Event and a log line."""
    cut = len(text) > limit
    head = text[: limit - 3 if cut else limit]
    clean = "".join(c if " " <= c <= "~" else " " if c.isspace() else "?" for c in head)
    return clean + "..." if cut else clean


def _last_resume(status: Mapping[str, Any]) -> Mapping[str, Any]:
    resumes = status.get("resumes")
    last = resumes[-1] if isinstance(resumes, list) and resumes else None
    return last if isinstance(last, Mapping) else {}


def resume_count(status: Mapping[str, Any]) -> int:
    """How many times the job was resumed: status.resumeCount (status.resumes keeps only the latest)."""
    count = status.get("resumeCount")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    resumes = status.get("resumes")
    return len(resumes) if isinstance(resumes, list) else 0


def _annotation(training_job: Mapping[str, Any], key: str) -> str | None:
    value = ((training_job.get("metadata") or {}).get("annotations") or {}).get(key)
    return value if isinstance(value, str) else None


def stop_request(training_job: Mapping[str, Any]) -> str | None:
    """The stopline.dev/stop annotation's value while it asks for a stop: a value the last resume found set
    was answered by that resume (a new value is a new request)."""
    value = _annotation(training_job, STOP_ANNOTATION)
    if value is None:
        return None
    answered = _last_resume(training_job.get("status") or {}).get("stopRequest")
    return None if answered == request_id(value) else value


def resume_request(training_job: Mapping[str, Any]) -> str | None:
    """The stopline.dev/resume annotation's value, unless the last resume already carried it out."""
    value = _annotation(training_job, RESUME_ANNOTATION)
    if value is None:
        return None
    answered = _last_resume(training_job.get("status") or {}).get("request")
    return None if answered == request_id(value) else value


@dataclass(frozen=True)
class Resumption:
    """A resume to carry out: the status change (back to Pending, the stop moved into status.resumes) and
    the words of its Event."""

    change: StatusChange
    message: str


@dataclass(frozen=True)
class ResumeRefusal:
    """A resume that cannot be carried out: why, and the fix (a Warning Event); nothing changes."""

    message: str


_NOT_STOPPED = {
    SUCCEEDED: "it ran to the end: there is nothing left to resume (apply a new TrainingJob to train more)",
    FAILED: "it failed, so its last weights may be what failed (see its Finished condition); apply a new "
    "TrainingJob to start again from them",
    CANCELLED: "a cancel keeps no weights: there is nothing to resume from",
    STOPPING: "it is still stopping: annotate again once it is Stopped",
}


def resume(
    training_job: Mapping[str, Any], governs: str | None, now: str
) -> Resumption | ResumeRefusal | None:
    """What a pending stopline.dev/resume asks of `training_job`, decided on the body as it is (None: no
    request pending). `governs`: the spec field when the job governs a workload it did not make
    (spec.targetRef, spec.targetSelector), which stopline does not resume. `now`: the resume's time.

    Accepted only for a Stopped job with status.checkpoint that runs its own Job (spec.template) and has no
    cancel annotation: the phase goes back to Pending with the conditions saying Resumed; stopReason,
    gpuSecondsSaved (a resumed job's epochs count as run) and stopPath go, the stop moving into a new
    status.resumes entry (fromEpoch: the checkpoint's; the annotation's words, bounded; which requests
    it answered, as digests); each criterion's fired decision is dropped, so the criteria judge the epochs
    to come as they stand now.
    """
    value = resume_request(training_job)
    if value is None:
        return None
    name = (training_job.get("metadata") or {}).get("name", "NAME")
    status: Mapping[str, Any] = training_job.get("status") or {}
    phase = status.get("phase") or PENDING
    checkpoint = status.get("checkpoint")
    remove = f"remove the annotation (kubectl annotate tj {name} {RESUME_ANNOTATION}-)"
    if governs is not None:
        return ResumeRefusal(
            f"{governs}: stopline resumes only a TrainingJob that runs its own Job (spec.template) for now; "
            f"resume the workload itself, then {remove}"
        )
    if phase != STOPPED:
        why = _NOT_STOPPED.get(phase, "it is not stopped: it runs, or waits to")
        return ResumeRefusal(f"TrainingJob is {phase}, not Stopped: {why}; {remove}")
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("epoch"), int):
        reason = (status.get("stopReason") or {}).get("type") or "its stop"
        return ResumeRefusal(
            f"status.checkpoint is empty: the stop ({reason}) kept no weights to resume from; apply a new "
            f"TrainingJob to start again, and {remove}"
        )
    if _annotation(training_job, CANCEL_ANNOTATION) is not None:
        return ResumeRefusal(
            f"the {CANCEL_ANNOTATION} annotation is set and would cancel the resumed job at once: remove it "
            f"(kubectl annotate tj {name} {CANCEL_ANNOTATION}-), then annotate {RESUME_ANNOTATION} again"
        )
    words = printable(value, MAX_RESUME_WORDS) or "resumed with kubectl annotate"
    return _resumption(training_job, checkpoint, now, {"reason": MANUAL, "message": words})


def resume_by_rule(
    training_job: Mapping[str, Any], now: str, message: str, probability: float | None
) -> Resumption | None:
    """The study's resume rule (spec.resumePolicy) brings back a Stopped job that kept a checkpoint, as a
    person's resume does; `message` and `probability` are the rule's numbers. None when the job is no
    longer Stopped with a checkpoint (resumed meanwhile, deleted and made again) or a cancel is set: the
    write goes against the body as it is, so the rule resumes a stop at most once."""
    status: Mapping[str, Any] = training_job.get("status") or {}
    checkpoint = status.get("checkpoint")
    if status.get("phase") != STOPPED or _annotation(training_job, CANCEL_ANNOTATION) is not None:
        return None
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("epoch"), int):
        return None
    entry: dict[str, Any] = {"reason": RESUME_RULE, "message": printable(message, MAX_MESSAGE)}
    if probability is not None:
        entry["probability"] = probability
    return _resumption(training_job, checkpoint, now, entry)


def _resumption(
    training_job: Mapping[str, Any], checkpoint: Mapping[str, Any], now: str, why: Mapping[str, Any]
) -> Resumption:
    """`why`: the entry's reason, message (and the rule's probability). A resume annotation set now is
    answered by this resume, whoever made it: it does not resume the job again after a later stop."""
    status: Mapping[str, Any] = training_job.get("status") or {}
    stop = status.get("stopReason")
    stop = stop if isinstance(stop, Mapping) else {}
    words = str(why["message"])
    entry: dict[str, Any] = {
        "fromEpoch": checkpoint["epoch"],
        "at": now,
        **why,
        "stoppedBy": {key: str(stop[key]) for key in ("type", "criterion") if isinstance(stop.get(key), str)},
    }
    resume_value = _annotation(training_job, RESUME_ANNOTATION)
    if resume_value is not None:
        entry["request"] = request_id(resume_value)
    if isinstance(stop.get("epoch"), int):
        entry["stoppedBy"]["epoch"] = stop["epoch"]
    stop_value = _annotation(training_job, STOP_ANNOTATION)
    if stop_value is not None:
        entry["stopRequest"] = request_id(stop_value)  # answered: it does not stop the resumed job again
    resumes = [r for r in status.get("resumes") or [] if isinstance(r, Mapping)]
    fields: dict[str, Any] = {
        "resumes": [*resumes, entry][-MAX_RESUMES:],
        "resumeCount": resume_count(status) + 1,
        "stopReason": None,
        "gpuSecondsSaved": None,
        "stopPath": None,
    }
    criteria = status.get("criteria")
    if isinstance(criteria, list):
        fields["criteria"] = [_unfired(entry) for entry in criteria if isinstance(entry, Mapping)]
    stopped_by = " ".join(f"{entry['stoppedBy'].get(k, '')}" for k in ("type", "criterion")).strip()
    message = (
        f"resumed from epoch {checkpoint['epoch']} ({checkpoint_place(checkpoint)}), stopped before by "
        f"{stopped_by or 'a stop'}: {words}"
    )
    conditions = (
        Condition(STOP_REQUESTED, False, RESUMED, message),
        Condition(FINISHED, False, RESUMED, message),
        Condition(RUNNING_CONDITION, False, RESUMED, f"{message}; its Job is made again"),
    )
    return Resumption(StatusChange(fields=fields, conditions=conditions, phase=PENDING), message)


def _unfired(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A status.criteria entry without the decision its criterion fired (state.stop): resumed, the job is
    judged on from here, by the criteria as they stand now."""
    state = entry.get("state")
    if not isinstance(state, Mapping) or state.get("stop") is None:
        return dict(entry)
    return {**entry, "state": {key: value for key, value in state.items() if key != "stop"}}
