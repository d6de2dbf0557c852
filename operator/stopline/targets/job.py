"""A batch/v1 Job a user (or an HPO tool) made: its pods are the trainers, rank by completion index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stopline.kube import Kube
from stopline.targets.base import Adapter, Manifest


class JobAdapter(Adapter):
    api_version = "batch/v1"
    kind = "Job"
    plural = "jobs"

    async def jobs(self, kube: Kube, namespace: str, target: Manifest) -> list[Manifest]:
        return [target]

    def started(self, target: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]]) -> str | None:
        start = (target.get("status") or {}).get("startTime")
        return start if isinstance(start, str) else None


ADAPTER = JobAdapter()
