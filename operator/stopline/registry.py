"""The operator's in-memory index of TrainingJobs and their trainer pods, fed by kopf's watch events.

The supervisor walks it every tick and the cohort rule reads the other jobs of a study from it, so
neither costs a list call: the watch already delivers every change. Pure data, no I/O. A pod that is
gone is kept (marked deleted) until its TrainingJob goes, because its termination message is how a
stop is confirmed and the watch may deliver the deletion before anyone has read it.

Identity is by controller ownerReference and uid, never by label or name alone: a TrainingJob's Job is
the Job of its name whose controller is that TrainingJob's uid, and its trainer pods are the pods whose
controller is that Job's uid. Labels only say where to file an object; a pod or Job that merely carries
the label (an impostor, a decoy) is filed but never trusted.

Pods are filed by admission: a queue (Kueue) that preempts a Job and admits it again keeps the Job and its
uid, and the Job controller starts new pods. Only the pods of the current admission (created since the
Job's status.startTime, which the Job controller resets at every unsuspend) are the job's trainers; a pod
of an earlier admission, its checkpoint pointer included, never speaks for a stop of a later one. A
deleted pod is kept only while it can still say something: trusted, of the current admission, and at most
MAX_DELETED_PODS of them per job, so pods churned under a job's name cannot grow the operator's memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stopline.api import SpecError, TrainingJobSpec, parse_spec
from stopline.criteria.observation import CohortCurve
from stopline.lifecycle import queue_holds, seconds
from stopline.pointer import checkpoint_status
from stopline.vocabulary import (
    CANCEL_ANNOTATION,
    COMPLETION_INDEX_LABEL,
    JOB_LABEL,
    STOP_ANNOTATION,
    STUDY_LABEL,
    SUCCEEDED,
    TERMINAL_PHASES,
    TRAINER_CONTAINER,
)

Key = tuple[str, str]  # (namespace, name)
MAX_DELETED_PODS = 64  # deleted pods kept per job: a multi-rank stop reads each rank's exit once


@dataclass(frozen=True)
class PodView:
    """What the stop protocol needs of one trainer pod: where to reach it and how it ended."""

    name: str
    rank: int
    ip: str | None
    phase: str
    uid: str = ""
    controller_uid: str | None = None  # the uid of the object its controller ownerReference names
    deleted: bool = False  # gone from the API
    terminating: bool = False  # marked for deletion: SIGTERM sent, the trainer may still be saving
    exit_code: int | None = None
    message: str = ""
    created: float | None = None  # metadata.creationTimestamp: which admission of its Job it belongs to

    @property
    def active(self) -> bool:
        """Still running or about to: a pod that exited or is gone no longer trains. A terminating pod is
        active until it reports its exit: on SIGTERM the trainer saves, and its manifest comes last."""
        return not self.deleted and self.exit_code is None and self.phase in ("Pending", "Running")

    @property
    def reachable(self) -> bool:
        return self.active and not self.terminating and self.phase == "Running" and bool(self.ip)


def controller_uid(metadata: Mapping[str, Any]) -> str | None:
    """The uid in an object's controller ownerReference (the one with controller: true), if it has one."""
    for reference in metadata.get("ownerReferences") or []:
        if isinstance(reference, Mapping) and reference.get("controller") is True:
            uid = reference.get("uid")
            return str(uid) if uid else None
    return None


@dataclass(frozen=True)
class JobView:
    """What the stop protocol needs of the batch Job: which object it is, and whether it can run pods."""

    name: str
    uid: str
    controller_uid: str | None
    suspended: bool
    finished: bool  # Complete or Failed: it starts no pod again
    queued: bool = False  # a queue (Kueue) admits it: it may unsuspend it again
    started: float | None = None  # status.startTime of its current admission (kept while it is suspended)

    def admitted(self, pod: PodView) -> bool:
        """The pod is one of this Job's current admission: it was created since the Job last started.
        The Job controller stamps startTime before it creates that admission's pods (both to the second)."""
        return self.started is None or pod.created is None or pod.created >= self.started

    def after(self, earlier: JobView | None) -> JobView:
        """This view, still knowing when the current admission started: a suspended Job has no startTime
        (the Job controller clears it), but the pods it just stopped are that admission's."""
        if self.started is None and earlier is not None and earlier.uid == self.uid:
            return replace(self, started=earlier.started)
        return self


def job_view(job: Mapping[str, Any]) -> JobView:
    metadata, spec = job["metadata"], job.get("spec") or {}
    conditions = (job.get("status") or {}).get("conditions") or []
    finished = any(
        isinstance(c, Mapping) and c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in conditions
    )
    return JobView(
        name=str(metadata.get("name")),
        uid=str(metadata.get("uid") or ""),
        controller_uid=controller_uid(metadata),
        suspended=spec.get("suspend") is True,
        finished=finished,
        queued=queue_holds(job),
        started=seconds((job.get("status") or {}).get("startTime")),
    )


_RANK = re.compile(r"[0-9]{1,6}")  # the Job controller's completion index: ASCII digits (isdigit takes "²")


def pod_view(pod: Mapping[str, Any], deleted: bool = False) -> PodView:
    metadata, status = pod["metadata"], pod.get("status") or {}
    index = (metadata.get("labels") or {}).get(COMPLETION_INDEX_LABEL) or (
        metadata.get("annotations") or {}
    ).get(COMPLETION_INDEX_LABEL)
    exit_code, message = None, ""
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if container.get("name") == TRAINER_CONTAINER and terminated:
            code = terminated.get("exitCode", 0)
            exit_code = code if isinstance(code, int) else 1
            message = str(terminated.get("message") or "")
    return PodView(
        name=metadata["name"],
        rank=int(index) if index and _RANK.fullmatch(str(index)) else 0,
        ip=status.get("podIP"),
        phase=status.get("phase") or "Pending",
        uid=str(metadata.get("uid") or ""),
        controller_uid=controller_uid(metadata),
        deleted=deleted,
        terminating=bool(metadata.get("deletionTimestamp")),
        exit_code=exit_code,
        message=message,
        created=seconds(metadata.get("creationTimestamp")),
    )


@dataclass
class Tracked:
    """One TrainingJob as last seen, with the pods and Job filed under its name (trusted or not)."""

    training_job: Mapping[str, Any]
    spec: TrainingJobSpec | None
    filed_pods: dict[str, PodView] = field(default_factory=dict)
    filed_job: JobView | None = None
    _peer: CohortCurve | None = field(default=None, repr=False)  # as its study's peers see it; per body

    def observe(self, training_job: Mapping[str, Any]) -> None:
        """Take a newer body of the same object."""
        self.training_job, self._peer = training_job, None

    @property
    def key(self) -> Key:
        metadata = self.training_job["metadata"]
        return metadata["namespace"], metadata["name"]

    @property
    def uid(self) -> str:
        return str(self.training_job["metadata"].get("uid") or "")

    @property
    def job(self) -> JobView | None:
        """Its batch Job: the one of its name that it controls; None when none such was seen."""
        job = self.filed_job
        return job if job is not None and job.controller_uid == self.uid else None

    @property
    def pods(self) -> list[PodView]:
        """Its trainer pods: those of its Job's current admission, by rank; none while its Job is unknown."""
        job = self.job
        return trainer_pods(self.filed_pods.values(), job) if job is not None else []

    def file_job(self, view: JobView | None) -> None:
        """Take a newer view of its Job, remembering when the current admission started."""
        self.filed_job = view.after(self.filed_job) if view is not None else None

    @property
    def status(self) -> Mapping[str, Any]:
        return self.training_job.get("status") or {}

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")

    @property
    def annotations(self) -> Mapping[str, str]:
        return self.training_job["metadata"].get("annotations") or {}

    @property
    def asked_to_stop(self) -> bool:
        """A person set stopline.dev/stop or stopline.dev/cancel."""
        return STOP_ANNOTATION in self.annotations or CANCEL_ANNOTATION in self.annotations

    @property
    def study(self) -> str | None:
        return (self.training_job["metadata"].get("labels") or {}).get(STUDY_LABEL)

    def as_peer(self) -> CohortCurve | None:
        """This job as a curve of its objective (status.curve), for the cohort rule of its study's other
        jobs. Built once per body, not once per peer's visit: a study of 50 reads it 49 times an interval."""
        if self.spec is None:
            return None
        if self._peer is None:
            curve = self.status.get("curve") or []
            values = {epoch: float(v) for epoch, v in enumerate(curve, start=1) if isinstance(v, int | float)}
            stopped = self.phase in TERMINAL_PHASES and self.phase != SUCCEEDED
            completed = self.phase == SUCCEEDED
            self._peer = CohortCurve(
                self.key[1], self.spec.objective.metric, values, stopped=stopped, completed=completed
            )
        return self._peer

    def keeps(self, pod: PodView) -> bool:
        """Whether a deleted pod stays filed: its exit may conclude a stop. One its Job does not control,
        or one of an earlier admission, never will; while the Job is unknown, it is kept (bounded)."""
        job = self.job
        return job is None or (pod.controller_uid == job.uid and job.admitted(pod))

    def drop_earlier_admissions(self) -> None:
        """Forget deleted pods that are no longer kept (their Job was admitted again, or is another one)."""
        for name in [name for name, pod in self.filed_pods.items() if pod.deleted and not self.keeps(pod)]:
            del self.filed_pods[name]

    def rank_zero(self) -> PodView | None:
        """The live pod of rank 0, whose /metrics the operator reads (every rank reports the same step)."""
        candidates = [pod for pod in self.pods if pod.rank == 0 and pod.reachable]
        return candidates[0] if candidates else None


class Registry:
    def __init__(self) -> None:
        self._jobs: dict[Key, Tracked] = {}
        self._pods: dict[Key, dict[str, PodView]] = {}
        self._job_of: dict[Key, JobView] = {}
        self._studies: dict[Key, dict[Key, Tracked]] = {}  # (namespace, study) -> its jobs

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self._jobs.values()))

    def get(self, key: Key) -> Tracked | None:
        return self._jobs.get(key)

    def observe_training_job(self, training_job: Mapping[str, Any]) -> Tracked:
        """Record the latest body; the spec is parsed again only when its generation moved."""
        metadata = training_job["metadata"]
        key = (metadata["namespace"], metadata["name"])
        tracked = self._jobs.get(key)
        if tracked is None or tracked.training_job["metadata"].get("uid") != metadata.get("uid"):
            if tracked is not None:  # deleted and made again under the same name
                self._leave_study(tracked)
            tracked = Tracked(training_job, _spec(training_job), self._pods.setdefault(key, {}))
            tracked.filed_job = self._job_of.get(key)
            self._jobs[key] = tracked
        elif tracked.training_job["metadata"].get("generation") != metadata.get("generation"):
            tracked.spec = _spec(training_job)
        if tracked.study != (metadata.get("labels") or {}).get(STUDY_LABEL):
            self._leave_study(tracked)
        tracked.observe(training_job)
        if tracked.study is not None:
            self._studies.setdefault((key[0], tracked.study), {})[key] = tracked
        return tracked

    def forget_training_job(self, namespace: str, name: str) -> None:
        tracked = self._jobs.pop((namespace, name), None)
        if tracked is not None:
            self._leave_study(tracked)
        self._pods.pop((namespace, name), None)
        self._job_of.pop((namespace, name), None)

    def _leave_study(self, tracked: Tracked) -> None:
        if tracked.study is None:
            return
        study = (tracked.key[0], tracked.study)
        members = self._studies.get(study, {})
        members.pop(tracked.key, None)
        if not members:
            self._studies.pop(study, None)

    def observe_pod(self, pod: Mapping[str, Any], deleted: bool = False) -> Key | None:
        """File a pod under the TrainingJob its stopline.dev/job label names; None: it names none."""
        job = (pod["metadata"].get("labels") or {}).get(JOB_LABEL)
        if not job or not isinstance(job, str):
            return None
        key = (pod["metadata"]["namespace"], job)
        name = pod["metadata"]["name"]
        view = pod_view(pod, deleted)
        tracked = self._jobs.get(key)
        if deleted and not (tracked is not None and tracked.keeps(view)):
            filed = self._pods.get(key, {})  # nobody will read its termination message: memory stays
            filed.pop(name, None)  # bounded by the pods that exist, whatever labels they carry
            if not filed:
                self._pods.pop(key, None)
            return key
        filed = self._pods.setdefault(key, {})
        filed[name] = view
        if deleted:
            _bound_deleted(filed)
        return key

    def observe_job(self, job: Mapping[str, Any], deleted: bool = False) -> Key:
        """File a batch Job under the TrainingJob of its name; a deleted one is forgotten."""
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        view = None if deleted else job_view(job).after(self._job_of.get(key))
        if view is None:
            self._job_of.pop(key, None)
        else:
            self._job_of[key] = view
        tracked = self._jobs.get(key)
        if tracked is not None:
            tracked.file_job(view)
            tracked.drop_earlier_admissions()
        return key

    def cohort(self, tracked: Tracked, study: str | None = None) -> tuple[CohortCurve, ...]:
        """The other jobs of the study (`study`, else the job's stopline.dev/study label) in its namespace,
        as curves of their objective (status.curve); a study's members are the jobs labelled with it."""
        study = study or tracked.study
        if study is None:
            return ()
        members = self._studies.get((tracked.key[0], study), {})
        peers = (other.as_peer() for key, other in members.items() if key != tracked.key)
        return tuple(peer for peer in peers if peer is not None)


def _by_rank(pod: PodView) -> tuple[int, str]:
    return pod.rank, pod.name


def trainer_pods(pods: Iterable[PodView], job: JobView) -> list[PodView]:
    """The pods of the Job's current admission that it controls, by rank: a pod that only carries the
    label is not one, and neither is one a queue's preemption ended before the Job was admitted again."""
    return sorted((pod for pod in pods if pod.controller_uid == job.uid and job.admitted(pod)), key=_by_rank)


def saved_checkpoint(pods: Iterable[PodView]) -> tuple[PodView, dict[str, Any]] | None:
    """Rank 0's pod that exited 0 with a checkpoint pointer, and the pointer as status.checkpoint; of two
    such pods (a rank restarted), the newer checkpoint by step, then by savedAt."""
    saved = [
        (pod, checkpoint)
        for pod in pods
        if pod.rank == 0 and pod.exit_code == 0 and (checkpoint := checkpoint_status(pod.message))
    ]
    return max(saved, key=lambda found: _position(found[1]), default=None)


def _position(checkpoint: Mapping[str, Any]) -> tuple[int, str]:
    return checkpoint["step"], str(checkpoint.get("savedAt") or "")


def _bound_deleted(filed: dict[str, PodView]) -> None:
    """At most MAX_DELETED_PODS deleted pods, the oldest filed going first."""
    deleted = [name for name, pod in filed.items() if pod.deleted]
    for name in deleted[: max(len(deleted) - MAX_DELETED_PODS, 0)]:
        del filed[name]


def _spec(training_job: Mapping[str, Any]) -> TrainingJobSpec | None:
    try:
        return parse_spec(training_job.get("spec"))
    except SpecError:
        return None
