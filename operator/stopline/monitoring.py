"""The operator's own metrics, every one defined here, and the HTTP endpoint that serves them with /healthz.

Names are what the chart's Grafana dashboard and alerts read; change them together.
"""

from __future__ import annotations

import math
import platform
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from stopline import __version__
from stopline.vocabulary import (
    CANCELLED,
    FAILED,
    GRACE_PERIOD_EXPIRED,
    NO_CHECKPOINT,
    PENDING,
    PREEMPTED,
    QUEUED,
    RUNNING,
    STOPPED,
    STOPPING,
    SUCCEEDED,
    TRAINER_FAILED,
)

BUILD_INFO = Gauge(
    "stopline_build_info", "Always 1: the operator's version and Python", ["version", "python"]
)
BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)
LEADER = Gauge(
    "stopline_leader",
    "1 in the process that runs the operator (it holds the Lease, or runs without leader election); 0 in a "
    "follower. Set by the supervisor's tick, which only the leading process runs",
)
TRAINING_JOBS = Gauge("stopline_training_jobs", "TrainingJobs the operator watches, by phase", ["phase"])
_STOPS = Counter(
    "stopline_stops", "Stops begun, by namespace and the stop reason's type", ["reason", "namespace"]
)
DECISION_LATENCY = Histogram(
    "stopline_decision_latency_seconds",
    "From the end of the read that brought the deciding sample to the end of the first POST /stop round",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
SCRAPE_ERRORS = Counter("stopline_scrape_errors", "Failed reads of a trainer pod's /metrics")
STATUS_WRITES = Counter("stopline_status_writes", "Patches of TrainingJob status (all go through one writer)")
_GPU_SECONDS_SAVED = Counter(
    "stopline_gpu_seconds_saved",
    "Estimated GPU-seconds not spent, by namespace: epochs left to maxEpochs at stop time, counted by this "
    "process (0 after a restart: stopline_training_jobs_gpu_seconds_saved is the total from status); a "
    "resume takes its stop's back in stopline_gpu_seconds_resumed",
    ["namespace"],
)
_RESUMES = Counter(
    "stopline_resumes",
    "Stopped jobs resumed from their checkpoints, by namespace and why",
    ["reason", "namespace"],
)
_GPU_SECONDS_RESUMED = Counter(
    "stopline_gpu_seconds_resumed",
    "Estimated GPU-seconds that stops had saved and resumes took back (a resumed job's epochs count as run), "
    "by namespace: stopline_gpu_seconds_saved minus this is what the stops still save",
    ["namespace"],
)
JOBS_GPU_SECONDS_SAVED = Gauge(
    "stopline_training_jobs_gpu_seconds_saved",
    "The sum of status.gpuSecondsSaved over the TrainingJobs that exist, by namespace: survives restarts "
    "and failovers, drops when TrainingJobs are deleted",
    ["namespace"],
)
STOPS_WITHOUT_WEIGHTS = Counter(
    "stopline_stops_without_weights",
    "Stops that ended without the weights saved at the stop (reason GracePeriodExpired, NoCheckpoint, "
    "TrainerFailed), by namespace and reason",
    ["namespace", "reason"],
)
PHASES = (QUEUED, PENDING, RUNNING, PREEMPTED, STOPPING, STOPPED, SUCCEEDED, FAILED, CANCELLED)
# the conclusions of a stop that kept no weights from the stop itself (stopping.next_step); a cancel is asked
# to keep none, so it is not one of them
WITHOUT_WEIGHTS = frozenset({GRACE_PERIOD_EXPIRED, NO_CHECKPOINT, TRAINER_FAILED})


class Watched(Protocol):
    """What count_phases reads of a watched TrainingJob (stopline.registry.Tracked)."""

    @property
    def key(self) -> tuple[str, str]: ...  # (namespace, name)

    @property
    def phase(self) -> str: ...

    @property
    def status(self) -> Mapping[str, Any]: ...


def count_stop(reason: str, namespace: str, gpu_seconds_saved: float | None = None) -> None:
    """A stop begun in `namespace` (or a cancel), with the GPU-seconds it saves when known."""
    _STOPS.labels(reason=reason, namespace=namespace).inc()
    if gpu_seconds_saved:
        _GPU_SECONDS_SAVED.labels(namespace=namespace).inc(gpu_seconds_saved)


def count_resume(reason: str, namespace: str, gpu_seconds_saved: object = None) -> None:
    """A stopped job resumed in `namespace`: what its stop saved (status.gpuSecondsSaved) is taken back."""
    _RESUMES.labels(reason=reason, namespace=namespace).inc()
    taken_back = _seconds(gpu_seconds_saved)
    if taken_back:
        _GPU_SECONDS_RESUMED.labels(namespace=namespace).inc(taken_back)


def count_conclusion(namespace: str, reason: str) -> None:
    """A stop concluded (the Finished condition's reason, written once); counts those that kept no weights."""
    if reason in WITHOUT_WEIGHTS:
        STOPS_WITHOUT_WEIGHTS.labels(namespace=namespace, reason=reason).inc()


def count_phases(jobs: Iterable[Watched]) -> None:
    """Once per supervisor tick, over every watched TrainingJob: the jobs-by-phase gauge (every known phase
    is exported, zero included, so graphs do not gap) and the sum of their status.gpuSecondsSaved per
    namespace."""
    phases: list[str] = []
    saved: dict[str, float] = {}
    for job in jobs:
        phases.append(job.phase)
        namespace = job.key[0]
        saved[namespace] = saved.get(namespace, 0.0) + _seconds(job.status.get("gpuSecondsSaved"))
    tally = Tally(phases)
    for phase in set(PHASES) | set(tally):
        TRAINING_JOBS.labels(phase=phase).set(tally.get(phase, 0))
    LEADER.set(1)
    _set_by_namespace(JOBS_GPU_SECONDS_SAVED, saved)


def _seconds(value: object) -> float:
    """A status.gpuSecondsSaved as a number of seconds; anything else (absent, junk) counts 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value > 0 else 0.0


_namespaces: set[str] = set()


def _set_by_namespace(gauge: Gauge, values: Mapping[str, float]) -> None:
    """Set one series per namespace; a namespace with no TrainingJob left loses its series."""
    for namespace in _namespaces - set(values):
        gauge.remove(namespace)
    for namespace, value in values.items():
        gauge.labels(namespace=namespace).set(value)
    _namespaces.clear()
    _namespaces.update(values)


async def serve(address: str, healthy: Callable[[], bool]) -> web.AppRunner:
    """Serve /metrics and /healthz on host:port; /healthz fails when `healthy` says the operator is stuck."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if healthy() else web.Response(status=503, text="stuck\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = address.rpartition(":")
    await web.TCPSite(runner, host.strip("[]") or "0.0.0.0", int(port)).start()
    return runner
