"""Kueue, in one place: what stopline does for a job a queue admits, preempts and admits again.

A Job (or target) that carries the queue-name label is Kueue's to start: stopline suspends it only together
with deactivating its Workload (else Kueue unsuspends it at once), reads the Workload's own words for why it
waits, and deletes a stopped templated Job the queue still holds (else the queue admits it forever). The
phases Queued and Preempted are decided in lifecycle from the Job's suspend and these words; the
supervisor keeps a preempted trainer's checkpoint and keeps a stopped job at rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stopline import targets
from stopline.kube import Kube, Manifest
from stopline.lifecycle import queue_holds
from stopline.metrics.http import excerpt
from stopline.registry import JobView, Tracked
from stopline.vocabulary import find_condition

QUEUE_EXCERPT_CHARS = 200  # a Workload's message is Kueue's text about other jobs too: short, printable
QUEUE_WORDS = "Kueue says"


async def hold(kube: Kube, namespace: str, job: JobView) -> None:
    """Suspend the Job (or a target, by its kind's own suspend) so it starts no pod again; for one a queue
    (Kueue) admits, also deactivate its Workload, else Kueue unsuspends it and the pods start again."""
    if job.queued:  # first: Kueue then suspends the Job itself and does not undo the patch below
        await kube.deactivate_workloads(namespace, job.uid)
    adapter = targets.ADAPTERS.get((job.api_version, job.kind))
    if not job.suspended and adapter is not None:
        await targets.suspend(kube, namespace, adapter, job.name, job.uid)


async def release(kube: Kube, tracked: Tracked) -> None:
    """A stopped job's suspended Job that a queue (Kueue) holds is deleted; it has no pods. Kept, the queue
    would admit it again (and stopline suspend it again) forever; deleted, its Workload goes with it. A
    target is never deleted: it is the user's (its Workload stays deactivated)."""
    job = tracked.job
    if tracked.target is None and job is not None and job.queued and job.suspended and not job.finished:
        await kube.delete_job(*tracked.key, job.uid)


async def queue_says(kube: Kube, job: Manifest) -> str | None:
    """Why a queue holds the Job, in the words of its Kueue Workload (excerpted: Kueue's text names other
    jobs); None while the Job runs, when no queue manages it, or when no Workload says anything yet."""
    if not queue_holds(job) or (job.get("spec") or {}).get("suspend") is not True:
        return None
    for workload in await kube.list_workloads(job["metadata"]["namespace"], str(job["metadata"].get("uid"))):
        words = workload_words(workload)
        if words:
            return words
    return None


def workload_words(workload: Mapping[str, Any]) -> str | None:
    """The Workload condition that says why it does not run: evicted (preempted), else no quota reserved."""
    conditions = (workload.get("status") or {}).get("conditions")
    evicted = find_condition(conditions, "Evicted") or {}
    reserved = find_condition(conditions, "QuotaReserved") or {}
    for condition, status in ((evicted, "True"), (reserved, "False")):
        text = condition.get("message")
        if condition.get("status") == status and isinstance(text, str) and text:
            return f"{QUEUE_WORDS}: {excerpt(text, QUEUE_EXCERPT_CHARS)}"
    return None
