"""One loop for all TrainingJobs: scrape what is due, decide with the engine, write status, drive stops.

A shared timer, not a task per object: every tick the loop starts a visit for each job that is due and
not already being visited, at most MAX_CONCURRENT at a time, so a slow pod delays only itself. A Running
job is due every spec.metrics.interval; a Stopping job every STOP_POLL_S, and at once when one of its
pods changes; a stop/cancel annotation makes a job due at once (see `poke`).

Writes: progress/best/curve/criteria once per new epoch, the MetricsAvailable condition when it flips,
dryRun.wouldStopAt once, and the phase transitions of the stop protocol (controller.transition).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from contextlib import suppress
from datetime import datetime
from typing import Any

import aiohttp

from stopline import controller, lifecycle, monitoring, stopping
from stopline.api import GPUIdleCriterion, PromQLCriterion, TrainingJobSpec
from stopline.criteria.decision import Decision
from stopline.criteria.engine import CANCEL_ANNOTATION, STOP_ANNOTATION, evaluate
from stopline.criteria.observation import Observation
from stopline.kube import Kube
from stopline.lifecycle import CANCELLED, FINISHED, PENDING, RUNNING, RUNNING_CONDITION, STOPPING, Condition
from stopline.metrics import prometheus
from stopline.metrics.exposition import TrainerReport
from stopline.metrics.scrape import ScrapeError, scrape
from stopline.progress import JobMemory, gpu_seconds_saved, progress_status
from stopline.registry import Key, Registry, Tracked
from stopline.workload import TOKEN_KEY, Owner, token_secret_name

log = logging.getLogger(__name__)

TICK_S = 0.25  # how late past its due time a visit may start; a tick costs one pass over the registry
HEALTHY_WITHIN_S = 30.0
STOP_POLL_S = 1.0
MAX_CONCURRENT = 256  # visits at once: each mostly waits on a pod or the apiserver
SCRAPE_TIMEOUT_S = 5.0
FAILURES_BEFORE_CONDITION = 3  # one lost scrape is noise; three in a row is a condition worth showing
METRICS_AVAILABLE = "MetricsAvailable"
MANUAL_TYPES = ("Manual", "Cancelled")  # a person asked: dryRun does not apply

Fetched = tuple[TrainerReport | None, str | None]  # a report, or why there is none


def _seconds(rfc3339: str | None) -> float | None:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() if rfc3339 else None


class Supervisor:
    def __init__(
        self,
        kube: Kube,
        registry: Registry,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube, self.registry, self.session, self.clock = kube, registry, session, clock
        self.last_tick = clock()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._visiting: dict[Key, asyncio.Task[None]] = {}

    def healthy(self) -> bool:
        """The loop ticked recently: a stuck loop fails /healthz, so the kubelet restarts the operator."""
        return self.clock() - self.last_tick < HEALTHY_WITHIN_S

    def poke(self, key: Key) -> None:
        """Visit this job at the next tick, which starts now."""
        tracked = self.registry.get(key)
        if tracked is not None:
            tracked.next_due = 0.0
            self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                now = self.clock()
                due = [
                    tracked
                    for tracked in self.registry
                    if tracked.key not in self._visiting and tracked.next_due <= now and _wants_visit(tracked)
                ]
                by_server: dict[str, list[Tracked]] = {}
                for tracked in due:
                    url = tracked.spec.metrics.prometheus_url if tracked.spec else None
                    if url and tracked.phase == RUNNING:
                        by_server.setdefault(url, []).append(tracked)
                    else:
                        self._start(tracked, self._visit(tracked))
                for url, batch in by_server.items():
                    task = self._start(batch[0], self._visit_batch(url, batch))
                    for tracked in batch[1:]:
                        self._visiting[tracked.key] = task
                monitoring.count_phases(tracked.phase for tracked in self.registry)
                self.last_tick = now
                self._wake.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
        finally:
            for task in list(self._visiting.values()):
                task.cancel()

    def _start(self, tracked: Tracked, visit: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(visit, name=f"stopline-visit-{tracked.key}")
        self._visiting[tracked.key] = task
        return task

    async def _visit_batch(self, url: str, batch: list[Tracked]) -> None:
        """One PromQL query for the trainer series of every job in `batch`, then each job's visit."""
        keys = [tracked.key for tracked in batch]
        try:
            samples = await prometheus.instant_query(
                self.session, url, prometheus.trainer_query(keys), SCRAPE_TIMEOUT_S
            )
            found, error = prometheus.reports(samples), f"no trainer series in {url} for this job"
        except prometheus.PrometheusError as failure:
            monitoring.SCRAPE_ERRORS.inc(len(batch))
            found, error = {}, str(failure)
        await asyncio.gather(*(self._visit(tracked, (found.get(tracked.key), error)) for tracked in batch))

    async def _visit(self, tracked: Tracked, fetched: Fetched | None = None) -> None:
        started = self.clock()  # the next visit is due an interval after this one began, however long it took
        async with self._slots:
            try:
                if tracked.phase == STOPPING:
                    await self._drive_stop(tracked)
                else:
                    await self._observe(tracked, fetched)
            except Exception:  # one job's failure must not end the loop for all others
                log.exception("visiting TrainingJob %s/%s failed; retrying next interval", *tracked.key)
            finally:
                spec = tracked.spec
                interval = (
                    STOP_POLL_S
                    if tracked.phase == STOPPING or spec is None
                    else spec.metrics.interval.seconds
                )
                tracked.next_due = max(started + interval, self.clock() + TICK_S)
                self._visiting.pop(tracked.key, None)

    async def _observe(self, tracked: Tracked, fetched: Fetched | None) -> None:
        """Read rank 0's metrics (`fetched` when a PromQL batch already did), evaluate the criteria, write
        what changed, begin a stop if one is decided."""
        spec = tracked.spec
        assert spec is not None
        namespace, name = tracked.key
        memory = tracked.memory = tracked.memory or JobMemory.seed(tracked.status)
        if tracked.phase == RUNNING:
            await self._token(tracked)
        report, error = fetched if fetched is not None else await self._scrape(tracked, spec)
        promql, gpu_utilization = await self._live_inputs(tracked, spec)
        scraped_at = self.clock()
        if report is None:
            memory.failures += 1
        else:
            memory.failures = 0
        new_epoch = report is not None and memory.record(spec, report)
        observation = Observation(
            now=scraped_at,
            samples={report.epoch: report.metrics} if report is not None and report.epoch >= 1 else {},
            started_at=_started_at(tracked),
            step=report.step if report is not None else None,
            gpus=spec.gpus,
            gpu_utilization=gpu_utilization,
            promql=promql,
            cohort=self.registry.cohort(tracked),
            stop=tracked.annotations.get(STOP_ANNOTATION),
            cancel=tracked.annotations.get(CANCEL_ANNOTATION),
        )
        evaluation = evaluate(spec, memory.states, observation)
        memory.states = dict(evaluation.states)
        status: dict[str, Any] = {}
        if new_epoch and report is not None:
            status |= progress_status(memory, report, evaluation, controller.now_rfc3339())
        decision = evaluation.decision
        if decision is not None and (not spec.stop_policy.dry_run or decision.type in MANUAL_TYPES):
            await self._begin_stop(tracked, spec, decision, status, scraped_at)
            return
        if decision is not None and not tracked.status.get("dryRun"):
            status["dryRun"] = {"wouldStopAt": decision.as_status() | {"at": controller.now_rfc3339()}}
            message = f"dryRun: would stop now: {decision.type} ({decision.criterion}): {decision.message}"
            await self.kube.post_event(tracked.training_job, "WouldStop", message, False)
        if status:
            await self._write(namespace, name, status)
            if "progress" in status:
                memory.written_epoch = status["progress"]["epoch"]
        await self._report_metrics_availability(tracked, memory, error)

    async def _live_inputs(
        self, tracked: Tracked, spec: TrainingJobSpec
    ) -> tuple[dict[str, bool], float | None]:
        """The promql criteria's results and the GPU utilisation, from spec.metrics.prometheus; a failed
        query is left out, so its criterion keeps its clock (see criteria.live)."""
        url = spec.metrics.prometheus_url
        results: dict[str, bool] = {}
        utilization = None
        if url is None or tracked.phase != RUNNING:
            return results, utilization
        for criterion in spec.criteria:
            if isinstance(criterion, PromQLCriterion):
                query = criterion.query
            elif isinstance(criterion, GPUIdleCriterion):
                query = prometheus.gpu_utilization_query(*tracked.key)
            else:
                continue
            try:
                samples = await prometheus.instant_query(self.session, url, query, SCRAPE_TIMEOUT_S)
            except prometheus.PrometheusError as error:
                log.info("TrainingJob %s/%s: %s", *tracked.key, error)
                continue
            if isinstance(criterion, PromQLCriterion):
                results[criterion.name] = bool(samples)
            elif samples:
                utilization = max(sample.value for sample in samples)
        return results, utilization

    async def _scrape(
        self, tracked: Tracked, spec: TrainingJobSpec
    ) -> tuple[TrainerReport | None, str | None]:
        pod = tracked.rank_zero()
        if tracked.phase != RUNNING:
            return None, None
        if pod is None:
            return None, "no running pod of rank 0 with an IP"
        url = f"http://{pod.ip}:{spec.metrics.port}{spec.metrics.path}"
        try:
            return await scrape(self.session, url, min(SCRAPE_TIMEOUT_S, spec.metrics.interval.seconds)), None
        except ScrapeError as error:
            monitoring.SCRAPE_ERRORS.inc()
            log.info("TrainingJob %s/%s: %s", *tracked.key, error)
            return None, str(error)

    async def _report_metrics_availability(
        self, tracked: Tracked, memory: JobMemory, error: str | None
    ) -> None:
        """MetricsAvailable: False after a few failed scrapes in a row, True when a scrape works."""
        current: Mapping[str, Any] = next(
            (c for c in tracked.status.get("conditions") or [] if c.get("type") == METRICS_AVAILABLE), {}
        )
        if memory.failures >= FAILURES_BEFORE_CONDITION and error and current.get("status") != "False":
            wanted = Condition(
                METRICS_AVAILABLE, False, "ScrapeFailed", f"{error}; check spec.metrics.port and path"
            )
            await self.kube.post_event(tracked.training_job, "ScrapeFailed", wanted.message, True)
        elif memory.failures == 0 and tracked.phase == RUNNING and current.get("status") != "True":
            wanted = Condition(METRICS_AVAILABLE, True, "Scraped", "rank 0's /metrics is read every interval")
        else:
            return
        conditions = lifecycle.merge_conditions(
            tracked.status.get("conditions") or [], [wanted], controller.now_rfc3339()
        )
        await self._write(*tracked.key, {"conditions": conditions})

    async def _write(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await self.kube.patch_training_job_status(namespace, name, status)
        monitoring.STATUS_WRITES.inc()

    async def _begin_stop(
        self,
        tracked: Tracked,
        spec: TrainingJobSpec,
        decision: Decision,
        status: dict[str, Any],
        decided_at: float,
    ) -> None:
        namespace, name = tracked.key
        reason = decision.as_status() | {"at": controller.now_rfc3339()}
        if decision.type == "Cancelled":
            await self._kill(tracked)
            conditions = [
                Condition(lifecycle.STOP_REQUESTED, True, "Cancelled", decision.message),
                Condition(RUNNING_CONDITION, False, "Cancelled", "the pods were deleted"),
                Condition(FINISHED, True, "Cancelled", f"cancelled: {decision.message}; nothing was saved"),
            ]
            phase, allowed = CANCELLED, {PENDING, RUNNING, STOPPING}
        else:
            conditions = [Condition(lifecycle.STOP_REQUESTED, True, decision.type, decision.message)]
            phase, allowed = STOPPING, {PENDING, RUNNING}
        saved = gpu_seconds_saved(
            spec, decision.epoch or 0, tracked.memory.epoch_seconds if tracked.memory else None
        )
        if saved is not None:
            status["gpuSecondsSaved"] = saved
        done = await controller.transition(
            self.kube,
            namespace,
            name,
            allowed=allowed,
            phase=phase,
            conditions=conditions,
            extra=status | {"stopReason": reason},
            seen=tracked.training_job,
        )
        if done is None:
            return
        monitoring.STATUS_WRITES.inc()
        monitoring.STOPS.labels(reason=decision.type).inc()
        if saved:
            monitoring.GPU_SECONDS_SAVED.inc(saved)
        if phase == STOPPING:  # the signal first: the Event is for people, the trainers are waiting
            await self._signal(tracked, spec, decision.message)
            monitoring.DECISION_LATENCY.observe(self.clock() - decided_at)
        await self.kube.post_event(
            done.training_job, phase, f"{decision.type} ({decision.criterion}): {decision.message}", False
        )

    async def _signal(self, tracked: Tracked, spec: TrainingJobSpec, reason: str) -> None:
        """POST /stop to every rank. None acknowledged: suspend the Job, so each pod gets SIGTERM; but while
        no pod answers at all (a trainer still importing torch), ask again at the next poll until
        stopPolicy.ackTimeout: a SIGTERM before the trainer handles it would kill it unsaved."""
        namespace, name = tracked.key
        pods = list(tracked.pods.values())
        timeout = min(spec.stop_policy.ack_timeout.seconds, SCRAPE_TIMEOUT_S)
        answered = await stopping.signal(
            self.session, pods, spec.metrics.port, await self._token(tracked), reason, timeout
        )
        waited = self.clock() - self._stop_began(tracked)
        if (
            answered.acknowledged == 0
            and answered.unreachable
            and waited < spec.stop_policy.ack_timeout.seconds
        ):
            return  # not signalled yet: _drive_stop asks again
        tracked.signalled = True
        if answered.acknowledged == 0:
            await self.kube.suspend_job(namespace, name)
            message = "no trainer pod acknowledged POST /stop; suspended the Job, so each pod gets SIGTERM"
            await self.kube.post_event(tracked.training_job, "StopNotAcknowledged", message, True)

    async def _token(self, tracked: Tracked) -> str | None:
        """The job's stop token (its Secret), read once: while it runs, so a stop costs no extra read."""
        if tracked.token is None:
            namespace, name = tracked.key
            secret = token_secret_name(Owner(name, namespace, ""))
            tracked.token = await self.kube.read_token(namespace, secret, TOKEN_KEY)
        return tracked.token

    def _stop_began(self, tracked: Tracked) -> float:
        """stopReason.at; now while the status that records it has not reached the registry yet."""
        return _seconds((tracked.status.get("stopReason") or {}).get("at")) or self.clock()

    async def _drive_stop(self, tracked: Tracked) -> None:
        spec = tracked.spec
        assert spec is not None
        reason = tracked.status.get("stopReason") or {}
        if not tracked.signalled:  # a restarted operator signals again: a second POST /stop changes nothing
            await self._signal(tracked, spec, str(reason.get("message") or "stop"))
        conclusion = stopping.conclude(
            list(tracked.pods.values()),
            self._stop_began(tracked),
            spec.stop_policy.grace_period.seconds,
            self.clock(),
        )
        if conclusion is None:
            return
        if conclusion.escalate:
            await self._kill(tracked)
        extra: dict[str, Any] = {"checkpoint": conclusion.checkpoint} if conclusion.checkpoint else {}
        done = await controller.transition(
            self.kube,
            *tracked.key,
            allowed={STOPPING},
            phase=conclusion.phase,
            conditions=[
                Condition(RUNNING_CONDITION, False, conclusion.reason, "the stop ended"),
                Condition(FINISHED, True, conclusion.reason, conclusion.message),
            ],
            extra=extra,
            seen=tracked.training_job,
        )
        if done is not None:
            monitoring.STATUS_WRITES.inc()
            await self.kube.post_event(
                done.training_job, conclusion.reason, conclusion.message, conclusion.warning
            )

    async def _kill(self, tracked: Tracked) -> None:
        """Suspend the Job (no new pods), then delete its pods without grace: cancel and escalation."""
        namespace, name = tracked.key
        await self.kube.suspend_job(namespace, name)
        for pod in list(tracked.pods.values()):
            if pod.active:
                await self.kube.delete_pod(namespace, pod.name, grace_period_s=0)


def _wants_visit(tracked: Tracked) -> bool:
    """Running and Stopping jobs; a Pending one only when someone annotated it (nothing to scrape yet)."""
    if tracked.spec is None:
        return False
    if tracked.phase in (RUNNING, STOPPING):
        return True
    return tracked.phase == PENDING and tracked.asked_to_stop


def _started_at(tracked: Tracked) -> float | None:
    """When every rank was up (the Running condition), else when the TrainingJob was created."""
    for condition in tracked.status.get("conditions") or []:
        if condition.get("type") == RUNNING_CONDITION and condition.get("status") == "True":
            return _seconds(condition.get("lastTransitionTime"))
    return _seconds(tracked.training_job["metadata"].get("creationTimestamp"))
