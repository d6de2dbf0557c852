"""Every name a user sees on a TrainingJob: phases, condition types and reasons, Event reasons, annotations.

One module, so `kubectl get tj`, `kubectl describe tj`, the docs and the tests all read the same words, and
a name is changed in one place. Pure constants plus the one helper that finds a condition by type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# status.phase
PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
STOPPING, STOPPED, CANCELLED = "Stopping", "Stopped", "Cancelled"
# a queue (Kueue) holds the Job suspended: not admitted yet, or admitted and taken back (also the reasons
# of the Admitted condition when False; it is True with reason Admitted)
QUEUED, PREEMPTED = "Queued", "Preempted"
HELD_PHASES = frozenset({QUEUED, PREEMPTED})
TERMINAL_PHASES = frozenset({SUCCEEDED, FAILED, STOPPED, CANCELLED})

# status.conditions[].type
CREATED = "Created"
RUNNING_CONDITION = "Running"
FINISHED = "Finished"
STOP_REQUESTED = "StopRequested"
CHECKPOINT_TARGET = "CheckpointTarget"
METRICS_AVAILABLE = "MetricsAvailable"
EPOCHS_MISSED = "EpochsMissed"
CHECKPOINT_VERIFIED = "CheckpointVerified"
ADMITTED = "Admitted"  # whether the queue lets the Job run pods now

# status.conditions[].reason (the stop's own reasons are the stop reason types of criteria.decision)
CHILDREN_CREATED = "ChildrenCreated"
INVALID_SPEC = "InvalidSpec"
ALL_RANKS_READY = "AllRanksReady"
JOB_COMPLETE = "JobComplete"
JOB_FAILED = "JobFailed"
CLAIM_FOUND, CLAIM_NOT_FOUND = "ClaimFound", "ClaimNotFound"
SCRAPED, SCRAPE_FAILED = "Scraped", "ScrapeFailed"
EPOCHS_READ, EPOCHS_UNREAD = "EpochsRead", "EpochsUnread"
OBJECT_VERIFIED, OBJECT_MISSING, OBJECT_SIZE_MISMATCH = "ObjectVerified", "ObjectMissing", "SizeMismatch"
OBJECT_OUTSIDE_TARGET, OBJECT_UNCHECKED = "OutsideTarget", "Unchecked"
CHECKPOINT_SAVED = "CheckpointSaved"
NO_CHECKPOINT = "NoCheckpoint"
GRACE_PERIOD_EXPIRED = "GracePeriodExpired"
TRAINER_FAILED = "TrainerFailed"
TARGET_FOUND, TARGET_NOT_FOUND = "TargetFound", "TargetNotFound"  # Created, for a spec.targetRef
RESTARTING = "Restarting"  # a rank failed: the job restarts from its last checkpoint (spec.failurePolicy)
RESUMED = "Resumed"  # a Stopped job started again from its checkpoint (stopline.dev/resume); also its Event

# status.stopPath: how a stop reached the trainers
STOP_PATH_ENDPOINT = "StopEndpoint"  # POST /stop with the job's token: every rank stopped at one step
STOP_PATH_SUSPEND = "Suspend"  # the workload's own suspend: the kubelet sent SIGTERM to every pod
STOP_PATH_KILLED = "Killed"  # its pods were deleted without grace (a cancel, or gracePeriod ran out)

# Event reasons that are not a phase or a condition reason
WOULD_STOP = "WouldStop"
STOP_NOT_ACKNOWLEDGED = "StopNotAcknowledged"
RESUME_REFUSED = "ResumeRefused"  # a stopline.dev/resume that cannot be carried out, with why and the fix

# metadata.labels: the ones stopline sets on children and reads on TrainingJobs, and the Job controller's
JOB_LABEL = "stopline.dev/job"  # on the Job, its pods and the Service: the TrainingJob's name
STUDY_LABEL = "stopline.dev/study"  # on a TrainingJob: the sweep it belongs to, for the cohort rule
SWEEP_LABEL = "stopline.dev/sweep"  # on a member TrainingJob: the spec.targetSelector one that made it
SCHEDULE_LABEL = (
    "stopline.dev/schedule"  # on a TrainingJob: its schedule, for the resume rule's budget groups
)
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"  # set by the Job controller: the rank
# Kueue's labels: set on a TrainingJob, copied to its Job, which is then created suspended for Kueue to admit
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
QUEUE_LABELS = (QUEUE_LABEL, PRIORITY_CLASS_LABEL)

# the container of the pod template that runs the trainer
TRAINER_CONTAINER = "trainer"

# metadata.annotations a person sets (the operator never writes them)
STOP_ANNOTATION = "stopline.dev/stop"  # graceful stop, weights kept; the value is the reason
CANCEL_ANNOTATION = "stopline.dev/cancel"  # stop now, nothing saved
RESUME_ANNOTATION = "stopline.dev/resume"  # a Stopped job runs on from its checkpoint; the value is why

# stop reason types a person asked for: dryRun does not apply to them
MANUAL = "Manual"
CANCELLED_REASON = "Cancelled"
MANUAL_TYPES = frozenset({MANUAL, CANCELLED_REASON})
# stop reason types of the sweep criteria: a stop the study's resume rule (spec.resumePolicy) may take back
SWEEP_STOP_TYPES = frozenset({"Cohort", "Rungs", "Forecast"})
# status.resumes[].reason: who resumed a stopped job (MANUAL: the stopline.dev/resume annotation)
RESUME_RULE = "ResumeRule"


def find_condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    """The condition of that type in a status.conditions list, or None (a list with junk is not an error)."""
    for condition in conditions or ():
        if isinstance(condition, Mapping) and condition.get("type") == type_:
            return condition
    return None
