"""A training-operator PyTorchJob (kubeflow.org/v1): it makes its pods itself (no Job); rank 0 is the
Master, Worker i is rank i + 1 (i without a Master); suspended by spec.runPolicy.suspend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stopline.kube import Kube
from stopline.registry import controller_uid
from stopline.targets.base import Adapter, Manifest, _count, _index, _mapping

JOB_NAME_LABEL = "training.kubeflow.org/job-name"
REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"


def _replicas(target: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(_mapping(target.get("spec")).get("pytorchReplicaSpecs"))


class PyTorchJobAdapter(Adapter):
    api_version = "kubeflow.org/v1"
    kind = "PyTorchJob"
    plural = "pytorchjobs"
    suspend_path = "/spec/runPolicy/suspend"
    complete_type = "Succeeded"

    async def pods(
        self, kube: Kube, namespace: str, target: Manifest, jobs: Sequence[Manifest]
    ) -> list[Manifest]:
        metadata = target["metadata"]
        listed = await kube.list_pods(namespace, f"{JOB_NAME_LABEL}={metadata['name']}")
        return [pod for pod in listed if controller_uid(pod["metadata"]) == metadata.get("uid")]

    def ranks(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> int:
        return sum(_count(_mapping(spec).get("replicas")) for spec in _replicas(target).values())

    def rank(self, pod: Mapping[str, Any], target: Mapping[str, Any], parallelism: Mapping[str, int]) -> int:
        labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
        index = _index(labels, REPLICA_INDEX_LABEL) or 0
        if str(labels.get(REPLICA_TYPE_LABEL, "")).lower() == "master":
            return 0
        return index + 1 if "Master" in _replicas(target) else index

    def started(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> str | None:
        start = _mapping(target.get("status")).get("startTime")
        return start if isinstance(start, str) else None

    def pod_owners(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> frozenset[str]:
        return frozenset({str(target["metadata"].get("uid"))})


ADAPTER = PyTorchJobAdapter()
