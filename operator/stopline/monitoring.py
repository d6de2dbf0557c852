"""The operator's own metrics, every one defined here, and the HTTP endpoint that serves them with /healthz.

Names are what the chart's Grafana dashboard and alerts read; change them together.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from stopline.vocabulary import (
    CANCELLED,
    FAILED,
    PENDING,
    PREEMPTED,
    QUEUED,
    RUNNING,
    STOPPED,
    STOPPING,
    SUCCEEDED,
)

TRAINING_JOBS = Gauge("stopline_training_jobs", "TrainingJobs the operator watches, by phase", ["phase"])
STOPS = Counter("stopline_stops", "Stops begun, by the stop reason's type", ["reason"])
DECISION_LATENCY = Histogram(
    "stopline_decision_latency_seconds",
    "From the end of the read that brought the deciding sample to the end of the first POST /stop round",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
SCRAPE_ERRORS = Counter("stopline_scrape_errors", "Failed reads of a trainer pod's /metrics")
STATUS_WRITES = Counter("stopline_status_writes", "Patches of TrainingJob status (all go through one writer)")
GPU_SECONDS_SAVED = Counter(
    "stopline_gpu_seconds_saved", "Estimated GPU-seconds not spent: epochs left to maxEpochs at stop time"
)
PHASES = (QUEUED, PENDING, RUNNING, PREEMPTED, STOPPING, STOPPED, SUCCEEDED, FAILED, CANCELLED)


def count_phases(phases: Iterable[str]) -> None:
    """Set the jobs-by-phase gauge; every known phase is exported, zero included, so graphs do not gap."""
    tally = Tally(phases)
    for phase in set(PHASES) | set(tally):
        TRAINING_JOBS.labels(phase=phase).set(tally.get(phase, 0))


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
