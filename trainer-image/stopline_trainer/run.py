"""The plain-loop API: report(), should_stop(), save(), resume() over the flag, server and checkpointer."""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import distributed
from .checkpoint import RESUMED_EPOCHS, TAIL_EPOCHS, Checkpoint, Checkpointer, Manifest, SaveFormat
from .config import Config
from .control import StopFlag, install_signal_handlers
from .metrics import TrainerMetrics
from .server import ControlServer
from .storage import open_store

log = logging.getLogger("stopline_trainer")

PathLike = str | os.PathLike[str]
EVAL_ROUND = "eval_round"  # report()'s keyword for the evaluation round
_NOT_YET = object()  # resume() not called yet

MAX_TERMINATION_MESSAGE = 4096  # the kubelet's limit per container


class Run:
    """One training process's link to the operator.

    One endpoint per pod: the process of local rank 0 (the only one without torchrun) serves /metrics
    and /stop; torchrun's other local ranks serve nothing. should_stop() is a collective when
    torch.distributed is initialised, so call it at the same point on every rank; with check_every=N only
    every N-th call is one (a boundary), the calls between cost nothing. Only global rank 0 writes
    checkpoints and the pointer to them in the termination message.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        accept_http_stop: bool = True,
        handle_signals: bool = True,
        check_every: int = 1,
    ) -> None:
        if check_every < 1:
            raise ValueError(f"check_every={check_every}: must be at least 1")
        self.check_every = check_every
        self._checks = 0  # should_stop() calls so far: every check_every-th is a boundary
        self.config = config if config is not None else Config.from_env()
        self.flag = StopFlag()
        self.metrics = TrainerMetrics(self.flag)
        # None in torchrun's workers of local rank > 0: the pod has one metrics port, local rank 0's
        self._server: ControlServer | None = (
            ControlServer(
                self.metrics,
                self.flag,
                token=self.config.control_token,
                bind_address=self.config.bind_address,
                port=self.config.metrics_port,
                rank=self.config.rank,
                accept_stop=accept_http_stop,
            )
            if self.config.serves_endpoint
            else None
        )
        self._handle_signals = handle_signals
        self._restore_signals: Callable[[], None] | None = None
        self._checkpointer: Checkpointer | None = None
        self.epoch = 0
        self.step = 0
        self.last_metrics: dict[str, float] = {}
        self.last_manifest: Manifest | None = None
        self._epoch_started = time.monotonic()
        self._stopped = False
        self._resumed: Any = _NOT_YET  # the first resume()'s answer, given again to later calls
        self.eval_round: int | None = None  # the last evaluation round reported (report(eval_round=k))

    @property
    def rank(self) -> int:
        return distributed.rank(self.config.rank)

    @property
    def stop_reason(self) -> str | None:
        return self.flag.reason if self.flag.is_set() else None

    @property
    def server(self) -> ControlServer:
        """The endpoint this process serves; a process of local rank > 0 has none (RuntimeError)."""
        if self._server is None:
            raise RuntimeError(f"local rank {self.config.local_rank} serves nothing: local rank 0 does")
        return self._server

    @property
    def port(self) -> int | None:
        """Where /metrics and /stop are served; None in a process that serves nothing (local rank > 0)."""
        return self._server.port if self._server is not None else None

    def start(self) -> Run:
        if self._handle_signals:
            self.install_signal_handlers()
        c = self.config
        if self._server is None:
            log.info(
                "stopline: rank %d (local rank %d) serves nothing: local rank 0 serves the pod's /metrics "
                "and /stop, and a stop it gets reaches this rank in should_stop()",
                self.rank,
                c.local_rank,
            )
            return self
        self._server.start()
        log.info(
            "stopline: rank %d serving /metrics and /stop on %s:%d",
            self.rank,
            c.bind_address,
            self.port,
        )
        if c.node_rank is not None and c.pod_index is not None and c.node_rank != c.pod_index:
            log.warning(
                "stopline: torchrun made pod %d its node %d: the operator reads the job's metrics and "
                "checkpoint from pod 0, which must run global rank 0 (torchrun --node-rank=$(RANK) with the "
                "static rendezvous; see the trainer README)",
                c.pod_index,
                c.node_rank,
            )
        return self

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT become stop requests (main thread only); the Lightning callback calls it late."""
        if self._restore_signals is not None:
            self._restore_signals()
        self._restore_signals = install_signal_handlers(self.flag)

    def report(self, epoch: float, step: int, **metrics: float) -> None:
        """Publish progress; call it every step, or at least at each epoch end, with metrics as floats.

        The operator counts what it is given as the epoch: patience, rungs, budgets and status.curve are
        per epoch. A step-based run that evaluates every N steps passes the evaluation's round instead,
        `eval_round=k` (counted from 1) with the evaluation's metrics: from then on the round is the unit
        (stopline_epoch, the epoch records, a checkpoint's epoch), the framework's own epoch is kept as the
        metric `epoch`, and a report without eval_round counts into the round in progress (the last one
        reported + 1), so per-step training losses land in the round their evaluation will close. Set
        `run.eval_round = 0` before the first report to count the reports before the first evaluation into
        round 1 (the Hugging Face callback does). `eval_round` is a keyword of its own, never a metric.
        """
        round_given = metrics.pop(EVAL_ROUND, None)
        values = {k: float(v) for k, v in metrics.items()}
        if round_given is not None:
            if round_given != int(round_given) or round_given < 1:
                raise ValueError(f"eval_round={round_given}: a whole number, counted from 1")
            self.eval_round = unit = int(round_given)
        elif self.eval_round is not None:
            unit = self.eval_round + 1
        else:
            unit = int(epoch)
        if self.eval_round is not None:
            values.setdefault("epoch", float(epoch))
        now = time.monotonic()
        if unit != self.epoch:
            if self.epoch:
                self.metrics.epoch_duration.set(now - self._epoch_started)
                self.metrics.epochs.finished(self.epoch, now - self._epoch_started)
            self._epoch_started = now
        self.epoch, self.step = unit, step
        self.last_metrics.update(values)
        self.metrics.observe(unit, step, values)

    def should_stop(self) -> bool:
        """True on every rank at the same call once any rank got a stop request (HTTP, signal or peer).

        Call it at a point every rank reaches, as often on each. Every check_every-th call (each call by
        default) is a boundary: one all-reduce of the flag across the ranks (a host sync with NCCL), or
        a look at the flag in a single process. The calls between return False without communicating, so
        a stop requested after a boundary is acted on at the next one, up to check_every - 1 calls later.
        Once the ranks agreed, every later call returns True at once.
        """
        if self._stopped:
            return True
        self._checks += 1
        if self._checks % self.check_every:
            return False
        agreed = distributed.any_rank(self.flag.is_set())
        if agreed and self.flag.request("stop requested by another rank"):
            log.info("stopline: rank %d stops because another rank was asked to", self.rank)
        if agreed:
            self._stopped = True
            log.info(
                "stopline: rank %d stopping at epoch %d step %d: %s",
                self.rank,
                self.epoch,
                self.step,
                self.flag.reason,
            )
        return agreed

    def save(
        self,
        state: Mapping[str, Any],
        *,
        epoch: int | None = None,
        step: int | None = None,
        metrics: Mapping[str, float] | None = None,
        format: SaveFormat = "torch",
    ) -> Manifest | None:
        """Write state atomically (rank 0 only; others return None). Defaults come from the last report().

        format="safetensors" writes a flat {name: tensor} state as a .safetensors file (needs safetensors,
        which transformers brings: stopline-trainer[hf]); resume() loads it back as the same dict.
        """
        if self.rank != 0:
            return None
        started = time.monotonic()
        manifest = self._ckpt().save(
            state,
            epoch=self.epoch if epoch is None else epoch,
            step=self.step if step is None else step,
            metrics=self.last_metrics if metrics is None else metrics,
            format=format,
            **self._stop_and_history(),
        )
        self._saved(manifest, started)
        return manifest

    def register(
        self,
        paths: PathLike | Sequence[PathLike],
        *,
        epoch: int | None = None,
        step: int | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> Manifest:
        """Make files a framework already wrote this step's checkpoint; returns its manifest on every rank.

        `paths`: one file (a Lightning .ckpt), one folder (save_pretrained's, a Trainer's checkpoint-N, a
        torch.distributed.checkpoint folder: its files keep their paths relative to it), or several of
        either (each under its own name). The files are copied under the checkpoint URI into a folder of
        their own with `stopline-files.json`, which lists each one's path, size and sha256 and is written
        after all of them; last.json names it (format "files") and the termination message points at it.
        resume() verifies the files one by one and hands back their folder (Checkpoint.path).

        With several ranks it is a collective: every rank calls it at the same point, once its own files
        are written, with the same paths. Each rank lists the files it sees there; a file seen by several
        ranks (a shared volume) is copied by one of them, so each rank's shards on its own disk are copied
        by that rank, and rank 0 commits the folder once all are in. Defaults come from rank 0's last
        report(). The source files are left as they are.
        """
        started = time.monotonic()
        checkpointer = self._ckpt()
        sources = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
        if not sources:
            raise ValueError("register() needs at least one file or folder")
        plan = None
        if self.rank == 0:
            plan = checkpointer.plan_folder(
                self.epoch if epoch is None else epoch, self.step if step is None else step
            )
        # all-gather, not broadcast: no rank lists the files before every rank has finished writing its own
        plan = distributed.all_gather(plan)[0]
        try:
            listing, problem = _listing(sources), None
        except (OSError, ValueError) as e:
            listing, problem = {}, f"rank {self.rank}: {e}"
        seen = distributed.all_gather(([p.exists() for p in sources], sorted(listing), problem))
        problems = [problem for _, _, problem in seen if problem]
        missing = [str(p) for i, p in enumerate(sources) if not any(present[i] for present, _, _ in seen)]
        if missing:
            problems.append(f"no rank has {', '.join(missing)}")
        if problems:
            raise FileNotFoundError(f"register(): {'; '.join(problems)}")
        holders: dict[str, list[int]] = {}
        for rank, (_, names, _) in enumerate(seen):
            for name in names:
                holders.setdefault(name, []).append(rank)
        mine = {
            name: listing[name]
            for name, ranks in holders.items()
            if ranks[zlib.crc32(name.encode()) % len(ranks)] == self.rank
        }
        try:
            put, problem = checkpointer.put_files(plan, mine), None
        except Exception as e:  # every rank must reach the next collective, so the error travels in it
            put, problem = {}, f"rank {self.rank}: {type(e).__name__}: {e}"
        results = distributed.all_gather((put, problem))
        answer: tuple[Manifest | None, str | None] = (None, None)
        if self.rank == 0:
            problems = [problem for _, problem in results if problem]
            try:
                if problems:
                    raise RuntimeError("; ".join(problems))
                files = {name: done for part, _ in results for name, done in part.items()}
                single = len(sources) == 1 and sources[0].is_file()
                committed_here = checkpointer.commit_files(
                    plan,
                    files,
                    single=single,
                    metrics=self.last_metrics if metrics is None else metrics,
                    **self._stop_and_history(),
                )
                answer = (committed_here, None)
            except Exception as e:
                answer = (None, f"{type(e).__name__}: {e}")
        committed: tuple[Manifest | None, str | None] = distributed.from_rank_0(answer)
        manifest, problem = committed
        if manifest is None:
            raise RuntimeError(f"register(): the checkpoint was not committed: {problem}")
        if self.rank == 0:
            self._saved(manifest, started)
        else:
            self.last_manifest = manifest
        return manifest

    def _stop_and_history(self) -> dict[str, Any]:
        return {
            "eval_round": self.eval_round,
            "stop_reason": self.stop_reason,
            "stop": self.flag.cause if self.flag.is_set() else None,
            "epochs": self.metrics.epochs.snapshot(RESUMED_EPOCHS),
            "tail": self.metrics.epochs.tail(self.config.objective, TAIL_EPOCHS),
        }

    def _saved(self, manifest: Manifest, started: float) -> None:
        self.last_manifest = manifest
        self.metrics.checkpoint.info(
            {
                "uri": manifest.uri,
                "epoch": str(manifest.epoch),
                "step": str(manifest.step),
                "sha256": manifest.sha256,
                "bytes": str(manifest.size),
                "saved_at": manifest.saved_at,
                "format": manifest.format,
            }
        )
        self._write_termination_message(manifest.termination_message())
        log.info(
            "stopline: saved %s (%d bytes, epoch %d step %d) in %.3fs",
            manifest.uri,
            manifest.size,
            manifest.epoch,
            manifest.step,
            time.monotonic() - started,
        )

    def resume(self, *, into: PathLike | None = None) -> Checkpoint | None:
        """The latest checkpoint (verified), or None on a fresh start; every rank may call it.

        None as well when resuming is off (STOPLINE_RESUME=false, from spec.checkpoint.resume). A
        registered checkpoint comes with its files' local `path`: on a volume where they are, from an
        object store downloaded into `into` (default: a new temporary folder). Later calls give the first
        call's answer.
        """
        if self._resumed is _NOT_YET:
            self._resumed = self._resume(Path(into) if into is not None else None)
        resumed: Checkpoint | None = self._resumed
        return resumed

    def resume_path(self, *, into: PathLike | None = None) -> str | None:
        """The local path of the latest registered checkpoint (its folder, or its one file), verified; None
        on a fresh start. For `Trainer.fit(ckpt_path=...)` or `train(resume_from_checkpoint=...)`."""
        ckpt = self.resume(into=into)
        if ckpt is None:
            return None
        if ckpt.path is None:
            raise RuntimeError(f"{ckpt.manifest.uri} was written by save(), not register(): it has no path")
        return str(ckpt.path)

    def _resume(self, into: Path | None) -> Checkpoint | None:
        if not self.config.checkpoint_uri:
            return None
        if not self.config.resume:
            log.info("stopline: not resuming (STOPLINE_RESUME=false): training starts fresh")
            return None
        ckpt = self._ckpt().load(into=into)
        if ckpt is not None:
            m = ckpt.manifest
            metrics = {k: float(v) for k, v in m.metrics.items() if v is not None}
            self.metrics.epochs.restore(m.epochs)
            self.epoch, self.step = m.epoch, m.step
            self.eval_round = m.eval_round
            self._epoch_started = time.monotonic()
            self.last_metrics.update(metrics)
            self.metrics.show(m.epoch, m.step, metrics)
            log.info("stopline: resuming from %s (epoch %d step %d)", m.uri, m.epoch, m.step)
        return ckpt

    def close(self) -> None:
        """Leave the termination message, stop serving, give the signals back."""
        if self.rank == 0 and self.last_manifest is not None:
            self._write_termination_message(self.last_manifest.termination_message())
        elif self.rank != 0 and self.config.serves_endpoint:  # one message per pod: local rank 0's
            doc = {"rank": self.rank, "epoch": self.epoch, "step": self.step, "stopReason": self.stop_reason}
            self._write_termination_message(json.dumps(doc, sort_keys=True).encode() + b"\n")
        if self._server is not None:
            self._server.close()
        if self._restore_signals is not None:
            self._restore_signals()
            self._restore_signals = None

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _ckpt(self) -> Checkpointer:
        if self._checkpointer is None:
            c = self.config
            if not c.checkpoint_uri:
                raise RuntimeError("STOPLINE_CHECKPOINT_URI is not set: nowhere to save the checkpoint")
            self._checkpointer = Checkpointer(
                open_store(c.checkpoint_uri, s3_part_size=c.s3_part_size),
                job=c.job,
                namespace=c.namespace,
                world_size=distributed.world_size(c.world_size),
                objective=c.objective,
                objective_mode=c.objective_mode,
                keep_best=c.keep_best,
                resume_other_jobs=c.resume_other_jobs,
            )
        return self._checkpointer

    def _write_termination_message(self, data: bytes) -> None:
        """Kubernetes shows this file's content (first 4 KiB) in the pod status after the container exits."""
        if len(data) > MAX_TERMINATION_MESSAGE:
            log.warning(
                "stopline: the termination message is %d bytes, the kubelet keeps %d: the operator will not "
                "see this checkpoint (shorten the checkpoint URI)",
                len(data),
                MAX_TERMINATION_MESSAGE,
            )
        path = self.config.termination_log
        try:
            path.write_bytes(data)
        except OSError as e:  # outside a pod /dev/termination-log may not be writable
            log.debug("no termination message at %s: %s", path, e)


def _listing(sources: list[Path]) -> dict[str, Path]:
    """The files under `sources` that this rank sees, by their path inside the checkpoint folder."""
    found: dict[str, Path] = {}
    for source in sources:
        if source.is_file():
            items = [(source.name, source)]
        elif source.is_dir():
            under = f"{source.name}/" if len(sources) > 1 else ""
            items = [
                (under + p.relative_to(source).as_posix(), p)
                for p in sorted(source.rglob("*"))
                if p.is_file()
            ]
        else:
            continue  # not on this rank's disk: another rank registers it
        for name, path in items:
            if name in found:
                raise ValueError(f"two files would be {name!r} in the checkpoint: {found[name]} and {path}")
            found[name] = path
    return found


def start(config: Config | None = None, **options: Any) -> Run:
    """Read the environment, serve /metrics and /stop, turn SIGTERM/SIGINT into stop requests."""
    return Run(config, **options).start()
