"""What every target kind shares: one read of the workload, its Jobs and its pods; the batch-Job-shaped
summary the lifecycle and the stop machine read; suspending it.

A target is found by its namespace, kind and name (the user named it), and everything under it by the
controller ownerReference chain from its uid down (TrainJob -> JobSet -> Jobs -> pods), never by label
alone: labels only narrow the list calls, and an object that carries them without the chain is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from stopline.kube import Kube
from stopline.lifecycle import seconds
from stopline.registry import JobView, PodView, controller_uid, job_view, pod_view
from stopline.vocabulary import COMPLETION_INDEX_LABEL

Manifest = dict[str, Any]
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"  # the Job controller's label on its pods
JOBSET_GLOBAL_INDEX = "jobset.sigs.k8s.io/job-global-index"  # JobSet's label on its Jobs' pods
_INDEX = re.compile(r"[0-9]{1,6}")


def _index(labels: Mapping[str, Any], key: str) -> int | None:
    value = labels.get(key)
    return int(value) if isinstance(value, str) and _INDEX.fullmatch(value) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: object, default: int = 1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


class Adapter:
    """One workload kind. The defaults are those of kinds that run their pods through batch Jobs."""

    api_version: ClassVar[str]
    kind: ClassVar[str]
    plural: ClassVar[str]
    suspend_path: ClassVar[str] = "/spec/suspend"  # a JSON pointer into the object
    complete_type: ClassVar[str] = "Complete"  # its condition types (status True) once it finished
    failed_type: ClassVar[str] = "Failed"

    def suspended(self, target: Mapping[str, Any]) -> bool:
        node: object = target
        for part in self.suspend_path.strip("/").split("/"):
            node = _mapping(node).get(part)
        return node is True

    async def jobs(self, kube: Kube, namespace: str, target: Manifest) -> list[Manifest]:
        """The batch Jobs whose pods are the trainers (by controller uid); none for a kind without Jobs."""
        return []

    async def pods(
        self, kube: Kube, namespace: str, target: Manifest, jobs: Sequence[Manifest]
    ) -> list[Manifest]:
        """The pods of those Jobs: listed by the Job controller's uid label, kept by controller uid."""
        uids = [str(job["metadata"].get("uid")) for job in jobs]
        if not uids:
            return []
        listed = await kube.list_pods(namespace, f"{JOB_UID_LABEL} in ({','.join(uids)})")
        return [pod for pod in listed if controller_uid(pod["metadata"]) in uids]

    def ranks(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> int:
        """How many pods run the trainer: the Jobs' parallelism."""
        return sum(_count(_mapping(job.get("spec")).get("parallelism")) for job in jobs)

    def rank(self, pod: Mapping[str, Any], target: Mapping[str, Any], parallelism: Mapping[str, int]) -> int:
        """The pod's rank: its Job's index among the workload's Jobs (JobSet's global index) times the
        Job's parallelism, plus its completion index. `parallelism`: by Job uid."""
        labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
        annotations = _mapping(_mapping(pod.get("metadata")).get("annotations"))
        index = _index(labels, COMPLETION_INDEX_LABEL) or _index(annotations, COMPLETION_INDEX_LABEL) or 0
        group = _index(labels, JOBSET_GLOBAL_INDEX) or 0
        width = parallelism.get(controller_uid(_mapping(pod.get("metadata"))) or "", 1)
        return group * width + index

    def finished(self, target: Mapping[str, Any]) -> tuple[str, str, str] | None:
        """(Complete or Failed, reason, message) once its own conditions say it finished."""
        for condition in _mapping(target.get("status")).get("conditions") or []:
            if not isinstance(condition, Mapping) or condition.get("status") != "True":
                continue
            for wanted, job_type in ((self.complete_type, "Complete"), (self.failed_type, "Failed")):
                if condition.get("type") == wanted:
                    reason = str(condition.get("reason") or f"{self.kind}{wanted}")
                    return job_type, reason, str(condition.get("message") or reason)
        return None

    def started(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> str | None:
        """When its current run started (pods created before belong to an earlier admission): the
        earliest startTime of its Jobs (each Job controller resets it at every unsuspend)."""
        times = [t for job in jobs if isinstance(t := _mapping(job.get("status")).get("startTime"), str)]
        return min(times, key=lambda text: seconds(text) or 0.0) if times else None

    def pod_owners(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> frozenset[str]:
        """The uids whose pods are the trainers: the Jobs'."""
        return frozenset(str(job["metadata"].get("uid")) for job in jobs)


@dataclass(frozen=True)
class TargetRead:
    """One read of a target, all from the apiserver at one visit: the workload, its Jobs, its pods."""

    adapter: Adapter
    target: Manifest
    jobs: tuple[Manifest, ...]
    pods: tuple[PodView, ...]

    @property
    def uid(self) -> str:
        return str(self.target["metadata"].get("uid") or "")

    @property
    def parallelism(self) -> dict[str, int]:
        return {
            str(job["metadata"].get("uid")): _count(_mapping(job.get("spec")).get("parallelism"))
            for job in self.jobs
        }

    def pod_view(self, pod: Mapping[str, Any], deleted: bool = False) -> PodView:
        """A pod of this target as the stop protocol sees it, ranked the way its kind ranks pods."""
        return pod_view(pod, deleted, rank=self.adapter.rank(pod, self.target, self.parallelism))

    def summary(self) -> Manifest:
        """The target as a batch Job would say it (suspend, parallelism, ready and succeeded pods, its end,
        the start of its current run), so the lifecycle and the stop machine read every kind one way."""
        adapter, metadata = self.adapter, self.target["metadata"]
        conditions = []
        finished = adapter.finished(self.target)
        if finished is not None:
            job_type, reason, message = finished
            conditions.append({"type": job_type, "status": "True", "reason": reason, "message": message})
        live = [pod for pod in self.pods if not pod.deleted]
        status: Manifest = {
            "conditions": conditions,
            "ready": sum(1 for pod in live if pod.reachable),
            "succeeded": sum(1 for pod in live if pod.exit_code == 0),
        }
        started = adapter.started(self.target, self.jobs)
        if started is not None:
            status["startTime"] = started
        return {
            "apiVersion": adapter.api_version,
            "kind": adapter.kind,
            "metadata": {
                "name": metadata.get("name"),
                "namespace": metadata.get("namespace"),
                "uid": metadata.get("uid"),
                "labels": dict(_mapping(metadata.get("labels"))),
            },
            "spec": {
                "suspend": adapter.suspended(self.target),
                "parallelism": max(adapter.ranks(self.target, self.jobs), 1),
            },
            "status": status,
        }

    def view(self) -> JobView:
        """The summary as the stop machine sees a Job, owning the pods of every one of its Jobs."""
        return replace(
            job_view(self.summary()),
            kind=self.adapter.kind,
            api_version=self.adapter.api_version,
            pod_owners=self.adapter.pod_owners(self.target, self.jobs),
        )


async def read(kube: Kube, namespace: str, adapter: Adapter, name: str) -> TargetRead | None:
    """The target, its Jobs and its pods as the apiserver has them now; None when the target is not there."""
    target = await kube.read_object(adapter.api_version, adapter.plural, namespace, name)
    if target is None or target.get("kind") not in (None, adapter.kind):
        return None
    jobs = await adapter.jobs(kube, namespace, target)
    listed = await adapter.pods(kube, namespace, target, jobs)
    found = TargetRead(adapter, target, tuple(jobs), ())
    return replace(found, pods=tuple(found.pod_view(pod) for pod in listed))


async def suspend(kube: Kube, namespace: str, adapter: Adapter, name: str, uid: str) -> bool:
    """The workload's own suspend: its controller stops its pods gracefully (SIGTERM to each trainer)."""
    return await kube.set_suspend(
        adapter.api_version, adapter.plural, namespace, name, uid, adapter.suspend_path, True
    )
