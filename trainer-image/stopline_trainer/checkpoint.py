"""Atomic checkpoints: weights under a unique name first, then the manifest that points at them.

Layout under the checkpoint URI: `ckpt-<job tag>-e<epoch>-s<step>-<id>.pt` (torch.save bytes),
`last.json` (the manifest of the newest save) and, with keep-best, `best.json`. A manifest is the commit
point: it is written only after its weights are durable, so a reader that starts from a manifest never
meets half a checkpoint, and a save killed midway leaves the previous manifest and its weights untouched.

The job tag (8 hex digits of the namespace and job) marks whose weights a file holds: when several jobs
share a folder, garbage collection deletes only this job's own files, and a resume refuses a manifest
another job wrote unless asked to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, Literal

from . import faults
from .extras import require
from .storage import Store
from .storage.local import temp_target

log = logging.getLogger(__name__)

FORMAT = "torch.save"
RESUMED_EPOCHS = 64  # epoch records a manifest carries for the resumed trainer's GET /epochs
TAIL_EPOCHS = 8  # the last epochs' objective in rank 0's pointer
LAST = "last.json"
BEST = "best.json"
BLOB_PREFIX = "ckpt-"


class CorruptCheckpoint(RuntimeError):
    """The weights do not match their manifest's size or sha256."""


@dataclass(frozen=True)
class Manifest:
    """What the operator copies into status.checkpoint; JSON keys are camelCase like the CRD's."""

    uri: str
    epoch: int
    step: int
    size: int
    sha256: str
    saved_at: str
    world_size: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    format: str = FORMAT
    job: str = ""
    namespace: str = ""
    stop_reason: str | None = None
    stop: dict[str, str] | None = None  # the operator's decision this save followed (type, criterion)
    # the last epochs' records (GET /epochs), so a trainer resumed after a preemption still serves the
    # epochs the operator had not read before the pod was taken away
    epochs: list[dict[str, Any]] = field(default_factory=list)
    # the objective of the last epochs that reported it, [[epoch, value], ...]: in rank 0's pointer, so a
    # job whose last epochs ended between two of the operator's reads keeps them in status.curve
    tail: list[list[float]] = field(default_factory=list)

    def to_json(self) -> bytes:
        doc = {
            "format": self.format,
            "uri": self.uri,
            "epoch": self.epoch,
            "step": self.step,
            "metrics": self.metrics,
            "bytes": self.size,
            "sha256": self.sha256,
            "savedAt": self.saved_at,
            "worldSize": self.world_size,
            "job": self.job,
            "namespace": self.namespace,
            "stopReason": self.stop_reason,
        }
        if self.stop:
            doc["stop"] = self.stop
        if self.epochs:
            doc["epochs"] = self.epochs
        if self.tail:
            doc["tail"] = self.tail
        return json.dumps(doc, sort_keys=True, allow_nan=False).encode() + b"\n"

    def termination_message(self) -> bytes:
        """The compact pointer rank 0 leaves as its termination message: the keys of status.checkpoint.

        The kubelet keeps at most 4096 bytes of it (less when the pod's containers share 12 KiB), so
        metrics, the stop reason and the job's identity stay in the manifest beside the weights. About
        170 bytes plus the URI: under 1 KiB for a URI up to 850 ASCII characters. A save that followed
        the operator's stop also carries its decision (`stop`: type and criterion, under 110 bytes), so an
        operator that restarted before recording the stop still ends the job Stopped for that reason.
        """
        doc: dict[str, object] = {
            "uri": self.uri,
            "epoch": self.epoch,
            "step": self.step,
            "bytes": self.size,
            "sha256": self.sha256,
            "savedAt": self.saved_at,
        }
        if self.tail:
            doc["tail"] = self.tail  # under 200 bytes: TAIL_EPOCHS pairs
        if self.stop:
            doc["stop"] = self.stop
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        d = json.loads(raw)
        return cls(
            uri=d["uri"],
            epoch=int(d["epoch"]),
            step=int(d["step"]),
            size=int(d["bytes"]),
            sha256=d["sha256"],
            saved_at=d["savedAt"],
            world_size=int(d["worldSize"]),
            metrics=dict(d.get("metrics") or {}),
            format=d.get("format", FORMAT),
            job=d.get("job", ""),
            namespace=d.get("namespace", ""),
            stop_reason=d.get("stopReason"),
            stop=d.get("stop") if isinstance(d.get("stop"), dict) else None,
            epochs=[e for e in d.get("epochs") or [] if isinstance(e, dict)][-RESUMED_EPOCHS:],
            tail=[t for t in d.get("tail") or [] if isinstance(t, list)][-TAIL_EPOCHS:],
        )

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    def written_by(self, job: str, namespace: str) -> bool:
        return (self.job, self.namespace) == (job, namespace)


@dataclass(frozen=True)
class Checkpoint:
    manifest: Manifest
    state: dict[str, Any]


class _Hashing:
    """A write-only stream that hashes and counts what torch.save writes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def _finite(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """JSON has no NaN: a non-finite metric is recorded as null."""
    return {k: (float(v) if math.isfinite(v) else None) for k, v in metrics.items()}


class Checkpointer:
    def __init__(
        self,
        store: Store,
        *,
        job: str,
        namespace: str,
        world_size: int,
        objective: str,
        objective_mode: Literal["min", "max"],
        keep_best: bool,
        resume_other_jobs: bool = False,
    ) -> None:
        self.store = store
        self.job = job
        self.namespace = namespace
        self.world_size = world_size
        self.objective = objective
        self.objective_mode = objective_mode
        self.keep_best = keep_best
        self.resume_other_jobs = resume_other_jobs
        self.saves = 0
        self.blob_prefix = f"{BLOB_PREFIX}{job_tag(job, namespace)}-"
        self._written: dict[str, str] = {}  # LAST/BEST -> the blob this process last pointed it at

    def save(
        self,
        state: Mapping[str, Any],
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, float],
        stop_reason: str | None,
        stop: dict[str, str] | None = None,
        epochs: list[dict[str, Any]] | None = None,
        tail: list[list[float]] | None = None,
    ) -> Manifest:
        require("torch", "torch", "saving a checkpoint (torch.save)")
        import torch  # an extra: the base install serves /metrics and /stop without it

        self.saves += 1
        name = f"{self.blob_prefix}e{epoch:06d}-s{step:09d}-{uuid.uuid4().hex[:8]}.pt"
        hashing: list[_Hashing] = []

        def fill(f: BinaryIO) -> None:
            h = _Hashing(f)
            hashing.append(h)
            torch.save(dict(state), h)  # type: ignore[arg-type]

        self.store.write_blob(name, fill, faults.save_pause(self.saves))
        manifest = Manifest(
            uri=self.store.uri(name),
            epoch=epoch,
            step=step,
            size=hashing[-1].bytes,
            sha256=hashing[-1].sha256.hexdigest(),
            saved_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            world_size=self.world_size,
            metrics=_finite(metrics),
            job=self.job,
            namespace=self.namespace,
            stop_reason=stop_reason,
            stop=stop,
            epochs=list(epochs or [])[-RESUMED_EPOCHS:],
            tail=[[epoch, value] for epoch, value in (tail or []) if math.isfinite(value)][-TAIL_EPOCHS:],
        )
        if self.keep_best and self._improves(manifest):
            self._write_manifest(BEST, manifest)
        self._write_manifest(LAST, manifest)
        self._collect_garbage()
        return manifest

    def manifest(self, which: str = LAST) -> Manifest | None:
        raw = self.store.read_small(which)
        return Manifest.from_json(raw) if raw is not None else None

    def load(self, which: str = LAST) -> Checkpoint | None:
        """The checkpoint a manifest names, verified against its sha256; None when there is none yet, or
        when another job wrote it (unless resume_other_jobs)."""
        manifest = self.manifest(which)
        if manifest is None:
            return None
        require("torch", "torch", "loading a checkpoint (torch.load)")
        import torch

        if not manifest.written_by(self.job, self.namespace) and not self.resume_other_jobs:
            log.warning(
                "stopline: not resuming from %s: job %r in namespace %r wrote it, this is job %r in "
                "namespace %r (STOPLINE_RESUME_OTHER_JOBS=true resumes from it)",
                manifest.uri,
                manifest.job,
                manifest.namespace,
                self.job,
                self.namespace,
            )
            return None
        with self.store.read_blob(manifest.name) as f:
            h = hashlib.sha256()
            size = 0
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
            if size != manifest.size or h.hexdigest() != manifest.sha256:
                raise CorruptCheckpoint(
                    f"{manifest.uri}: {size} bytes sha256 {h.hexdigest()}, manifest says "
                    f"{manifest.size} bytes sha256 {manifest.sha256}"
                )
            f.seek(0)
            state = torch.load(f, map_location="cpu", weights_only=True)
        return Checkpoint(manifest, state)

    def _improves(self, candidate: Manifest) -> bool:
        value = candidate.metrics.get(self.objective)
        if value is None:
            return False
        best = self.manifest(BEST)
        ours = best is not None and best.written_by(self.job, self.namespace)
        best_value = best.metrics.get(self.objective) if best and ours else None
        if best_value is None:
            return True
        return value < best_value if self.objective_mode == "min" else value > best_value

    def _write_manifest(self, which: str, manifest: Manifest) -> None:
        self.store.write_small(which, manifest.to_json())
        self._written[which] = manifest.name

    def _collect_garbage(self) -> None:
        """Delete this job's weights that no manifest points at, and its temp files of saves killed midway.

        Files of other jobs sharing the folder are never touched; neither are the weights this process's
        own manifests point at, even if another job has since overwritten those manifests.
        """
        keep = {m.name for m in (self.manifest(LAST), self.manifest(BEST)) if m is not None}
        keep.update(self._written.values())
        for name in list(self.store.names()):
            own = (temp_target(name) or name).startswith(self.blob_prefix)
            if own and name not in keep:
                log.debug("deleting unreferenced %s", self.store.uri(name))
                self.store.delete(name)


def job_tag(job: str, namespace: str) -> str:
    """8 hex digits that tell this job's files from another's in a shared folder (not a secret)."""
    return hashlib.sha256(f"{namespace}/{job}".encode()).hexdigest()[:8]
