"""One loop for all TrainingJobs: read what is due, decide with the engine, write status, drive stops.

A shared timer, not a task per object: every tick the loop starts a visit for each job that is due and
not already being visited, at most MAX_CONCURRENT at a time, so a slow pod delays only itself. A Running
job is due every spec.metrics.interval; a Stopping job every STOP_POLL_S, and at once when one of its
pods changes; a stop/cancel annotation makes a job due at once (see `poke`).

Prometheus is shared by tenants, so what one namespace does there stays its own: the trainer series are
one query per Prometheus URL and namespace (at most BATCH_JOBS jobs), an answer too large fails only
that query's jobs, and queries take slots fairly (`NamespaceSlots`) within a deadline that counts the
wait for one.

Each visit of a running job writes at most one status patch (through the one status writer): progress,
best, curve and criteria once per new epoch, the MetricsAvailable condition when it flips, dryRun once,
or the move to Stopping with the stop reason. The stop itself is stopline.stopping's state machine.

What the loop keeps per job, by owner: the watched body, pods and Job in the registry; the observation
memory (criteria state, curve, best, failed reads) and the stop token here; each stop's progress in the
stop driver.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiohttp

from stopline import controller, kueue, lifecycle, monitoring, targets
from stopline.api import TrainingJobSpec
from stopline.criteria.decision import Decision
from stopline.criteria.forecast import history_of
from stopline.criteria.live import GPUIdleCriterion, PromQLCriterion
from stopline.criteria.observation import Samples
from stopline.fields import rfc3339
from stopline.kube import Kube
from stopline.lifecycle import Condition, StatusChange, resume_count, seconds
from stopline.metrics import prometheus
from stopline.metrics.epochs import EpochsError, missed_epochs
from stopline.metrics.exposition import TrainerReport
from stopline.metrics.http import endpoint_url, excerpt, message, no_answer
from stopline.metrics.scrape import ScrapeError, scrape
from stopline.pointer import newer
from stopline.progress import JobMemory, gpu_seconds_saved
from stopline.registry import Key, PodView, Registry, Tracked, pod_view, saved_checkpoint, trainer_pods
from stopline.status import StatusWriter
from stopline.stopping import StopDriver, every_rank_exited
from stopline.study import Member, decide, evidence, settings
from stopline.study import history_studies as earlier_studies
from stopline.sweep import sweep_of
from stopline.visit import Inputs, cohort_study, plan
from stopline.vocabulary import (
    ADMITTED,
    CANCEL_ANNOTATION,
    CANCELLED,
    CANCELLED_REASON,
    FAILED,
    HELD_PHASES,
    PENDING,
    PREEMPTED,
    RUNNING,
    STOP_REQUESTED,
    STOPPED,
    STOPPING,
    TERMINAL_PHASES,
    find_condition,
)
from stopline.workload import TOKEN_KEY, Owner, token_secret_name

log = logging.getLogger(__name__)

TICK_S = 0.25  # how late past its due time a visit may start; a tick costs one pass over the registry
HEALTHY_WITHIN_S = 30.0
STOP_POLL_S = 1.0
MAX_CONCURRENT = 256  # visits at once: each mostly waits on a pod or the apiserver
QUERIES_AT_ONCE = 8  # Prometheus answers read at once: each may hold up to 2 x 8 MiB while it is parsed
QUERIES_PER_NAMESPACE = 2  # of those, one namespace's: four tenants at their share still leave no one waiting
BATCH_JOBS = 64  # jobs in one trainer query: its URL names each, its answer holds a few dozen series each
SCRAPE_TIMEOUT_S = 5.0
EPOCHS_PATH = "/epochs"  # the trainer's window of recent epochs (stopline_trainer.metrics.EpochWindow)
PREEMPTIBLE = frozenset({PENDING, RUNNING, PREEMPTED})  # phases in which a queue may take the pods back
QUEUE_READ_S = 120.0  # a held job's Workload is read this often once its words are shown

Fetched = tuple[TrainerReport | None, str | None]  # a report, or why there is none


def stop_url(pod: PodView, port: int) -> str | None:
    """The pod's POST /stop URL (IPv6 in brackets); None when its IP is not an address."""
    try:
        return endpoint_url(pod.ip or "", port, "/stop")
    except ValueError:
        return None


class NamespaceSlots:
    """At most `total` holders at once, and at most `per_namespace` of them for one namespace.

    A namespace takes one of its own slots before it queues for a shared one, and asyncio's Semaphore wakes
    its waiters in order, so another namespace waits behind at most `per_namespace` holders or waiters of
    each namespace: one tenant's many, slow or hostile queries never hold more than its share.
    """

    def __init__(self, total: int, per_namespace: int) -> None:
        self._shared = asyncio.Semaphore(total)
        self._per_namespace = per_namespace
        self._own: dict[str, asyncio.Semaphore] = {}
        # holders and waiters of each namespace: its semaphore goes when the last one leaves
        self._users: Counter[str] = Counter()

    @asynccontextmanager
    async def slot(self, namespace: str) -> AsyncIterator[None]:
        own = self._own.get(namespace)
        if own is None:
            own = self._own[namespace] = asyncio.Semaphore(self._per_namespace)
        self._users[namespace] += 1
        try:
            async with own, self._shared:
                yield
        finally:
            self._users[namespace] -= 1
            if not self._users[namespace]:
                del self._users[namespace], self._own[namespace]


class Supervisor:
    def __init__(
        self,
        kube: Kube,
        registry: Registry,
        session: aiohttp.ClientSession,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube, self.registry, self.session, self.clock = kube, registry, session, clock
        self.writer = StatusWriter(kube, clock)
        self.stops = StopDriver(
            kube, session, self.writer, clock, self._token, stop_url, SCRAPE_TIMEOUT_S, self._file_target
        )
        self.last_tick = clock()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._queries = NamespaceSlots(QUERIES_AT_ONCE, QUERIES_PER_NAMESPACE)
        self._visiting: dict[Key, asyncio.Task[None]] = {}
        self._due: dict[Key, float] = {}
        self._memory: dict[str, JobMemory] = {}  # by TrainingJob uid: a job made again starts afresh
        self._tokens: dict[str, str] = {}  # by TrainingJob uid
        self._queue_waits: dict[str, float] = {}  # by TrainingJob uid: seconds until a held job's next read
        # the study resume rule: the evidence each study was last judged on, its judgement in flight
        self._evidence: dict[tuple[str, str], tuple[tuple[str, str, int], ...]] = {}
        self._judging: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._judge_again: set[tuple[str, str]] = set()

    def healthy(self) -> bool:
        """The loop ticked recently: a stuck loop fails /healthz, so the kubelet restarts the operator."""
        return self.clock() - self.last_tick < HEALTHY_WITHIN_S

    def poke(self, key: Key) -> None:
        """Visit this job at the next tick, which starts now."""
        self._due[key] = 0.0
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                now = self.clock()
                due = [
                    tracked
                    for tracked in self.registry
                    if tracked.key not in self._visiting
                    and self._due.get(tracked.key, 0.0) <= now
                    and _wants_visit(tracked)
                ]
                by_query: dict[tuple[str, str], list[Tracked]] = {}
                for tracked in due:
                    url = tracked.spec.metrics.prometheus_url if tracked.spec else None
                    if url and tracked.phase == RUNNING:
                        by_query.setdefault((url, tracked.key[0]), []).append(tracked)
                    else:
                        self._start([tracked], self._visit(tracked))
                for (url, _), jobs in by_query.items():
                    for first in range(0, len(jobs), BATCH_JOBS):
                        batch = jobs[first : first + BATCH_JOBS]
                        self._start(batch, self._visit_batch(url, batch))
                monitoring.count_phases(self.registry)
                self._forget_gone()
                self.last_tick = now
                self._wake.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
        finally:
            for task in list(self._visiting.values()):
                task.cancel()

    def _start(self, batch: list[Tracked], visit: Coroutine[Any, Any, None]) -> None:
        """Run a visit of `batch`; whatever happens in it, its jobs are free for the next one after."""
        task = asyncio.create_task(visit, name=f"stopline-visit-{batch[0].key}")
        keys = [tracked.key for tracked in batch]
        for key in keys:
            self._visiting[key] = task

        def release(_: asyncio.Task[None]) -> None:
            for key in keys:
                if self._visiting.get(key) is task:
                    del self._visiting[key]

        task.add_done_callback(release)

    def _forget_gone(self) -> None:
        """Drop what was kept for TrainingJobs no longer watched (deleted, or made again)."""
        kept = (
            len(self._memory)
            + len(self._tokens)
            + len(self._queue_waits)
            + len(self._due)
            + len(self._evidence)
        )
        if kept <= 4 * len(self.registry):
            return
        uids = {tracked.uid for tracked in self.registry}
        keys = {tracked.key for tracked in self.registry}
        for by_uid in (self._memory, self._tokens, self._queue_waits):
            for uid in set(by_uid) - uids:
                del by_uid[uid]
        for key in set(self._due) - keys:
            del self._due[key]
        studies = {(tracked.key[0], tracked.study) for tracked in self.registry if tracked.study is not None}
        for study in set(self._evidence) - studies:
            del self._evidence[study]
        self.stops.forget(uids)

    async def _visit_batch(self, url: str, batch: list[Tracked]) -> None:
        """One PromQL query for the trainer series of the rank-0 pods of `batch` (jobs of one namespace),
        then each job's visit on its own, so each is free for its next visit when its own ends, not when
        the slowest one's does. A job whose rank-0 pod is not running has no report, as when scraped."""
        pods = {tracked.key: pod.name for tracked in batch if (pod := tracked.rank_zero()) is not None}
        fetched: dict[Key, Fetched] = {tracked.key: (None, "no running pod of rank 0") for tracked in batch}
        if pods:
            watched = {metric for tracked in batch if tracked.spec for metric in tracked.spec.watched_metrics}
            fetched |= await self._trainer_reports(url, pods, watched)
        for tracked in batch:
            self._start([tracked], self._visit(tracked, fetched[tracked.key]))

    async def _trainer_reports(self, url: str, pods: dict[Key, str], watched: set[str]) -> dict[Key, Fetched]:
        """Each job's report from its rank-0 pod's series, or why there is none."""
        namespace = next(iter(pods))[0]
        try:
            samples = await self._query(namespace, url, prometheus.trainer_query(pods, watched))
            found = prometheus.reports(prometheus.from_rank_zero(samples, pods))
        except Exception as failure:  # a bad answer is no report for these jobs, never an end to their visits
            monitoring.SCRAPE_ERRORS.inc(len(pods))
            unreadable = f"unreadable answer from Prometheus at {excerpt(url)}"
            error = str(failure) if isinstance(failure, prometheus.PrometheusError) else unreadable
            return {key: (None, error) for key in pods}
        where = f"in Prometheus at {excerpt(url)}"
        return {key: (found.get(key), f"no trainer series of pod {pod} {where}") for key, pod in pods.items()}

    async def _visit(self, tracked: Tracked, fetched: Fetched | None = None) -> None:
        started = self.clock()  # the next visit is due an interval after this one began, however long it took
        async with self._slots:
            try:
                if tracked.spec is not None and tracked.spec.selector is not None:
                    await controller.announce(
                        self.kube, await controller.sync_status(self.writer, *tracked.key)
                    )
                    return  # a sweep runs no pod of its own: its members are TrainingJobs, visited as such
                if tracked.target is not None:
                    await self._follow_target(tracked)
                if tracked.phase == STOPPING:
                    await self._drive_stop(tracked)
                elif tracked.phase not in TERMINAL_PHASES:
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
                self._due[tracked.key] = max(started + interval, self.clock() + TICK_S)

    async def _file_target(self, tracked: Tracked) -> targets.TargetRead | None:
        """Read the workload spec.targetRef names, its Jobs and pods, and file them for this job."""
        assert tracked.spec is not None
        read = await controller.read_target(self.kube, tracked.key[0], tracked.spec)
        if read is None:
            self.registry.file_target(tracked, None, (), None)
        else:
            self.registry.file_target(tracked, read.view(), read.pods, read.pod_view)
        return read

    async def _follow_target(self, tracked: Tracked) -> None:
        """A target has no watch of its own here: each visit reads it (its Jobs and pods too), and, unless
        a stop owns the phase, syncs the status with what it says, as a Job's watch event does."""
        read = await self._file_target(tracked)
        if tracked.phase != STOPPING:
            written = await controller.sync_status(self.writer, *tracked.key, read=read)
            if written is not None:
                tracked.observe(written.after)
            await controller.announce(self.kube, written)

    async def _observe(self, tracked: Tracked, fetched: Fetched | None) -> None:
        """Read what is due (rank 0's metrics, or `fetched` when a PromQL batch already did), plan the
        visit without I/O (visit.plan), then carry the plan out: one status patch, a stop begun, Events."""
        spec = tracked.spec
        assert spec is not None
        memory = self._memory.get(tracked.uid)
        resumed = memory is not None and memory.resumes != resume_count(tracked.status)
        if memory is None or resumed:  # resumed since: its criteria (their fired decisions gone), curve and
            memory = self._memory[tracked.uid] = JobMemory.seed(tracked.status)  # epochs as the status says
            if resumed:
                memory.resumed()
        if tracked.phase == RUNNING:
            await self._token(tracked)
        if tracked.phase in HELD_PHASES:
            await self._read_queue(tracked, spec, memory)
        else:
            self._queue_waits.pop(tracked.uid, None)  # held again later: its queue's words are read at once
        inputs = await self._read_inputs(tracked, spec, memory, fetched)
        cohort = self.registry.cohort(tracked, cohort_study(spec))
        history = self.registry.finished(tracked.key[0], history_of(spec.criteria))
        planned = plan(tracked, spec, memory, inputs, cohort, history)
        if planned.stop is not None:
            await self._begin_stop(tracked, spec, memory, planned.stop, dict(planned.fields), inputs.now)
            return
        if not planned.fields and not planned.conditions:
            return
        change = StatusChange(fields=planned.fields, conditions=planned.conditions)
        written = await self.writer.write(*tracked.key, lambda _: change, seen=tracked.training_job)
        if written is None:
            return
        memory.wrote(planned.fields)
        for reason, words, warning in planned.events:
            await self.kube.post_event(tracked.training_job, reason, words, warning)

    async def _read_inputs(
        self, tracked: Tracked, spec: TrainingJobSpec, memory: JobMemory, fetched: Fetched | None
    ) -> Inputs:
        """Everything a visit reads, in one value: rank 0's report (or why none, and whether its pod went
        silent while it runs), the epochs since the last read, the live inputs, the time."""
        if fetched is not None:
            (report, error), unanswered = fetched, False
        else:
            report, error, unanswered = await self._scrape(tracked, spec)
        if fetched is None and report is not None and (answering := tracked.rank_zero()) is not None:
            memory.answered_pod = answering.uid
        silent = unanswered and await self._still_runs(tracked, memory.answered_pod)
        epochs, missed = await self._epochs(tracked, spec, memory, report)
        promql, gpu_utilization = await self._live_inputs(tracked, spec)
        return Inputs(
            report, error, silent, epochs, missed, promql, gpu_utilization, self.clock(), self.writer.now()
        )

    async def _epochs(
        self, tracked: Tracked, spec: TrainingJobSpec, memory: JobMemory, report: TrainerReport | None
    ) -> tuple[Samples, str | None]:
        """The epochs this read brings: the reported one and, when it jumped past the last one fed, those
        in between from the trainer's window; with why some are missing, if they are."""
        if report is None or report.epoch < 1:
            return {}, None
        latest = report.by_epoch()
        first = min(latest, default=report.epoch)
        if first <= memory.fed_epoch + 1:
            return latest, None
        gap = f"epochs {memory.fed_epoch + 1} to {first - 1}"
        pod = tracked.rank_zero()
        try:
            if pod is None:
                raise EpochsError("no running pod of rank 0 to ask")
            url = endpoint_url(pod.ip or "", spec.metrics.port, EPOCHS_PATH)
            timeout = min(SCRAPE_TIMEOUT_S, spec.metrics.interval.seconds)
            found = await missed_epochs(self.session, url, memory.fed_epoch, first, timeout)
        except (EpochsError, ValueError) as error:
            log.info("TrainingJob %s/%s: %s not read: %s", *tracked.key, gap, error)
            return latest, f"{gap} were not read ({error}); the criteria skipped them"
        missing = first - 1 - memory.fed_epoch - len(found)
        note = f"{missing} of {gap} were not in the trainer's window" if missing else None
        return found | latest, note

    async def _live_inputs(
        self, tracked: Tracked, spec: TrainingJobSpec
    ) -> tuple[dict[str, bool], float | None]:
        """The promql criteria's results and the GPU utilisation, from spec.metrics.prometheus, one query
        at a time: a job holds at most one of its namespace's query slots, so the trainer queries and the
        other jobs of its namespace get theirs. A failed query is left out, so its criterion keeps its
        clock (see criteria.live)."""
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
                samples = await self._query(tracked.key[0], url, query)
            except prometheus.PrometheusError as error:
                log.info("TrainingJob %s/%s: %s", *tracked.key, error)
                continue
            if isinstance(criterion, PromQLCriterion):
                results[criterion.name] = bool(samples)
            elif samples:
                utilization = max(sample.value for sample in samples)
        return results, utilization

    async def _query(self, namespace: str, url: str, query: str) -> list[prometheus.Sample]:
        """One instant query for a job of `namespace`, within SCRAPE_TIMEOUT_S from the moment it is asked,
        the wait for a slot included: memory stays bounded whatever answers, and neither another tenant's
        queries nor a slow server of its own make a job wait for one answer longer than that."""
        asked = False
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S), self._queries.slot(namespace):
                asked = True
                return await prometheus.instant_query(self.session, url, query, SCRAPE_TIMEOUT_S)
        except TimeoutError:
            busy = (
                f"no query slot free within {SCRAPE_TIMEOUT_S:g} s: this namespace's queries (at most "
                f"{QUERIES_PER_NAMESPACE} at once) or all the operator's ({QUERIES_AT_ONCE}) were busy"
            )
            problem = no_answer(SCRAPE_TIMEOUT_S) if asked else busy
            raise prometheus.PrometheusError(message(url, problem)) from None

    async def _still_runs(self, tracked: Tracked, answered_pod: str | None) -> bool:
        """Whether the apiserver answers that rank 0's pod, which answered before and now gave no answer at
        all, still runs: then the trainer itself stopped answering (it hangs), not the operator's reach (an
        outage). A pod that never answered (a new run's trainer still starting, after a restart or a
        preemption) is not hung, and neither is one that refuses connections (its trainer exited)."""
        pod = tracked.rank_zero()
        if pod is None or pod.uid != answered_pod:
            return False
        try:
            found = await self.kube.read_pod(tracked.key[0], pod.name)
        except Exception:  # the apiserver does not answer either: the operator is cut off, count nothing
            return False
        if found is None:
            return False
        current = pod_view(found)
        return current.uid == pod.uid and current.reachable

    async def _scrape(
        self, tracked: Tracked, spec: TrainingJobSpec
    ) -> tuple[TrainerReport | None, str | None, bool]:
        """Rank 0's report, or why there is none and whether nothing answered at all (it may hang)."""
        pod = tracked.rank_zero()
        if tracked.phase != RUNNING:
            return None, None, False
        if pod is None:
            return None, "no running pod of rank 0 with an IP", False
        try:
            url = endpoint_url(pod.ip or "", spec.metrics.port, spec.metrics.path)
        except ValueError:
            return None, f"rank 0's pod IP {excerpt(pod.ip or '')!r} is not an address", False
        try:
            timeout = min(SCRAPE_TIMEOUT_S, spec.metrics.interval.seconds)
            return await scrape(self.session, url, timeout), None, False
        except ScrapeError as error:
            monitoring.SCRAPE_ERRORS.inc()
            log.info("TrainingJob %s/%s: %s", *tracked.key, error)
            return None, str(error), error.silent

    async def _begin_stop(
        self,
        tracked: Tracked,
        spec: TrainingJobSpec,
        memory: JobMemory,
        decision: Decision,
        fields: dict[str, Any],
        decided_at: float,
    ) -> None:
        """Cancel: the stop machine kills, then writes Cancelled. A stop: one patch to Stopping with the
        reason (compare-and-set: decided once, however many visits decide it), then the signal at once."""
        # to the millisecond, here and in stopReason.at (which the next operator reads after a restart): a
        # save made just before the stop is not one made since it
        began = self.clock()
        reason = decision.as_status() | {"at": rfc3339(began, "milliseconds")}
        saved = gpu_seconds_saved(spec, decision.epoch or 0, memory.epoch_seconds)
        opening = fields | {"stopReason": reason}
        if saved is not None:
            opening["gpuSecondsSaved"] = saved
        requested = Condition(STOP_REQUESTED, True, decision.type, decision.message)
        if decision.type == CANCELLED_REASON:
            cancel = StatusChange(fields=opening, conditions=(requested,))
            if await self.stops.drive(tracked, decided_at, decision.message, cancel=cancel) is not None:
                monitoring.count_stop(decision.type, tracked.key[0])
            return
        cause = {"type": decision.type, "criterion": decision.criterion}
        # The trainers first, the record second: a status write under load costs seconds at p99. Safe over
        # a restart: the trainer's termination message carries `cause`, and a Job that completes on it
        # ends Stopped for this reason even if the write below never happened (lifecycle.Ending.stopped).
        await self.stops.signal_first(tracked, decision.message, cause)
        monitoring.DECISION_LATENCY.observe(self.clock() - decided_at)

        def begin(body: Mapping[str, Any]) -> StatusChange | None:
            current = body.get("status") or {}
            phase = current.get("phase") or PENDING
            if phase not in (PENDING, RUNNING) and phase not in HELD_PHASES:
                return None
            ran = {"runSeconds": lifecycle.ran(current, phase, self.clock())} if phase == RUNNING else {}
            return StatusChange(fields=opening | ran, conditions=(requested,), phase=STOPPING)

        written = await self.writer.write(*tracked.key, begin, seen=tracked.training_job)
        if written is None:
            return
        tracked.observe(written.after)  # the watch delivers it later; the stop needs it now
        monitoring.count_stop(decision.type, tracked.key[0], saved)
        await self.stops.drive(tracked, began, decision.message, cause)
        message = f"{decision.type} ({decision.criterion}): {decision.message}"
        await self.kube.post_event(written.training_job, STOPPING, message, False)

    async def _drive_stop(self, tracked: Tracked) -> None:
        """A Stopping job's next steps; a cancel annotation made meanwhile turns it into a cancel."""
        reason = tracked.status.get("stopReason") or {}
        began = seconds(reason.get("at")) or self.clock()
        cancel = None
        if CANCEL_ANNOTATION in tracked.annotations:
            words = tracked.annotations.get(CANCEL_ANNOTATION) or "cancelled"
            requested = Condition(STOP_REQUESTED, True, CANCELLED_REASON, words)
            cancel = StatusChange(conditions=(requested,))
        cause = {"type": str(reason.get("type") or ""), "criterion": str(reason.get("criterion") or "")}
        await self.stops.drive(tracked, began, str(reason.get("message") or "stop"), cause, cancel)

    async def keep_at_rest(self, key: Key) -> None:
        """A stopped or cancelled TrainingJob's Job stays suspended, so its pods never train with nobody
        watching; once suspended, one a queue (Kueue) holds is deleted (see kueue.release).
        One whose every rank exited is left to finish by itself, its pods kept for `kubectl logs`."""
        tracked = self.registry.get(key)
        if tracked is None or tracked.phase not in (STOPPED, CANCELLED, FAILED) or tracked.target is not None:
            return
        job, spec = tracked.job, tracked.spec
        finishing = spec is not None and every_rank_exited(tracked.pods, spec.replicas)
        if job is not None and not job.finished and not (job.suspended and not job.queued) and not finishing:
            await kueue.hold(self.kube, key[0], job)
        await kueue.release(self.kube, tracked)

    async def _read_queue(self, tracked: Tracked, spec: TrainingJobSpec, memory: JobMemory) -> None:
        """Why the queue still holds the job, in its own words (Kueue changes its Workload, not the Job, as
        quota comes and goes): every QUEUE_READ_S once they are shown; until then at once, then twice as
        long after each read that found none, up to QUEUE_READ_S, so a cluster without Kueue (or with
        Workloads the operator cannot read) costs a few reads per QUEUE_READ_S, not four per interval. The
        Job's own events still sync the status at once (handlers.follow_job)."""
        now = self.clock()
        admitted = find_condition(tracked.status.get("conditions"), ADMITTED) or {}
        shown = str(admitted.get("message") or "").startswith(kueue.QUEUE_WORDS)
        wait = QUEUE_READ_S if shown else self._queue_waits.get(tracked.uid, 0.0)
        if memory.queue_read_at is not None and now - memory.queue_read_at < wait:
            return
        memory.queue_read_at = now
        self._queue_waits[tracked.uid] = min(max(2 * wait, spec.metrics.interval.seconds), QUEUE_READ_S)
        written = await controller.sync_status(self.writer, *tracked.key)
        await controller.announce(self.kube, written)

    def study_changed(self, tracked: Tracked) -> None:
        """A member of a study ended (or changed once ended): judge the study if its evidence moved."""
        if tracked.study is not None and tracked.phase in TERMINAL_PHASES:
            self._consider((tracked.key[0], tracked.study))

    def _consider(self, study: tuple[str, str]) -> None:
        """When the study's evidence moved (a member ended or was resumed) and it has a resume policy,
        judge it once (`_judge_study`), one judgement per study at a time; a change while one runs is
        considered after it. After an operator restart the first ended member's event judges its study."""
        running = self._judging.get(study)
        if running is not None and not running.done():
            self._judge_again.add(study)
            return
        members = [Member(m.training_job, m.spec) for m in self.registry.study_members(*study)]
        earlier = [
            Member(m.training_job, m.spec)
            for name in earlier_studies(members)
            if name != study[1]
            for m in self.registry.study_members(study[0], name)
        ]
        seen = evidence(members) + evidence(earlier)
        if self._evidence.get(study) == seen or settings(members) is None:
            return
        self._evidence[study] = seen
        judging = self._judge_study(study, members, earlier)
        task = asyncio.create_task(judging, name=f"stopline-resume-{study}")
        self._judging[study] = task

        def again(_: asyncio.Task[None]) -> None:
            del self._judging[study]
            if study in self._judge_again:
                self._judge_again.discard(study)
                self._consider(study)

        task.add_done_callback(again)

    async def _judge_study(
        self, study: tuple[str, str], members: list[Member], earlier: list[Member]
    ) -> None:
        """Resume what the study's rule chooses now, most promising first (controller.resume_by_rule);
        the registry sees each resumed body at once, so the next judgement counts its slot. The rule runs
        in a worker thread: it forecasts every stopped member (about 0.5 s for a study of 1,000 on 2
        cores, bench/policy/cost.py), time the event loop keeps for the other jobs' reads and stops."""
        try:
            decided = await asyncio.to_thread(decide, members, self.clock(), earlier)
            bodies = {member.name: member.training_job for member in members}
            for judgement in decided.resume if decided is not None else ():
                written = await controller.resume_by_rule(
                    self.writer,
                    bodies[judgement.job],
                    judgement.message,
                    judgement.probability,
                    self.registry.observe_training_job,
                )
                if written is not None:
                    log.info("study %s/%s: resumed %s: %s", *study, judgement.job, judgement.message)
        except Exception:  # a failed write (the apiserver away): judged again at the study's next change
            log.exception("study %s/%s: the resume rule's judgement failed", *study)
            self._evidence.pop(study, None)

    async def keep_checkpoint(self, key: Key, pod: PodView) -> None:
        """A trainer pod of a job whose Job a queue suspended (a preemption) saved on SIGTERM: its checkpoint
        goes to status.checkpoint now, while the pod is still seen (the Job controller deletes it), so a
        stop while Preempted ends with those weights. Only a newer checkpoint than the one shown."""
        tracked = self.registry.get(key)
        job = tracked.job if tracked is not None else None
        if tracked is None or job is None or not job.suspended or tracked.phase not in PREEMPTIBLE:
            return
        saved = saved_checkpoint(trainer_pods([pod], job))
        shown = tracked.status.get("checkpoint")
        if saved is None or not newer(saved[1], shown if isinstance(shown, Mapping) else None):
            return
        change = StatusChange(fields={"checkpoint": saved[1]})
        await self.writer.write(*key, lambda _: change, seen=tracked.training_job)

    async def _token(self, tracked: Tracked) -> str | None:
        """The job's stop token (its Secret), read once: while it runs, so a stop costs no extra read."""
        token = self._tokens.get(tracked.uid)
        if token is None:
            namespace, name = tracked.key
            owner = sweep_of(tracked.training_job) or name  # a sweep's members share its token
            secret = token_secret_name(Owner(owner, namespace, ""))
            token = await self.kube.read_token(namespace, secret, TOKEN_KEY)
            if token is not None:
                self._tokens[tracked.uid] = token
        return token


def _wants_visit(tracked: Tracked) -> bool:
    """Running and Stopping jobs; Queued and Preempted ones too (their criteria's clocks pause, a budget
    may already be spent); a Pending one only when someone annotated it (nothing to read yet), or when it
    governs a target (no watch event says when the target starts: its visit reads it)."""
    if tracked.spec is None or tracked.phase in TERMINAL_PHASES:
        return False
    if tracked.phase in (RUNNING, STOPPING) or tracked.phase in HELD_PHASES:
        return True
    governs = tracked.target is not None or tracked.spec.selector is not None
    return tracked.phase == PENDING and (tracked.asked_to_stop or governs)
