"""Stand-ins for N trainer pods in one asynchronous process: the kubelet's status writes and the pods' HTTP.

What the operator sees is what it sees of real pods: each pod of the Job controller is marked Running with
its own address on 127.1.x.y, whose /metrics is the real trainer's exposition (stopline_trainer's
TrainerMetrics), and whose POST /stop answers 202 like the trainer's; after a short save the pod is marked
terminated with a checkpoint manifest as rank 0's termination message. A stand-in Prometheus HTTP API
answers the operator's trainer query from the same state, for the PromQL read path.

Each job's epochs tick every `epoch_s` from its own phase, so scrapes and writes are spread out as in a
real fleet; a job's objective crosses the threshold at the first epoch after the time the benchmark
gives it (`cross_after`), which is when the deciding sample becomes available.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from stopline.vocabulary import JOB_LABEL
from stopline_local.kubelet import terminated_status
from stopline_trainer.checkpoint import TAIL_EPOCHS, Manifest
from stopline_trainer.control import StopFlag
from stopline_trainer.metrics import TrainerMetrics

OBJECTIVE = "val_loss"
THRESHOLD = 0.5  # the jobs' threshold criterion: stop once val_loss < 0.5
STEPS_PER_EPOCH = 100
SAVE_S = 0.5  # how long the stand-in "saves" before its pod reports the checkpoint manifest
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def checkpoint_message(
    job: str, namespace: str, epoch: int, uri: str, tail: list[list[float]] | None = None
) -> str:
    """Rank 0's termination message after its save, made by stopline_trainer's own Manifest; `tail`: the
    objective of the last epochs, as a trainer that ran to its end leaves it."""
    manifest = Manifest(
        uri=uri,
        epoch=epoch,
        step=epoch * STEPS_PER_EPOCH,
        size=1024,
        sha256="0" * 64,
        saved_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        world_size=1,
        job=job,
        namespace=namespace,
        tail=tail or [],
    )
    return manifest.termination_message().decode()


def address(index: int) -> str:
    """A loopback address of its own for job `index` (all of 127/8 is loopback on Linux)."""
    return f"127.1.{index // 250}.{index % 250 + 1}"


@dataclass
class StandInJob:
    """One TrainingJob's rank-0 pod as the operator reaches it."""

    name: str
    ip: str
    epoch_s: float
    metrics: TrainerMetrics = field(default_factory=lambda: TrainerMetrics(StopFlag()))
    pod: str | None = None
    running_since: float | None = None  # epoch 1 ends epoch_s after this
    cross_after: float | None = None  # the benchmark's "cross the threshold from now on"
    finish_at: int | None = None  # a job that runs to its end: exits 0 after this epoch, unasked
    stop_received: float | None = None
    stopped_epoch: int | None = None
    _exposition: tuple[int, float, bytes] | None = None  # (epoch, value, text) last served

    def epoch(self, now: float) -> int:
        if self.running_since is None:
            return 0
        if self.stopped_epoch is not None:
            return self.stopped_epoch
        return max(0, int((now - self.running_since) // self.epoch_s))

    def epoch_end(self, epoch: int) -> float:
        assert self.running_since is not None
        return self.running_since + epoch * self.epoch_s

    @property
    def crossing_epoch(self) -> int | None:
        """The first epoch that ends at or after cross_after: the epoch whose sample says "stop"."""
        if self.cross_after is None or self.running_since is None:
            return None
        return max(1, int(-(-(self.cross_after - self.running_since) // self.epoch_s)))

    @property
    def sample_available(self) -> float | None:
        """When the deciding sample appeared on /metrics (and in the stand-in Prometheus)."""
        epoch = self.crossing_epoch
        return None if epoch is None else self.epoch_end(epoch)

    def objective(self, epoch: int) -> float:
        crossing = self.crossing_epoch
        if crossing is not None and epoch >= crossing:
            return THRESHOLD - 0.1
        return 1.0 - 0.001 * epoch  # improving, never below the threshold within 400 epochs

    def report(self, now: float) -> tuple[int, float, bytes]:
        """The epoch, the objective and the /metrics text (made again only when they change)."""
        epoch = self.epoch(now)
        value = self.objective(epoch)
        if self._exposition is None or self._exposition[:2] != (epoch, value):
            # every epoch since the last read, in order, as a trainer observes each one it ends
            first = self._exposition[0] + 1 if self._exposition is not None else 1
            for each in range(min(first, epoch), epoch + 1):
                self.metrics.observe(each, each * STEPS_PER_EPOCH, {OBJECTIVE: self.objective(each)})
            self._exposition = (epoch, value, self.metrics.exposition())
        return self._exposition


class Fleet:
    """The stand-in pods of one namespace, and a stand-in Prometheus; `serve` runs until cancelled."""

    def __init__(self, server: str, token: str, namespace: str, port: int, epoch_s: float) -> None:
        self.server, self.namespace, self.port, self.epoch_s = server, namespace, port, epoch_s
        self.headers = {"Authorization": f"Bearer {token}"}
        self.jobs: dict[str, StandInJob] = {}
        self.by_ip: dict[str, StandInJob] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._writes = asyncio.Semaphore(16)
        self._tasks: set[asyncio.Task[None]] = set()
        self.prometheus_queries = 0
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a listening socket per pod

    def add(self, index: int, name: str, epoch_s: float | None = None, finish_at: int | None = None) -> None:
        job = StandInJob(name, address(index), epoch_s or self.epoch_s, finish_at=finish_at)
        self.jobs[name] = job
        self.by_ip[job.ip] = job

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=False, limit=32), headers=self.headers
        )
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/epochs", self._epochs)
        app.router.add_post("/stop", self._stop)
        app.router.add_route("*", "/api/v1/query", self._query)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()

    async def listen(self, host: str, port: int) -> None:
        assert self._runner is not None
        await web.TCPSite(self._runner, host, port, backlog=1024).start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- the kubelet's part ------------------------------------------------------------------------------

    async def run_pods(self) -> None:
        """Watch the namespace's trainer pods; serve each new one on its address and mark it Running."""
        assert self._session is not None
        path = f"{self.server}/api/v1/namespaces/{self.namespace}/pods"
        params = {"labelSelector": JOB_LABEL, "watch": "1", "allowWatchBookmarks": "false"}
        while True:
            timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
            async with self._session.get(path, params=params, timeout=timeout) as response:
                response.raise_for_status()
                async for line in response.content:
                    event = json.loads(line)
                    if event["type"] == "ADDED":
                        self._spawn(self._start_pod(event["object"]))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_pod(self, pod: Mapping[str, Any]) -> None:
        job = self.jobs.get(pod["metadata"]["labels"][JOB_LABEL])
        if job is None or job.pod is not None or (pod.get("status") or {}).get("podIP"):
            return
        job.pod = pod["metadata"]["name"]
        await self.listen(job.ip, self.port)
        status = {
            "phase": "Running",
            "podIP": job.ip,
            "podIPs": [{"ip": job.ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
        job.running_since = time.time() - random.uniform(0, self.epoch_s)  # each job at its own phase
        await self._patch_pod(job.pod, status)

    async def _patch_pod(self, pod: str, status: Mapping[str, Any]) -> None:
        assert self._session is not None
        url = f"{self.server}/api/v1/namespaces/{self.namespace}/pods/{pod}/status"
        async with self._writes:
            for attempt in range(5):
                async with self._session.patch(
                    url, data=json.dumps({"status": status}), headers=MERGE_PATCH
                ) as response:
                    if response.status < 500 and response.status != 429:
                        response.raise_for_status()
                        return
                await asyncio.sleep(0.2 * 2**attempt)

    async def _terminate(self, job: StandInJob) -> None:
        """The trainer saved and exited 0: rank 0's termination message is the checkpoint manifest."""
        await asyncio.sleep(SAVE_S)
        epoch = job.stopped_epoch or 0
        uri = f"file:///checkpoints/{job.name}/epoch-{epoch}.pt"
        tail = [[e, job.objective(e)] for e in range(max(1, epoch - TAIL_EPOCHS + 1), epoch + 1)]
        assert job.pod is not None
        await self._patch_pod(
            job.pod, terminated_status(checkpoint_message(job.name, self.namespace, epoch, uri, tail))
        )

    def _read(self, job: StandInJob, now: float) -> tuple[int, float, bytes]:
        """What the pod serves now; a job past its last epoch ends, as a trainer that ran to its end."""
        reported = job.report(now)
        if job.finish_at is not None and job.stop_received is None and reported[0] >= job.finish_at:
            job.stopped_epoch, job.stop_received = job.finish_at, now
            self._spawn(self._terminate(job))
        return reported

    # -- the pods' HTTP ----------------------------------------------------------------------------------

    def _job_of(self, request: web.Request) -> StandInJob:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        job = self.by_ip.get(sockname[0]) if sockname else None
        if job is None:
            raise web.HTTPNotFound()
        return job

    async def _metrics(self, request: web.Request) -> web.Response:
        _, _, text = self._read(self._job_of(request), time.time())
        return web.Response(body=text, content_type="text/plain")

    async def _epochs(self, request: web.Request) -> web.Response:
        """The trainer's window of recent epochs (its EpochWindow), as the real trainer serves it."""
        job = self._job_of(request)
        self._read(job, time.time())
        after = int(request.query.get("after") or 0)
        return web.Response(body=job.metrics.epochs.after(after), content_type="application/json")

    async def _stop(self, request: web.Request) -> web.Response:
        job = self._job_of(request)
        now = time.time()
        if job.stop_received is None:
            job.stopped_epoch = job.epoch(now)
            job.stop_received = now
            self._spawn(self._terminate(job))
        return web.json_response({"stopping": True, "rank": 0}, status=202)

    # -- a stand-in Prometheus ---------------------------------------------------------------------------

    async def _query(self, request: web.Request) -> web.Response:
        """/api/v1/query for the operator's trainer selector: `stopline_job=~"a|b|..."` over our jobs."""
        self.prometheus_queries += 1
        query = request.query.get("query") or (await request.post()).get("query") or ""
        wanted = re.search(r'stopline_job=~"((?:[^"\\]|\\.)*)"', str(query))
        if wanted is None:
            return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})
        names = re.compile(re.sub(r"\\(.)", r"\1", wanted.group(1)))
        now = time.time()
        result = []
        for job in self.jobs.values():
            if job.running_since is None or not names.fullmatch(job.name):
                continue
            epoch, value, _ = self._read(job, now)
            labels = {"namespace": self.namespace, "stopline_job": job.name, "pod": str(job.pod), "rank": "0"}
            series = {
                "stopline_epoch": ({}, epoch),
                "stopline_step": ({}, epoch * STEPS_PER_EPOCH),
                "stopline_metric": ({"name": OBJECTIVE}, value),
                "stopline_epoch_duration_seconds": ({}, self.epoch_s),
            }
            for metric, (extra, number) in series.items():
                sample = {"__name__": metric, **labels, **extra}
                result.append({"metric": sample, "value": [now, str(number)]})
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})
