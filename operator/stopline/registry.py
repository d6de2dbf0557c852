"""The operator's in-memory index of TrainingJobs and their trainer pods, fed by kopf's watch events.

The supervisor walks it every tick and the cohort rule reads the other jobs of a study from it, so
neither costs a list call: the watch already delivers every change. Pure data, no I/O. A pod that is
gone is kept (marked deleted) until its TrainingJob goes, because its termination message is how a
stop is confirmed and the watch may deliver the deletion before anyone has read it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from stopline.api import SpecError, TrainingJobSpec, parse_spec
from stopline.criteria.engine import CANCEL_ANNOTATION, STOP_ANNOTATION
from stopline.criteria.observation import CohortCurve
from stopline.lifecycle import TERMINAL_PHASES
from stopline.progress import JobMemory
from stopline.workload import JOB_LABEL, STUDY_LABEL, TRAINER_CONTAINER

Key = tuple[str, str]  # (namespace, name)
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class PodView:
    """What the stop protocol needs of one trainer pod: where to reach it and how it ended."""

    name: str
    rank: int
    ip: str | None
    phase: str
    deleted: bool = False  # gone from the API
    terminating: bool = False  # marked for deletion: SIGTERM sent, the trainer may still be saving
    exit_code: int | None = None
    message: str = ""

    @property
    def active(self) -> bool:
        """Still running or about to: a pod that exited or is gone no longer trains. A terminating pod is
        active until it reports its exit: on SIGTERM the trainer saves, and its manifest comes last."""
        return not self.deleted and self.exit_code is None and self.phase in ("Pending", "Running")

    @property
    def reachable(self) -> bool:
        return self.active and not self.terminating and self.phase == "Running" and bool(self.ip)


def pod_view(pod: Mapping[str, Any], deleted: bool = False) -> PodView:
    metadata, status = pod["metadata"], pod.get("status") or {}
    index = (metadata.get("labels") or {}).get(COMPLETION_INDEX) or (metadata.get("annotations") or {}).get(
        COMPLETION_INDEX
    )
    exit_code, message = None, ""
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if container.get("name") == TRAINER_CONTAINER and terminated:
            exit_code, message = int(terminated.get("exitCode", 0)), terminated.get("message") or ""
    return PodView(
        name=metadata["name"],
        rank=int(index) if index and str(index).isdigit() else 0,
        ip=status.get("podIP"),
        phase=status.get("phase") or "Pending",
        deleted=deleted,
        terminating=bool(metadata.get("deletionTimestamp")),
        exit_code=exit_code,
        message=message,
    )


@dataclass
class Tracked:
    """One TrainingJob as last seen, its pods, and what the supervisor keeps between status writes."""

    training_job: Mapping[str, Any]
    spec: TrainingJobSpec | None
    pods: dict[str, PodView] = field(default_factory=dict)
    memory: JobMemory | None = None
    token: str | None = None
    signalled: bool = False  # POST /stop sent by this operator process (a restarted one sends it again)
    next_due: float = 0.0

    @property
    def key(self) -> Key:
        metadata = self.training_job["metadata"]
        return metadata["namespace"], metadata["name"]

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

    def rank_zero(self) -> PodView | None:
        """The live pod of rank 0, whose /metrics the operator reads (every rank reports the same step)."""
        candidates = [pod for pod in self.pods.values() if pod.rank == 0 and pod.reachable]
        return candidates[0] if candidates else None


class Registry:
    def __init__(self) -> None:
        self._jobs: dict[Key, Tracked] = {}
        self._pods: dict[Key, dict[str, PodView]] = {}

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
            tracked = Tracked(training_job, _spec(training_job), self._pods.setdefault(key, {}))
            self._jobs[key] = tracked
        elif tracked.training_job["metadata"].get("generation") != metadata.get("generation"):
            tracked.spec = _spec(training_job)
        tracked.training_job = training_job
        return tracked

    def forget_training_job(self, namespace: str, name: str) -> None:
        self._jobs.pop((namespace, name), None)
        self._pods.pop((namespace, name), None)

    def observe_pod(self, pod: Mapping[str, Any], deleted: bool = False) -> Key | None:
        """Record a trainer pod under its TrainingJob's key (the stopline.dev/job label); None: not ours."""
        job = (pod["metadata"].get("labels") or {}).get(JOB_LABEL)
        if not job:
            return None
        key = (pod["metadata"]["namespace"], job)
        self._pods.setdefault(key, {})[pod["metadata"]["name"]] = pod_view(pod, deleted)
        return key

    def cohort(self, tracked: Tracked) -> tuple[CohortCurve, ...]:
        """The other jobs of the same study and namespace, as curves of their objective (status.curve)."""
        study, (namespace, name) = tracked.study, tracked.key
        if study is None:
            return ()
        curves = []
        for other in self._jobs.values():
            other_namespace, other_name = other.key
            if other_name == name or other_namespace != namespace or other.study != study or not other.spec:
                continue
            curve = other.status.get("curve") or []
            values = {epoch: float(v) for epoch, v in enumerate(curve, start=1) if isinstance(v, int | float)}
            stopped = other.phase in TERMINAL_PHASES and other.phase != "Succeeded"
            curves.append(CohortCurve(other_name, other.spec.objective.metric, values, stopped=stopped))
        return tuple(curves)


def _spec(training_job: Mapping[str, Any]) -> TrainingJobSpec | None:
    try:
        return parse_spec(training_job.get("spec"))
    except SpecError:
        return None
