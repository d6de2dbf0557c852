"""A JobSet (jobset.x-k8s.io): its replicated Jobs' pods are the trainers; rank = the Job's global index
times its parallelism plus the pod's completion index; suspended by spec.suspend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stopline.kube import Kube
from stopline.registry import controller_uid
from stopline.targets.base import Adapter, Manifest, _count, _mapping

JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on its Jobs and their pods


async def jobs_of(kube: Kube, namespace: str, jobset: Mapping[str, Any]) -> list[Manifest]:
    """The Jobs the JobSet controls (by its uid), of those labelled with its name."""
    metadata = jobset["metadata"]
    listed = await kube.list_objects("batch/v1", "jobs", namespace, f"{JOBSET_NAME_LABEL}={metadata['name']}")
    return [job for job in listed if controller_uid(job["metadata"]) == metadata.get("uid")]


def expected_pods(jobset: Mapping[str, Any]) -> int:
    """replicas x parallelism of each replicated Job."""
    total = 0
    for replicated in _mapping(jobset.get("spec")).get("replicatedJobs") or []:
        job_spec = _mapping(_mapping(_mapping(replicated).get("template")).get("spec"))
        total += _count(_mapping(replicated).get("replicas")) * _count(job_spec.get("parallelism"))
    return total


class JobSetAdapter(Adapter):
    api_version = "jobset.x-k8s.io/v1alpha2"
    kind = "JobSet"
    plural = "jobsets"
    complete_type = "Completed"

    async def jobs(self, kube: Kube, namespace: str, target: Manifest) -> list[Manifest]:
        return await jobs_of(kube, namespace, target)

    def ranks(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> int:
        return expected_pods(target) or super().ranks(target, jobs)


ADAPTER = JobSetAdapter()
