"""What the handlers do: create or adopt a TrainingJob's children, and keep its status in step with them.

Both steps are idempotent, so a restarted operator runs them again for every TrainingJob and ends where
it was: children that exist are adopted (never a second Job), and the status is patched only when the
decision differs from what is stored. One lock per TrainingJob serialises the status writers (the
TrainingJob's own handlers and the Job watch), so a slow writer never overwrites a newer phase.
"""

from __future__ import annotations

import asyncio
import secrets
import weakref
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from stopline import lifecycle
from stopline.api import PVCTarget, SpecError, TrainingJobSpec, parse_spec
from stopline.kube import CONFLICT, Kube, Manifest
from stopline.workload import STUDY_LABEL, Owner, build_job, build_service, build_token_secret

_status_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()


class ForeignChild(RuntimeError):
    """A child's name is taken by an object another owner controls (often: a deleted job's leftovers)."""


def owner_of(training_job: Mapping[str, Any]) -> Owner:
    metadata = training_job["metadata"]
    return Owner(
        name=metadata["name"],
        namespace=metadata["namespace"],
        uid=metadata["uid"],
        study=(metadata.get("labels") or {}).get(STUDY_LABEL),
    )


def parse(training_job: Mapping[str, Any]) -> TrainingJobSpec | SpecError:
    """The parsed spec, or the error that names the field; errors are data here, the caller reports them."""
    try:
        return parse_spec(training_job.get("spec"))
    except SpecError as error:
        return error


async def ensure_children(kube: Kube, owner: Owner, spec: TrainingJobSpec) -> None:
    """Create the token Secret, the headless Service (replicas > 1) and the Job, or adopt those that exist.

    The Job goes last: it references the Secret, and its existence means the other children exist too.
    """
    children = [build_token_secret(owner, secrets.token_urlsafe(32))]
    if spec.replicas > 1:
        children.append(build_service(owner))
    children.append(build_job(owner, spec))
    for manifest in children:
        child, _ = await kube.create_or_read(manifest)
        controllers = [ref.get("uid") for ref in child["metadata"].get("ownerReferences") or []]
        if owner.uid not in controllers:
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            raise ForeignChild(f"{kind} {name} exists and does not belong to this TrainingJob")


@dataclass(frozen=True)
class Transition:
    """A status write: the TrainingJob as read before it, the phase it had, and what was patched."""

    training_job: Manifest
    phase_before: str | None
    patched: lifecycle.Status

    @property
    def phase(self) -> str:
        return str(self.patched["phase"])

    def condition(self, type_: str) -> Mapping[str, Any]:
        return next((c for c in self.patched["conditions"] if c["type"] == type_), {})


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _lock(namespace: str, name: str) -> asyncio.Lock:
    return _status_locks.setdefault((namespace, name), asyncio.Lock())  # lives while someone holds it


async def transition(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    allowed: Collection[str],
    phase: str,
    conditions: Sequence[lifecycle.Condition],
    extra: Mapping[str, Any],
    seen: Mapping[str, Any] | None = None,
) -> Transition | None:
    """Move the phase to `phase` only from one of `allowed`; None: it was not in one.

    A compare-and-set on the resourceVersion: the phase is judged on `seen` (the body the watch last
    delivered; one request when it is current) or on a fresh read, and the patch applies only to that
    version, so a stop happens once, however many scrapes, events or operators decide it.
    """
    async with _lock(namespace, name):
        training_job = dict(seen) if seen is not None else None
        while True:
            if training_job is None:
                training_job = await kube.read_training_job(namespace, name)
            current = (training_job or {}).get("status") or {}
            before = current.get("phase") or lifecycle.PENDING
            if training_job is None or before not in allowed:
                return None
            status = {
                **extra,
                "phase": phase,
                "conditions": lifecycle.merge_conditions(
                    current.get("conditions") or [], conditions, now_rfc3339()
                ),
            }
            version = training_job["metadata"].get("resourceVersion")
            try:
                await kube.patch_training_job_status(namespace, name, status, version)
            except ApiException as error:
                if error.status != CONFLICT:
                    raise
                training_job = None  # changed since: read it and judge again
                continue
            return Transition(training_job, before, status)


async def _checkpoint_target(
    kube: Kube, training_job: Manifest, spec: TrainingJobSpec
) -> lifecycle.Condition | None:
    """While Pending: does the PVC exist? Without it the pods wait forever with no word to the user."""
    target = spec.checkpoint.target
    phase = (training_job.get("status") or {}).get("phase") or lifecycle.PENDING
    if not isinstance(target, PVCTarget) or phase != lifecycle.PENDING:
        return None
    namespace = training_job["metadata"]["namespace"]
    if await kube.read_claim(namespace, target.claim_name) is not None:
        return lifecycle.Condition(
            lifecycle.CHECKPOINT_TARGET, True, "ClaimFound", f"PVC {target.claim_name} exists"
        )
    message = (
        f"spec.checkpoint.pvc.claimName: PersistentVolumeClaim {target.claim_name!r} not found in namespace "
        f"{namespace}; the pods wait for it: create it or fix the name"
    )
    return lifecycle.Condition(lifecycle.CHECKPOINT_TARGET, False, "ClaimNotFound", message)


async def sync_status(
    kube: Kube, namespace: str, name: str, rejected: str | None = None, job: Manifest | None = None
) -> Transition | None:
    """Read the TrainingJob and its Job, decide, patch the status only if it changed (None: no write).

    `rejected` is why the apiserver refused a child; like an invalid spec, it fails the TrainingJob.
    `job`: the Job as its watch event just delivered it, so it need not be read again.
    """
    async with _lock(namespace, name):
        training_job = await kube.read_training_job(namespace, name)
        if training_job is None:
            return None
        parsed = parse(training_job)
        invalid = str(parsed) if isinstance(parsed, SpecError) else rejected
        if invalid:
            job = None
        elif job is None:
            job = await kube.read_job(namespace, name)
        target = None
        if not isinstance(parsed, SpecError) and job is not None:
            target = await _checkpoint_target(kube, training_job, parsed)
        desired = lifecycle.desired_status(
            training_job, job, now_rfc3339(), invalid_spec=invalid, checkpoint_target=target
        )
        if not lifecycle.changed(training_job.get("status") or {}, desired):
            return None
        await kube.patch_training_job_status(namespace, name, desired)
        return Transition(training_job, (training_job.get("status") or {}).get("phase"), desired)


async def announce(kube: Kube, transition: Transition | None) -> None:
    """One Event per phase change: Normal for progress, Warning with the cause for a failure."""
    if transition is None or transition.phase == transition.phase_before:
        return
    if transition.phase == lifecycle.FAILED:
        cause = transition.condition(lifecycle.FINISHED) or transition.condition(lifecycle.CREATED)
        reason, message = cause.get("reason", "Failed"), cause.get("message", "")
        await kube.post_event(transition.training_job, reason, message, warning=True)
    elif transition.phase != lifecycle.PENDING:
        message = f"TrainingJob is {transition.phase}"
        await kube.post_event(transition.training_job, transition.phase, message)
