"""The one status writer: every write to a TrainingJob's status goes through `StatusWriter.write`.

A caller says what it wants as a `StatusChange` composed from the body it is given (merge-patched fields,
conditions to set, a phase); the writer merges the conditions into that body's list, skips the write when
nothing would change, and patches. status.conditions is a list a merge patch replaces whole, so a change
that touches the phase or the conditions is sent with the body's resourceVersion: when another writer got
there first (409), the writer reads the TrainingJob again and composes again, so no condition set by
someone else is lost and a phase moves once, however many visits, events or operators decide it.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stopline import monitoring
from stopline.api import rfc3339
from stopline.kube import Conflict, Kube
from stopline.lifecycle import StatusChange, merge_conditions
from stopline.vocabulary import PENDING, find_condition

MAX_ATTEMPTS = 20  # conflicts in a row before giving up until the next visit or event


Compose = Callable[[Mapping[str, Any]], StatusChange | None]


def patch_for(current: Mapping[str, Any], change: StatusChange, now: str) -> dict[str, Any] | None:
    """The merge patch that applies `change` to the status `current`, or None when it changes nothing.
    Conditions are merged into the current list (a merge patch replaces the list whole)."""
    patch = dict(change.fields)
    if change.phase is not None:
        patch["phase"] = change.phase
    if change.conditions:
        existing = [c for c in current.get("conditions") or [] if isinstance(c, Mapping) and "type" in c]
        patch["conditions"] = merge_conditions(existing, change.conditions, now)
    if all(current.get(key) == value for key, value in patch.items()):
        return None
    return patch


@dataclass(frozen=True)
class Written:
    """A status write that happened: the TrainingJob as composed on, the patch sent, and the object after."""

    training_job: Mapping[str, Any]
    patched: Mapping[str, Any]
    after: Mapping[str, Any]

    @property
    def phase_before(self) -> str:
        return str((self.training_job.get("status") or {}).get("phase") or PENDING)

    @property
    def phase(self) -> str:
        return str(self.patched.get("phase") or self.phase_before)

    def condition(self, type_: str) -> Mapping[str, Any]:
        return find_condition(self.patched.get("conditions"), type_) or {}


class StatusWriter:
    """Writes status patches, one TrainingJob at a time within this process, compare-and-set across them."""

    def __init__(self, kube: Kube, clock: Callable[[], float] = time.time) -> None:
        self.kube, self.clock = kube, clock
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def now(self) -> str:
        return rfc3339(self.clock())

    async def write(
        self, namespace: str, name: str, compose: Compose, seen: Mapping[str, Any] | None = None
    ) -> Written | None:
        """Compose on `seen` (else a fresh read) and patch; None when there was nothing to write.

        On a conflict the TrainingJob is read again and composed again: `compose` decides on the current
        body every time, so a change that is no longer allowed (the phase moved) is simply not made.
        """
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())  # lives while someone holds it
        async with lock:
            body = seen
            for _ in range(MAX_ATTEMPTS):
                if body is None:
                    body = await self.kube.read_training_job(namespace, name)
                    if body is None:
                        return None
                change = compose(body)
                if change is None:
                    return None
                patch = patch_for(body.get("status") or {}, change, self.now())
                if patch is None:
                    return None
                version = body["metadata"].get("resourceVersion") if change.guarded else None
                try:
                    after = await self.kube.patch_training_job_status(namespace, name, patch, version)
                except Conflict:
                    body = None  # changed since: read it and compose again
                    continue
                monitoring.STATUS_WRITES.inc()
                return Written(body, patch, after)
        raise Conflict(409, "Conflict", f"status of {namespace}/{name}: {MAX_ATTEMPTS} conflicts".encode())
