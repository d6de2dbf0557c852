"""Atomic checkpoints: weights under a unique name first, then the manifest that points at them.

Layout under the checkpoint URI: `ckpt-<job tag>-e<epoch>-s<step>-<id>.pt` (torch.save bytes; `.safetensors`
with save(format="safetensors")), `last.json` (the manifest of the newest save) and, with keep-best,
`best.json`. A manifest is the commit point: it is written only after its weights are durable, so a reader
that starts from a manifest never meets half a checkpoint, and a save killed midway leaves the previous
manifest and its weights untouched.

Files a framework wrote (register: a .ckpt, a save_pretrained folder, a torch.distributed.checkpoint folder
of every rank's shards) become a folder `ckpt-<job tag>-e<epoch>-s<step>-<id>/` holding copies of them and
`stopline-files.json`, which lists every file's relative path, size and sha256 and is written after all of
them; `last.json` then names that file (format "files"), with its own size and sha256.

The job tag (8 hex digits of the namespace and job) marks whose weights a file holds: when several jobs
share a folder, garbage collection deletes only this job's own files, and a resume refuses a manifest
another job wrote unless asked to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

from . import faults
from .extras import require
from .storage import Store
from .storage.local import temp_target

log = logging.getLogger(__name__)

FORMAT = "torch.save"
SAFETENSORS = "safetensors"
FILES = "files"  # a folder of files a framework wrote, listed in FILES_MANIFEST
FILES_MANIFEST = "stopline-files.json"
FILES_FORMAT = "stopline.files/1"
SaveFormat = Literal["torch", "safetensors"]
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
    files: int = 0  # format "files": how many files the checkpoint holds, and their bytes together
    files_bytes: int = 0
    # the evaluation rounds completed when it was saved, for a run that reports them (report(eval_round=)):
    # then `epoch` counts rounds, and a resumed run counts on from this one
    eval_round: int | None = None

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
        if self.format == FILES:
            doc["files"] = self.files
            doc["filesBytes"] = self.files_bytes
        if self.eval_round is not None:
            doc["evalRound"] = self.eval_round
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
            files=int(d.get("files") or 0),
            files_bytes=int(d.get("filesBytes") or 0),
            eval_round=d["evalRound"] if isinstance(d.get("evalRound"), int) else None,
        )

    @property
    def name(self) -> str:
        """The file the uri names, relative to the checkpoint URI (a folder's manifest: `<folder>/...`)."""
        return "/".join(self.uri.rsplit("/", 2)[-2:]) if self.format == FILES else self.entry

    @property
    def entry(self) -> str:
        """What the checkpoint occupies directly under the checkpoint URI: its weights file or its folder."""
        return self.uri.rsplit("/", 2)[-2] if self.format == FILES else self.uri.rsplit("/", 1)[-1]

    def written_by(self, job: str, namespace: str) -> bool:
        return (self.job, self.namespace) == (job, namespace)


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint. `state`: what save() wrote, loaded. A registered one (format "files") has no
    state but a local `path`: the folder of its files, or the file itself when one file was registered."""

    manifest: Manifest
    state: dict[str, Any]
    path: Path | None = None
    files: tuple[str, ...] = ()  # a registered checkpoint's files, relative to its folder


@dataclass(frozen=True)
class FolderPlan:
    """Where the files of one registered checkpoint go: the same on every rank (rank 0 picks it)."""

    entry: str  # its folder's name under the checkpoint URI
    staging: str  # where its files are put until the commit
    epoch: int
    step: int


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
        eval_round: int | None = None,
        format: SaveFormat = "torch",
    ) -> Manifest:
        """format "torch": torch.save of the state; "safetensors": a flat {name: tensor} state as one
        safetensors file (serialised in memory first: the state's size again in RAM)."""
        if format not in ("torch", "safetensors"):
            raise ValueError(f"format={format!r}: torch or safetensors")
        require("torch", "torch", "saving a checkpoint (torch.save)")
        import torch  # an extra: the base install serves /metrics and /stop without it

        if format == "safetensors":
            require("hf", "safetensors", "save(format='safetensors')")
            import safetensors.torch

            tensors = dict(state)
            if not all(isinstance(v, torch.Tensor) for v in tensors.values()):
                raise TypeError("save(format='safetensors') takes a flat {name: tensor} state")

        self.saves += 1
        suffix = ".safetensors" if format == "safetensors" else ".pt"
        name = f"{self.blob_prefix}e{epoch:06d}-s{step:09d}-{uuid.uuid4().hex[:8]}{suffix}"
        hashing: list[_Hashing] = []

        def fill(f: BinaryIO) -> None:
            h = _Hashing(f)
            hashing.append(h)
            if format == "safetensors":
                h.write(safetensors.torch.save(tensors))
            else:
                torch.save(dict(state), h)  # type: ignore[arg-type]

        self.store.write_blob(name, fill, faults.save_pause(self.saves))
        manifest = self._manifest(
            self.store.uri(name),
            hashing[-1].bytes,
            hashing[-1].sha256.hexdigest(),
            epoch=epoch,
            step=step,
            metrics=metrics,
            stop_reason=stop_reason,
            stop=stop,
            epochs=epochs,
            tail=tail,
            eval_round=eval_round,
            format=SAFETENSORS if format == "safetensors" else FORMAT,
        )
        self._commit(manifest)
        return manifest

    def plan_folder(self, epoch: int, step: int) -> FolderPlan:
        """A new folder for a registered checkpoint (rank 0 picks it and tells the other ranks)."""
        token = uuid.uuid4().hex
        entry = f"{self.blob_prefix}e{epoch:06d}-s{step:09d}-{token[:8]}"
        return FolderPlan(entry, self.store.staging(entry, token), epoch, step)

    def put_files(self, plan: FolderPlan, files: Mapping[str, Path]) -> dict[str, tuple[int, str]]:
        """Copy local files into the planned folder: {relative path: (bytes, sha256)}. Every rank puts its
        own share; nothing is named until commit_files."""
        self.saves += 1
        done: dict[str, tuple[int, str]] = {}
        for relative, source in sorted(files.items()):
            done[relative] = self.store.put_file(f"{plan.staging}/{_relative(relative)}", source)
        return done

    def commit_files(
        self,
        plan: FolderPlan,
        files: Mapping[str, tuple[int, str]],
        *,
        single: bool,
        metrics: Mapping[str, float],
        stop_reason: str | None,
        stop: dict[str, str] | None = None,
        epochs: list[dict[str, Any]] | None = None,
        tail: list[list[float]] | None = None,
        eval_round: int | None = None,
    ) -> Manifest:
        """Once every file is put: the folder's file list, the folder made durable, then last.json."""
        listed = [
            {"path": relative, "bytes": size, "sha256": digest}
            for relative, (size, digest) in sorted(files.items())
        ]
        doc = {
            "format": FILES_FORMAT,
            "kind": "file" if single else "folder",
            "files": listed,
            "epoch": plan.epoch,
            "step": plan.step,
            "job": self.job,
            "namespace": self.namespace,
            "worldSize": self.world_size,
        }
        raw = json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"
        self.store.write_small(f"{plan.staging}/{FILES_MANIFEST}", raw)
        self.store.commit_folder(plan.staging, plan.entry)
        manifest = self._manifest(
            self.store.uri(f"{plan.entry}/{FILES_MANIFEST}"),
            len(raw),
            hashlib.sha256(raw).hexdigest(),
            epoch=plan.epoch,
            step=plan.step,
            metrics=metrics,
            stop_reason=stop_reason,
            stop=stop,
            epochs=epochs,
            tail=tail,
            eval_round=eval_round,
            format=FILES,
            files=len(listed),
            files_bytes=sum(size for size, _ in files.values()),
        )
        self._commit(manifest)
        return manifest

    def _manifest(
        self,
        uri: str,
        size: int,
        sha256: str,
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, float],
        stop_reason: str | None,
        stop: dict[str, str] | None,
        epochs: list[dict[str, Any]] | None,
        tail: list[list[float]] | None,
        eval_round: int | None,
        format: str,
        files: int = 0,
        files_bytes: int = 0,
    ) -> Manifest:
        return Manifest(
            uri=uri,
            epoch=epoch,
            step=step,
            size=size,
            sha256=sha256,
            saved_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            world_size=self.world_size,
            metrics=_finite(metrics),
            format=format,
            job=self.job,
            namespace=self.namespace,
            stop_reason=stop_reason,
            stop=stop,
            epochs=list(epochs or [])[-RESUMED_EPOCHS:],
            tail=[[epoch, value] for epoch, value in (tail or []) if math.isfinite(value)][-TAIL_EPOCHS:],
            files=files,
            files_bytes=files_bytes,
            eval_round=eval_round,
        )

    def _commit(self, manifest: Manifest) -> None:
        if self.keep_best and self._improves(manifest):
            self._write_manifest(BEST, manifest)
        self._write_manifest(LAST, manifest)
        self._collect_garbage()

    def manifest(self, which: str = LAST) -> Manifest | None:
        raw = self.store.read_small(which)
        return Manifest.from_json(raw) if raw is not None else None

    def load(self, which: str = LAST, *, into: Path | None = None) -> Checkpoint | None:
        """The checkpoint a manifest names, verified against its sha256; None when there is none yet, or
        when another job wrote it (unless resume_other_jobs).

        A registered checkpoint is verified file by file; on a volume its files are used where they are,
        from an object store they are downloaded into `into` (default: a new temporary folder).
        """
        manifest = self.manifest(which)
        if manifest is None:
            return None
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
        if manifest.format == FILES:
            return self._load_files(manifest, into)
        require("torch", "torch", "loading a checkpoint (torch.load)")
        import torch

        with self.store.read_blob(manifest.name) as f:
            _verify(f, manifest.size, manifest.sha256, manifest.uri)
            f.seek(0)
            if manifest.format == SAFETENSORS:
                require("hf", "safetensors", "loading a safetensors checkpoint")
                import safetensors.torch

                state: dict[str, Any] = safetensors.torch.load(f.read())
            else:
                state = torch.load(f, map_location="cpu", weights_only=True)
        return Checkpoint(manifest, state)

    def _load_files(self, manifest: Manifest, into: Path | None) -> Checkpoint:
        raw = self.store.read_small(manifest.name)
        if raw is None:
            raise CorruptCheckpoint(f"{manifest.uri} is missing")
        digest = hashlib.sha256(raw).hexdigest()
        if len(raw) != manifest.size or digest != manifest.sha256:
            raise CorruptCheckpoint(
                f"{manifest.uri}: {len(raw)} bytes sha256 {digest}, last.json says "
                f"{manifest.size} bytes sha256 {manifest.sha256}"
            )
        doc = json.loads(raw)
        listed = [(_relative(f["path"]), int(f["bytes"]), str(f["sha256"])) for f in doc["files"]]
        folder = self.store.local_path(manifest.entry)
        if folder is None:
            folder = into if into is not None else Path(tempfile.mkdtemp(prefix="stopline-resume-"))
            for relative, _, _ in listed:
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                self.store.download(f"{manifest.entry}/{relative}", target)
        for relative, size, sha256 in listed:
            uri = self.store.uri(f"{manifest.entry}/{relative}")
            try:
                with open(folder / relative, "rb") as f:
                    _verify(f, size, sha256, uri)
            except FileNotFoundError:
                raise CorruptCheckpoint(f"{uri} is missing: {manifest.uri} lists it") from None
        names = tuple(relative for relative, _, _ in listed)
        path = folder / names[0] if doc.get("kind") == "file" and len(names) == 1 else folder
        return Checkpoint(manifest, {}, path=path, files=names)

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
        self._written[which] = manifest.entry

    def _collect_garbage(self) -> None:
        """Delete this job's weights that no manifest points at, and its temp files of saves killed midway.

        Files of other jobs sharing the folder are never touched; neither are the weights this process's
        own manifests point at, even if another job has since overwritten those manifests.
        """
        keep = {m.entry for m in (self.manifest(LAST), self.manifest(BEST)) if m is not None}
        keep.update(self._written.values())
        for name in list(self.store.names()):
            own = (temp_target(name) or name).startswith(self.blob_prefix)
            if own and name not in keep:
                log.debug("deleting unreferenced %s", self.store.uri(name))
                self.store.delete(name)
        for name in list(self.store.folders()):
            own = (temp_target(name) or name).startswith(self.blob_prefix)
            if own and name not in keep:
                log.debug("deleting unreferenced %s/", self.store.uri(name))
                self.store.delete_folder(name)


def _verify(f: BinaryIO, size: int, sha256: str, uri: str) -> None:
    h, seen = hashlib.sha256(), 0
    while chunk := f.read(1 << 20):
        h.update(chunk)
        seen += len(chunk)
    if seen != size or h.hexdigest() != sha256:
        raise CorruptCheckpoint(
            f"{uri}: {seen} bytes sha256 {h.hexdigest()}, manifest says {size} bytes sha256 {sha256}"
        )


def _relative(path: str) -> str:
    """A file's path inside a checkpoint folder: relative, with no way out of it (a manifest is a file
    on shared storage: a `..` in it must not reach another folder)."""
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise CorruptCheckpoint(f"{path!r} is no relative path inside a checkpoint folder")
    return "/".join(parts)


def job_tag(job: str, namespace: str) -> str:
    """8 hex digits that tell this job's files from another's in a shared folder (not a secret)."""
    return hashlib.sha256(f"{namespace}/{job}".encode()).hexdigest()[:8]
