"""A Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org): the trainer makes a JobSet of the TrainJob's
name that it controls, whose Jobs' pods are the trainers (torchrun in each, one pod per node); suspended
by the TrainJob's spec.suspend, which the trainer passes down to the JobSet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stopline.kube import Kube
from stopline.registry import controller_uid
from stopline.targets.base import Adapter, Manifest, _count, _mapping
from stopline.targets.jobset import expected_pods, jobs_of

JOBSET_API, JOBSETS = "jobset.x-k8s.io/v1alpha2", "jobsets"


class TrainJobAdapter(Adapter):
    api_version = "trainer.kubeflow.org/v1alpha1"
    kind = "TrainJob"
    plural = "trainjobs"

    async def jobs(self, kube: Kube, namespace: str, target: Manifest) -> list[Manifest]:
        metadata = target["metadata"]
        jobset = await kube.read_object(JOBSET_API, JOBSETS, namespace, str(metadata["name"]))
        if jobset is None or controller_uid(jobset["metadata"]) != metadata.get("uid"):
            return []
        return await jobs_of(kube, namespace, jobset)

    def ranks(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> int:
        nodes = _mapping(_mapping(target.get("spec")).get("trainer")).get("numNodes")
        return _count(nodes, 0) or super().ranks(target, jobs) or expected_pods({})


ADAPTER = TrainJobAdapter()
