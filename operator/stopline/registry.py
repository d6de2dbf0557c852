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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stopline.api import SpecError, TargetRef, TrainingJobSpec, parse_spec
from stopline.criteria.observation import CohortCurve
from stopline.lifecycle import queue_holds, seconds, stop_request
from stopline.pointer import checkpoint_status
from stopline.vocabulary import (
    CANCEL_ANNOTATION,
    COMPLETION_INDEX_LABEL,
    JOB_LABEL,
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
    container: str = TRAINER_CONTAINER  # the container that runs the trainer (its log, its exit)

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
    ranks: int = 1  # pods that run the trainer (spec.parallelism)
    kind: str = "Job"  # a target of another kind (stopline.targets) is seen as a Job through its summary
    api_version: str = "batch/v1"
    pod_owners: frozenset[str] = frozenset()  # uids whose pods are its trainers: its Jobs'; empty: its own

    def owns(self, pod: PodView) -> bool:
        """The pod is one of its trainers: its controller is this Job (or one of the target's Jobs)."""
        return pod.controller_uid in (self.pod_owners or {self.uid})

    def admitted(self, pod: PodView) -> bool:
        """The pod is one of this Job's current admission: it was created since the Job last started.
        The Job controller stamps startTime before it creates that admission's pods (both to the second)."""
        return self.started is None or pod.created is None or pod.created >= self.started

    def describe(self) -> str:
        return f"{self.kind} {self.name}"

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
    parallelism = spec.get("parallelism")
    return JobView(
        ranks=parallelism if isinstance(parallelism, int) and parallelism > 0 else 1,
        name=str(metadata.get("name")),
        uid=str(metadata.get("uid") or ""),
        controller_uid=controller_uid(metadata),
        suspended=spec.get("suspend") is True,
        finished=finished,
        queued=queue_holds(job),
        started=seconds((job.get("status") or {}).get("startTime")),
    )


_RANK = re.compile(r"[0-9]{1,6}")  # the Job controller's completion index: ASCII digits (isdigit takes "²")


def trainer_container(pod: Mapping[str, Any]) -> str:
    """The container that runs the trainer: the one named `trainer`, else the first (as the templated Job's
    contract goes to it); sidecars are never it."""
    names = [
        str(container.get("name"))
        for container in (pod.get("spec") or {}).get("containers") or []
        if isinstance(container, Mapping)
    ]
    return TRAINER_CONTAINER if TRAINER_CONTAINER in names or not names else names[0]


def pod_view(pod: Mapping[str, Any], deleted: bool = False, rank: int | None = None) -> PodView:
    """`rank`: as the pod's workload kind ranks it (stopline.targets); else its Job's completion index."""
    metadata, status = pod["metadata"], pod.get("status") or {}
    index = (metadata.get("labels") or {}).get(COMPLETION_INDEX_LABEL) or (
        metadata.get("annotations") or {}
    ).get(COMPLETION_INDEX_LABEL)
    if rank is None:
        rank = int(index) if index and _RANK.fullmatch(str(index)) else 0
    exit_code, message = None, ""
    trainer = trainer_container(pod)
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if container.get("name") == trainer and terminated:
            code = terminated.get("exitCode", 0)
            exit_code = code if isinstance(code, int) else 1
            message = str(terminated.get("message") or "")
    return PodView(
        name=metadata["name"],
        rank=rank,
        ip=status.get("podIP"),
        phase=status.get("phase") or "Pending",
        uid=str(metadata.get("uid") or ""),
        controller_uid=controller_uid(metadata),
        deleted=deleted,
        terminating=bool(metadata.get("deletionTimestamp")),
        exit_code=exit_code,
        message=message,
        created=seconds(metadata.get("creationTimestamp")),
        container=trainer,
    )


@dataclass
class Tracked:
    """One TrainingJob as last seen, with the pods and Job filed under its name (trusted or not)."""

    training_job: Mapping[str, Any]
    spec: TrainingJobSpec | None
    filed_pods: dict[str, PodView] = field(default_factory=dict)
    filed_job: JobView | None = None
    _peer: CohortCurve | None = field(default=None, repr=False)  # as its study's peers see it; per body
    # a target's pods as its kind ranks them (stopline.targets), for pods its watch events deliver
    ranked: Callable[[Mapping[str, Any], bool], PodView] | None = field(default=None, repr=False)

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
    def target(self) -> TargetRef | None:
        """The existing workload it governs (spec.targetRef); None for one that runs its own Job."""
        return self.spec.target if self.spec is not None else None

    @property
    def job(self) -> JobView | None:
        """Its batch Job: the one of its name that it controls; for a target, the workload it names (as a
        Job sees it); None when none such was seen."""
        job, target = self.filed_job, self.target
        if job is None:
            return None
        if target is not None:
            return (
                job
                if (job.kind, job.api_version, job.name) == (target.kind, target.api_version, target.name)
                else None
            )
        return job if job.controller_uid == self.uid else None

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
        """A person set stopline.dev/cancel, or a stopline.dev/stop no resume has answered yet."""
        return stop_request(self.training_job) is not None or CANCEL_ANNOTATION in self.annotations

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
        return job is None or (job.owns(pod) and job.admitted(pod))

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
        self._owner_of: dict[str, Key] = {}  # uid of a target's Job (or pod-making target) -> its TrainingJob

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
        if tracked is not None and tracked.filed_job is not None:
            for uid in tracked.filed_job.pod_owners:
                self._owner_of.pop(uid, None)

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
        if tracked is not None and tracked.target is None:  # a target's view comes from file_target only
            tracked.file_job(view)
            tracked.drop_earlier_admissions()
        return key

    def file_target(
        self,
        tracked: Tracked,
        view: JobView | None,
        pods: Iterable[PodView],
        ranked: Callable[[Mapping[str, Any], bool], PodView] | None,
    ) -> None:
        """A target as just read from the apiserver: its Job view and its pods. A filed pod not listed
        any more is gone (its last state kept, as a watch's DELETED event would leave it); later events of
        pods whose controller is one of its Jobs are filed under it (`observe_target_pod`)."""
        before = tracked.filed_job.pod_owners if tracked.filed_job is not None else frozenset()
        tracked.file_job(view)
        tracked.ranked = ranked
        owners = view.pod_owners if view is not None else frozenset()
        for uid in before - owners:
            self._owner_of.pop(uid, None)
        for uid in owners:
            self._owner_of[uid] = tracked.key
        listed = {pod.name: pod for pod in pods}
        for name, pod in list(tracked.filed_pods.items()):
            if name not in listed and not pod.deleted:
                tracked.filed_pods[name] = replace(pod, deleted=True)
        tracked.filed_pods.update(listed)
        tracked.drop_earlier_admissions()
        _bound_deleted(tracked.filed_pods)

    def observe_target_pod(self, pod: Mapping[str, Any], deleted: bool = False) -> Key | None:
        """File a pod whose controller is one of a target's Jobs (or the target); None: nobody's."""
        key = self._owner_of.get(controller_uid(pod["metadata"]) or "")
        tracked = self._jobs.get(key) if key is not None else None
        if tracked is None or tracked.ranked is None:
            return None
        view = tracked.ranked(pod, deleted)
        if deleted and not tracked.keeps(view):
            tracked.filed_pods.pop(view.name, None)
            return tracked.key
        tracked.filed_pods[view.name] = view
        if deleted:
            _bound_deleted(tracked.filed_pods)
        return tracked.key

    def study_members(self, namespace: str, study: str) -> list[Tracked]:
        """The TrainingJobs labelled with `study` in `namespace`, as last seen."""
        return list(self._studies.get((namespace, study), {}).values())

    def finished(self, namespace: str, studies: Iterable[str]) -> dict[str, tuple[CohortCurve, ...]]:
        """The jobs of each study in `namespace` that ran to their end, as curves: earlier sweeps."""
        found = {}
        for study in studies:
            peers = (member.as_peer() for member in self._studies.get((namespace, study), {}).values())
            found[study] = tuple(peer for peer in peers if peer is not None and peer.completed)
        return found

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
    return sorted((pod for pod in pods if job.owns(pod) and job.admitted(pod)), key=_by_rank)


def saved_checkpoint(
    pods: Iterable[PodView], since: float | None = None
) -> tuple[PodView, dict[str, Any]] | None:
    """Rank 0's pod that exited 0 with a checkpoint pointer, and the pointer as status.checkpoint; of two
    such pods (a rank restarted), the newer checkpoint by step, then by savedAt.

    `since` (a stop's start): a pointer saved since then counts whatever the exit code. torchrun, on the
    SIGTERM a suspend sends, exits 1 once its workers have saved and exited 0; the weights are whole (the
    pointer is written after the atomic save)."""
    saved = [
        (pod, checkpoint)
        for pod in pods
        if pod.rank == 0
        and pod.exit_code is not None
        and (checkpoint := checkpoint_status(pod.message))
        and (pod.exit_code == 0 or _saved_since(checkpoint, since))
    ]
    return max(saved, key=lambda found: _position(found[1]), default=None)


def _saved_since(checkpoint: Mapping[str, Any], since: float | None) -> bool:
    saved_at = seconds(checkpoint.get("savedAt"))
    return since is not None and saved_at is not None and saved_at >= since


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
