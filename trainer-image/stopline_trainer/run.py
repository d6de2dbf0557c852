"""The plain-loop API: report(), should_stop(), save(), resume() over the flag, server and checkpointer."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from . import distributed
from .checkpoint import RESUMED_EPOCHS, TAIL_EPOCHS, Checkpoint, Checkpointer, Manifest
from .config import Config
from .control import StopFlag, install_signal_handlers
from .metrics import TrainerMetrics
from .server import ControlServer
from .storage import open_store

log = logging.getLogger("stopline_trainer")

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

    def report(self, epoch: int, step: int, **metrics: float) -> None:
        """Publish progress; call it every step, or at least at each epoch end, with metrics as floats."""
        now = time.monotonic()
        if epoch != self.epoch:
            if self.epoch:
                self.metrics.epoch_duration.set(now - self._epoch_started)
                self.metrics.epochs.finished(self.epoch, now - self._epoch_started)
            self._epoch_started = now
        self.epoch, self.step = epoch, step
        values = {k: float(v) for k, v in metrics.items()}
        self.last_metrics.update(values)
        self.metrics.observe(epoch, step, values)

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
    ) -> Manifest | None:
        """Write state atomically (rank 0 only; others return None). Defaults come from the last report()."""
        if self.rank != 0:
            return None
        started = time.monotonic()
        manifest = self._ckpt().save(
            state,
            epoch=self.epoch if epoch is None else epoch,
            step=self.step if step is None else step,
            metrics=self.last_metrics if metrics is None else metrics,
            stop_reason=self.stop_reason,
            stop=self.flag.cause if self.flag.is_set() else None,
            epochs=self.metrics.epochs.snapshot(RESUMED_EPOCHS),
            tail=self.metrics.epochs.tail(self.config.objective, TAIL_EPOCHS),
        )
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
        return manifest

    def resume(self) -> Checkpoint | None:
        """The latest checkpoint (verified), or None on a fresh start; every rank may call it.

        None as well when resuming is off (STOPLINE_RESUME=false, from spec.checkpoint.resume).
        """
        if not self.config.checkpoint_uri:
            return None
        if not self.config.resume:
            log.info("stopline: not resuming (STOPLINE_RESUME=false): training starts fresh")
            return None
        ckpt = self._ckpt().load()
        if ckpt is not None:
            m = ckpt.manifest
            metrics = {k: float(v) for k, v in m.metrics.items() if v is not None}
            self.metrics.epochs.restore(m.epochs)
            self.epoch, self.step = m.epoch, m.step
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


def start(config: Config | None = None, **options: Any) -> Run:
    """Read the environment, serve /metrics and /stop, turn SIGTERM/SIGINT into stop requests."""
    return Run(config, **options).start()
