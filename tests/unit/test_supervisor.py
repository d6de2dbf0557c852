"""The supervisor's loop without a cluster: what it asks of the apiserver and in which order.

`StandInKube` is a stand-in for the apiserver (named so): it keeps objects in a dict, bumps a
resourceVersion on every write, refuses a stale one with Conflict, and records every call; the watch is
played by feeding the registry the object after each write. The cluster and e2e tiers run the same
supervisor against the real apiserver.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from stopline import supervisor as supervisor_module
from stopline.kube import Conflict
from stopline.metrics.http import client_session
from stopline.metrics.prometheus import PrometheusError
from stopline.registry import Registry
from stopline.supervisor import QUEUE_READ_S, Supervisor

RAW_SPEC = {
    "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
    "objective": {"metric": "val_loss", "mode": "min"},
    "checkpoint": {"pvc": {"claimName": "ckpt"}},
    "metrics": {"interval": "1s"},
}
DEADLINE_S = 10.0


class StandInKube:
    """Stand-in for the apiserver of the operator's Kube client (the unit tier has none)."""

    def __init__(self, registry: Registry) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, ...]] = []
        self.pods: list[dict[str, Any]] = []  # what a list of pods answers (the watch delivers none)
        self.registry = registry
        self._version = 0

    def put(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        body["metadata"]["resourceVersion"] = str(self._version)
        metadata = body["metadata"]
        self.objects[(kind, metadata["namespace"], metadata["name"])] = body
        if kind == "TrainingJob":
            self.registry.observe_training_job(copy.deepcopy(body))  # the watch event
        elif kind == "Job":
            self.registry.observe_job(copy.deepcopy(body))
        return body

    async def read_training_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get(("TrainingJob", namespace, name))
        return copy.deepcopy(found) if found else None

    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("read_job", name))
        found = self.objects.get(("Job", namespace, name))
        return copy.deepcopy(found) if found else None

    async def read_token(self, namespace: str, secret: str, key: str) -> str | None:
        return "token"

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("list_pods", selector))
        return copy.deepcopy(self.pods)

    async def list_workloads(self, namespace: str, job_uid: str) -> list[dict[str, Any]]:
        self.calls.append(("list_workloads", job_uid))
        return []  # no Kueue here

    async def set_suspend(
        self, api_version: str, plural: str, namespace: str, name: str, uid: str, path: str, value: bool
    ) -> bool:
        assert (api_version, plural, path) == ("batch/v1", "jobs", "/spec/suspend"), "a Job's own suspend"
        self.calls.append(("suspend_job", name, uid))
        job = self.objects.get(("Job", namespace, name))
        if job is None or job["metadata"]["uid"] != uid:
            return False
        job["spec"]["suspend"] = True
        self.put("Job", job)
        return True

    async def delete_pod(self, namespace: str, name: str, uid: str, grace_period_s: int = 0) -> None:
        self.calls.append(("delete_pod", name))

    async def patch_training_job_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> dict[str, Any]:
        body = self.objects[("TrainingJob", namespace, name)]
        if resource_version is not None and resource_version != body["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", b"{}")
        self.calls.append(("patch_status", name, str(status.get("phase", ""))))
        body["status"] = {**(body.get("status") or {}), **status}
        return copy.deepcopy(self.put("TrainingJob", body))

    async def post_event(
        self, training_job: Mapping[str, Any], reason: str, message: str, warning: bool = False
    ) -> None:
        self.calls.append(("event", training_job["metadata"]["name"], reason))


def training_job(name: str, namespace: str = "ns", phase: str = "Pending", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"tj-{namespace}-{name}",
            "generation": 1,
            "creationTimestamp": "2026-12-01T00:00:00Z",
            "annotations": {},
        },
        "spec": RAW_SPEC | spec,
        "status": {"phase": phase},
    }


def batch_job(name: str, namespace: str = "ns", owner: str | None = None) -> dict[str, Any]:
    controller = owner or f"tj-{namespace}-{name}"
    references = [{"kind": "TrainingJob", "name": name, "uid": controller, "controller": True}]
    metadata = {"name": name, "namespace": namespace, "uid": f"job-{name}", "ownerReferences": references}
    return {"metadata": metadata, "spec": {"suspend": False}, "status": {}}


def annotate(kube: StandInKube, name: str, key: str, value: str, namespace: str = "ns") -> None:
    body = kube.objects[("TrainingJob", namespace, name)]
    body["metadata"]["annotations"][key] = value
    kube.put("TrainingJob", body)


def phase(kube: StandInKube, name: str, namespace: str = "ns") -> str:
    return str(kube.objects[("TrainingJob", namespace, name)]["status"].get("phase"))


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def supervising(
    kube: StandInKube, registry: Registry, clock: Callable[[], float] = time.time
) -> AsyncIterator[Supervisor]:
    async with client_session() as session:
        supervisor = Supervisor(kube, registry, session, clock)  # type: ignore[arg-type]
        task = asyncio.create_task(supervisor.run())
        try:
            yield supervisor
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await test()

    asyncio.run(main())


def test_a_stop_of_a_job_with_no_pod_seen_suspends_its_job_before_concluding() -> None:
    """A Pending job (queued, or its pods not seen yet) annotated to stop: the pods are read from the
    apiserver, the Job is suspended by its uid so none starts, and only then Stopped/NoCheckpoint."""

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        kube.put("TrainingJob", training_job("queued"))
        kube.put("Job", batch_job("queued"))
        async with supervising(kube, registry):
            annotate(kube, "queued", "stopline.dev/stop", "not needed")
            await until(lambda: phase(kube, "queued") == "Stopped", "phase Stopped")
        order = [call[0] for call in kube.calls if call[0] in ("list_pods", "suspend_job", "patch_status")]
        assert order == ["patch_status", "list_pods", "suspend_job", "patch_status"], kube.calls
        assert ("suspend_job", "queued", "job-queued") in kube.calls
        assert kube.objects[("Job", "ns", "queued")]["spec"]["suspend"] is True
        finished = kube.objects[("TrainingJob", "ns", "queued")]["status"]["conditions"]
        assert {c["type"]: c["reason"] for c in finished}["Finished"] == "NoCheckpoint"

    run(scenario)


def test_a_cancel_never_touches_a_job_of_the_same_name_that_another_object_controls() -> None:
    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        kube.put("TrainingJob", training_job("nightly-etl"))
        kube.put("Job", batch_job("nightly-etl", owner="someone-elses-cronjob"))
        async with supervising(kube, registry):
            annotate(kube, "nightly-etl", "stopline.dev/cancel", "wrong data")
            await until(lambda: phase(kube, "nightly-etl") == "Cancelled", "phase Cancelled")
        assert not [call for call in kube.calls if call[0] in ("suspend_job", "delete_pod")], kube.calls
        assert kube.objects[("Job", "ns", "nightly-etl")]["spec"]["suspend"] is False

    run(scenario)


def test_a_cancel_right_after_a_restart_deletes_the_pods_the_watch_has_not_shown_yet() -> None:
    """The operator restarted; the Job is known but the pod watch has not delivered the running trainer.
    The cancel reads the pods first and deletes them: without that it deleted nothing, wrote Cancelled
    ("nothing was saved") at once, and the trainer saved on the Job's graceful SIGTERM."""

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        kube.put("TrainingJob", training_job("run", phase="Running"))
        kube.put("Job", batch_job("run"))
        references = [{"kind": "Job", "name": "run", "uid": "job-run", "controller": True}]
        labels = {"stopline.dev/job": "run", "batch.kubernetes.io/job-completion-index": "0"}
        metadata = {"name": "run-0", "namespace": "ns", "uid": "pod-run-0", "labels": labels}
        kube.pods = [{"metadata": metadata | {"ownerReferences": references}, "status": {"phase": "Running"}}]
        async with supervising(kube, registry):
            annotate(kube, "run", "stopline.dev/cancel", "wrong data")
            await until(lambda: phase(kube, "run") == "Cancelled", "phase Cancelled")
        order = [call[0] for call in kube.calls if call[0] in ("list_pods", "delete_pod", "patch_status")]
        assert order[:2] == ["list_pods", "delete_pod"] and order[-1] == "patch_status", kube.calls
        assert ("delete_pod", "run-0") in kube.calls

    run(scenario)


def test_a_stopped_jobs_job_unsuspended_by_a_queue_is_suspended_again() -> None:
    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        kube.put("TrainingJob", training_job("done", phase="Stopped"))
        job = kube.put("Job", batch_job("done"))
        async with supervising(kube, registry) as supervisor:
            await supervisor.keep_at_rest(("ns", "done"))
        assert kube.objects[("Job", "ns", "done")]["spec"]["suspend"] is True
        job["spec"]["suspend"] = True
        kube.put("Job", job)
        kube.calls.clear()
        async with supervising(kube, registry) as supervisor:
            await supervisor.keep_at_rest(("ns", "done"))  # already suspended: no call at all
        assert kube.calls == []

    run(scenario)


def exited_pod(job: str, rank: int, phase: str = "Running") -> dict[str, Any]:
    """A trainer pod of the Job `job` whose container exited 0; phase Running is how the kubelet reports it
    until it has torn the pod down (status_manager.mergePodStatus delays the terminal phase)."""
    references = [{"kind": "Job", "name": job, "uid": f"job-{job}", "controller": True}]
    labels = {"stopline.dev/job": job, "batch.kubernetes.io/job-completion-index": str(rank)}
    metadata = {"name": f"{job}-{rank}", "namespace": "ns", "uid": f"pod-{job}-{rank}", "labels": labels}
    terminated = {"exitCode": 0, "reason": "Completed"}
    statuses = [{"name": "trainer", "state": {"terminated": terminated}}]
    return {
        "metadata": metadata | {"ownerReferences": references},
        "status": {"phase": phase, "containerStatuses": statuses},
    }


def test_a_stopped_jobs_job_whose_every_rank_exited_is_left_to_complete_with_its_pods() -> None:
    """Suspending it in the kubelet's window (exit reported, phase still Running) had the Job controller
    delete both ranks' pods, and their termination records with them (a real node's DDP story in CI)."""

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        kube.put("TrainingJob", training_job("ddp", phase="Stopped", replicas=2))
        kube.put("Job", batch_job("ddp"))
        registry.observe_pod(exited_pod("ddp", 0))
        async with supervising(kube, registry) as supervisor:
            await supervisor.keep_at_rest(("ns", "ddp"))  # rank 1 still runs: held
            assert ("suspend_job", "ddp", "job-ddp") in kube.calls
            job = kube.objects[("Job", "ns", "ddp")]
            job["spec"]["suspend"] = False  # as before the hold, now with every rank exited
            kube.put("Job", job)
            registry.observe_pod(exited_pod("ddp", 1))
            kube.calls.clear()
            await supervisor.keep_at_rest(("ns", "ddp"))
        assert not [call for call in kube.calls if call[0] in ("suspend_job", "delete_pod")], kube.calls

    run(scenario)


def poisoned_prometheus(good: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Prometheus answering one good trainer series and, for another tenant, series that are not one."""

    def series(namespace: str, job: str, name: str, value: str) -> dict[str, Any]:
        labels = {"__name__": name, "namespace": namespace, "stopline_job": job, "pod": f"{job}-x7k2p"}
        return {"metric": labels, "value": [0, value]}

    async def query(_: web.Request) -> web.Response:
        result = [
            series("tenant-a", "poison", "stopline_epoch", "NaN"),
            {
                "metric": {
                    "__name__": "stopline_step",
                    "namespace": "tenant-a",
                    "stopline_job": "poison",
                    "pod": "poison-x7k2p",
                }
            },
            series("tenant-b", good, "stopline_epoch", "1"),
            series("tenant-b", good, "stopline_step", "10"),
        ]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return web.Response(text=json.dumps(body), content_type="application/json")

    return query


def test_one_poisoned_series_does_not_end_monitoring_of_the_other_jobs_on_that_prometheus() -> None:
    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/api/v1/query", poisoned_prometheus("healthy"))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            registry = Registry()
            kube = StandInKube(registry)
            metrics = {"interval": "1s", "prometheus": {"url": f"http://127.0.0.1:{port}"}}
            for namespace, name in (("tenant-a", "poison"), ("tenant-b", "healthy")):
                running_job(kube, registry, name, namespace, metrics=metrics)
            async with supervising(kube, registry):
                await until(
                    lambda: "progress" in kube.objects[("TrainingJob", "tenant-b", "healthy")]["status"],
                    "the healthy job's progress",
                )
                annotate(kube, "healthy", "stopline.dev/stop", "enough", namespace="tenant-b")
                annotate(kube, "poison", "stopline.dev/stop", "enough", namespace="tenant-a")
                await until(lambda: phase(kube, "healthy", "tenant-b") != "Running", "tenant-b's stop")
                await until(lambda: phase(kube, "poison", "tenant-a") != "Running", "tenant-a's stop")
        finally:
            await runner.cleanup()

    run(scenario)


def trainer_pod(job: str, namespace: str, name: str | None = None) -> dict[str, Any]:
    """Rank 0's pod of the Job `job`, Running: the registry trusts it (its Job controls it by uid)."""
    references = [{"kind": "Job", "name": job, "uid": f"job-{job}", "controller": True}]
    metadata = {
        "name": name or f"{job}-x7k2p",
        "namespace": namespace,
        "uid": f"pod-{job}",
        "labels": {"stopline.dev/job": job},
        "ownerReferences": references,
    }
    return {"metadata": metadata, "status": {"phase": "Running", "podIP": "127.0.0.1"}}


def running_job(kube: StandInKube, registry: Registry, name: str, namespace: str, **spec: Any) -> None:
    """A Running TrainingJob, its Job and its rank-0 pod, as the watches deliver them."""
    kube.put("TrainingJob", training_job(name, namespace, "Running", **spec))
    kube.put("Job", batch_job(name, namespace))
    registry.observe_pod(trainer_pod(name, namespace))


def series(namespace: str, job: str, pod: str, epoch: int, **values: float) -> list[dict[str, Any]]:
    """A trainer's series as Prometheus answers them while `epoch` runs: its values are of the epoch
    before (stopline_metric_epoch), the last one complete."""
    labels = {"namespace": namespace, "stopline_job": job, "pod": pod, "rank": "0"}
    found: list[dict[str, Any]] = [
        {"metric": {"__name__": "stopline_epoch", **labels}, "value": [0, str(epoch)]},
        {"metric": {"__name__": "stopline_step", **labels}, "value": [0, str(100 * epoch)]},
    ]
    for name, value in values.items():
        found += [
            {"metric": {"__name__": "stopline_metric", "name": name, **labels}, "value": [0, str(value)]},
            {
                "metric": {"__name__": "stopline_metric_epoch", "name": name, **labels},
                "value": [0, str(epoch - 1)],
            },
        ]
    return found


Answer = Callable[[str], Awaitable[list[dict[str, Any]]]]  # a query's text -> its result vector


@asynccontextmanager
async def prometheus_answering(answer: Answer) -> AsyncIterator[str]:
    """A stand-in Prometheus on 127.0.0.1 whose every instant query's result is `answer(query)`; its URL."""

    async def query(request: web.Request) -> web.Response:
        body = {
            "status": "success",
            "data": {"resultType": "vector", "result": await answer(request.query["query"])},
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def namespace_asked(query: str) -> str:
    """The namespaces a trainer query names, `|`-joined, without the regex escapes."""
    found = re.search(r'namespace=~"([^"]*)"', query)
    return found.group(1).replace("\\", "") if found else ""


def status_of(kube: StandInKube, name: str, namespace: str) -> Mapping[str, Any]:
    status: Mapping[str, Any] = kube.objects[("TrainingJob", namespace, name)]["status"]
    return status


def metrics_unavailable(kube: StandInKube, name: str, namespace: str) -> str | None:
    """MetricsAvailable=False's message, if the job shows it."""
    conditions = status_of(kube, name, namespace).get("conditions") or []
    found = [c for c in conditions if c["type"] == "MetricsAvailable" and c["status"] == "False"]
    return str(found[0]["message"]) if found else None


def epoch_read(kube: StandInKube, name: str, namespace: str, epoch: int) -> Callable[[], bool]:
    """The job's status.progress shows this epoch."""
    return lambda: status_of(kube, name, namespace).get("progress", {}).get("epoch") == epoch


GOOD_ENOUGH = [{"name": "good", "threshold": {"metric": "val_accuracy", "mode": "max", "value": 0.95}}]


def test_a_tenant_whose_series_overflow_the_answer_blinds_only_its_own_namespace() -> None:
    """N3 (a): tenant-a's trainer exports 30,000 stopline_metric names; on one Prometheus URL its jobs'
    answer is over 8 MiB. The other tenant's job on that URL is still read and stopped by its threshold."""

    async def answer(query: str) -> list[dict[str, Any]]:
        result = []
        if "tenant-a" in namespace_asked(query):
            flood = {f"junk_{index:05d}": 0.5 for index in range(30_000)}
            result += series("tenant-a", "flood", "flood-x7k2p", epoch=1, **flood)
        if "tenant-b" in namespace_asked(query):
            result += series("tenant-b", "victim", "victim-x7k2p", epoch=2, val_accuracy=0.97)
        return result

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        async with prometheus_answering(answer) as url:
            metrics = {"interval": "1s", "prometheus": {"url": url}}
            running_job(kube, registry, "flood", "tenant-a", metrics=metrics)
            running_job(kube, registry, "victim", "tenant-b", metrics=metrics, criteria=GOOD_ENOUGH)
            async with supervising(kube, registry):
                await until(
                    lambda: phase(kube, "victim", "tenant-b") != "Running", "tenant-b's threshold stop"
                )
                await until(
                    lambda: metrics_unavailable(kube, "flood", "tenant-a") is not None, "tenant-a's condition"
                )
        assert status_of(kube, "victim", "tenant-b")["stopReason"]["type"] == "Threshold"
        assert "over 8 MiB" in str(metrics_unavailable(kube, "flood", "tenant-a"))
        assert phase(kube, "flood", "tenant-a") == "Running"

    run(scenario)


def test_an_impostor_pod_carrying_the_jobs_label_has_no_say_in_its_criteria() -> None:
    """M1: a pod labelled stopline.dev/job=victim (no completion index, so no rank label) is scraped by
    the PodMonitor too; its series claim a later epoch and an accuracy past the threshold. Only the series
    of the pod the job's Job controls are the job's."""

    async def answer(query: str) -> list[dict[str, Any]]:
        own = series("ns", "victim", "victim-x7k2p", epoch=2, val_accuracy=0.5)
        impostor = series("ns", "victim", "aaa-impostor", epoch=9, val_accuracy=0.99)
        return own + [
            {**item, "metric": {k: v for k, v in item["metric"].items() if k != "rank"}} for item in impostor
        ]

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        async with prometheus_answering(answer) as url:
            metrics = {"interval": "1s", "prometheus": {"url": url}}
            running_job(kube, registry, "victim", "ns", metrics=metrics, criteria=GOOD_ENOUGH)
            impostor = trainer_pod("victim", "ns", name="aaa-impostor")
            impostor["metadata"]["ownerReferences"] = []
            registry.observe_pod(impostor)
            async with supervising(kube, registry):
                await until(lambda: "progress" in status_of(kube, "victim", "ns"), "the victim's progress")
        current = status_of(kube, "victim", "ns")
        assert current["phase"] == "Running"
        assert (current["progress"]["epoch"], current["progress"]["metrics"]) == (2, {"val_accuracy": 0.5})

    run(scenario)


def test_slow_queries_of_one_tenant_do_not_hold_back_another_tenants_reads() -> None:
    """N3 (b): 24 jobs of tenant-a, each with two promql criteria, on a Prometheus that answers in 4.5 s
    (under the query deadline): they held every query slot of the operator. Once they query, tenant-b's
    job, on another Prometheus, still reads each epoch at once."""
    trainer = {"epoch": 1}  # where tenant-b's trainer is
    slow_queries_asked = []

    async def slow(query: str) -> list[dict[str, Any]]:
        if query.startswith("slow_"):
            slow_queries_asked.append(query)
        await asyncio.sleep(4.5)
        return []

    async def fast(query: str) -> list[dict[str, Any]]:
        return series("tenant-b", "victim", "victim-x7k2p", epoch=trainer["epoch"])

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        slow_queries = [{"name": f"q{index}", "promql": {"query": f"slow_{index} > 0"}} for index in range(2)]
        async with prometheus_answering(slow) as slow_url, prometheus_answering(fast) as fast_url:
            for index in range(24):
                metrics = {"interval": "1s", "prometheus": {"url": slow_url}}
                running_job(
                    kube, registry, f"hog-{index}", "tenant-a", metrics=metrics, criteria=slow_queries
                )
            victim_metrics = {"interval": "1s", "prometheus": {"url": fast_url}}
            running_job(kube, registry, "victim", "tenant-b", metrics=victim_metrics)
            async with supervising(kube, registry):
                await until(lambda: bool(slow_queries_asked), "tenant-a's criteria queries")
                loop = asyncio.get_running_loop()
                for epoch in (2, 3, 4, 5, 6):  # over 4.5 s: while tenant-a's queries come and go
                    trainer["epoch"], reported = epoch, loop.time()
                    await until(epoch_read(kube, "victim", "tenant-b", epoch), f"tenant-b's epoch {epoch}")
                    assert loop.time() - reported < 5.0, f"tenant-b's epoch {epoch} read late"

    run(scenario)


def test_a_query_that_gets_no_slot_fails_at_its_deadline_saying_the_slots_were_busy() -> None:
    """The deadline of a Prometheus query counts the wait for a slot: with its namespace's slots held (its
    other jobs' slow queries), a query fails after 5 s naming them; it waited as long as they held them."""

    async def answer(query: str) -> list[dict[str, Any]]:
        return []

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        async with prometheus_answering(answer) as url, supervising(kube, registry) as supervisor:
            released = asyncio.Event()

            async def hold() -> None:
                async with supervisor._queries.slot("ns"):
                    await released.wait()

            holders = [asyncio.create_task(hold()) for _ in range(2)]
            try:
                loop = asyncio.get_running_loop()
                asked = loop.time()
                with pytest.raises(PrometheusError, match="no query slot free within 5 s"):
                    await asyncio.wait_for(supervisor._query("ns", url, "up"), DEADLINE_S)
                assert loop.time() - asked < DEADLINE_S
                assert await asyncio.wait_for(supervisor._query("other", url, "up"), 1.0) == []
            finally:
                released.set()
                await asyncio.gather(*holders)

    run(scenario)


def test_a_jobs_slow_criteria_do_not_hold_back_the_reads_of_another_job_on_its_prometheus() -> None:
    """Two jobs of one namespace on one Prometheus: `many`'s 32 promql criteria take a 5 s deadline per
    visit. `quick`'s next visit waited for that one too (one task for the batch); now for its own."""
    trainer = {"epoch": 1}

    async def answer(query: str) -> list[dict[str, Any]]:
        if query.startswith("slow_"):
            await asyncio.sleep(4.5)
            return []
        return series("ns", "quick", "quick-x7k2p", epoch=trainer["epoch"])

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        criteria = [{"name": f"q{index}", "promql": {"query": f"slow_{index} > 0"}} for index in range(32)]
        async with prometheus_answering(answer) as url:
            metrics = {"interval": "1s", "prometheus": {"url": url}}
            running_job(kube, registry, "many", "ns", metrics=metrics, criteria=criteria)
            running_job(kube, registry, "quick", "ns", metrics=metrics)
            async with supervising(kube, registry):
                await until(epoch_read(kube, "quick", "ns", 1), "quick's epoch 1")
                loop = asyncio.get_running_loop()
                for epoch in (2, 3, 4, 5, 6):  # over 5 s: while `many`'s visits come and go
                    trainer["epoch"], reported = epoch, loop.time()
                    await until(epoch_read(kube, "quick", "ns", epoch), f"quick's epoch {epoch}")
                    assert loop.time() - reported < 3.0, f"quick's epoch {epoch} read late"

    run(scenario)


def test_a_queued_job_without_kueue_reads_its_queue_a_few_times_per_queue_read_period() -> None:
    """N10: with no Workload to read (no Kueue, or no right to read it), a held job synced its status at
    every visit: GET TrainingJob, GET Job and the Workloads, every interval. Reads now back off to one per
    QUEUE_READ_S. The clock runs 60 times faster than real time, so 10 minutes take 10 s."""
    start = time.time()
    began = time.monotonic()

    def clock() -> float:
        return start + 60 * (time.monotonic() - began)

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        kube.put("TrainingJob", training_job("held", phase="Queued"))
        job = batch_job("held")
        job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team"}
        job["spec"]["suspend"] = True
        kube.put("Job", job)
        async with supervising(kube, registry, clock):
            await until(lambda: ("read_job", "held") in kube.calls, "the first read of the queue")
            periods = 5
            deadline = asyncio.get_running_loop().time() + DEADLINE_S + 2
            while clock() < start + periods * QUEUE_READ_S:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
        reads = kube.calls.count(("read_job", "held"))
        assert reads <= 2 * periods + 3, f"{reads} reads of the Job in {periods * QUEUE_READ_S:g} s"

    run(scenario)


STOP_BEGAN = 1_795_000_000.7  # a stop decided 0.7 s into a second


def crashed_after_saving(job: str, saved: float) -> dict[str, Any]:
    """Rank 0 of `job` exited 1, its termination message the pointer to weights saved at `saved`."""
    second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(saved)))
    saved_at = f"{second}.{round(saved % 1 * 1000):03d}Z"
    pointer = {"uri": f"/stopline/checkpoints/{job}/ckpt.pt", "epoch": 9, "step": 90, "bytes": 1,
               "sha256": "0" * 64, "savedAt": saved_at, "worldSize": 1}  # fmt: skip
    crashed = exited_pod(job, 0)
    crashed["status"]["containerStatuses"][0]["state"]["terminated"] = {
        "exitCode": 1,
        "reason": "Error",
        "message": json.dumps(pointer),
    }
    return crashed


def test_a_rank_that_crashes_on_the_stop_fails_the_job_though_it_saved_within_the_same_second() -> None:
    """The e2e Kueue story caught it 1 run in 5: the trainer saved its epoch at 12:00:00.300, the stop began
    at 12:00:00.700 and rank 0 then exited 1. The stop's start written to the second (12:00:00) made that
    save look like one made since the stop, so the job ended Stopped/CheckpointSaved, not TrainerFailed."""
    began = STOP_BEGAN

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        kube.put("TrainingJob", training_job("crash", phase="Running"))
        kube.put("Job", batch_job("crash"))
        registry.observe_pod(crashed_after_saving("crash", began - 0.4))
        async with supervising(kube, registry, clock=lambda: began):
            annotate(kube, "crash", "stopline.dev/stop", "enough")
            await until(lambda: phase(kube, "crash") in ("Stopped", "Failed"), "the stop's end")
        finished = {
            c["type"]: c for c in kube.objects[("TrainingJob", "ns", "crash")]["status"]["conditions"]
        }
        assert (phase(kube, "crash"), finished["Finished"]["reason"]) == ("Failed", "TrainerFailed"), finished

    run(scenario)


def test_after_a_restart_a_rank_that_crashes_on_the_stop_fails_the_job_though_it_saved_before_it() -> None:
    """The operator that began the stop is gone; the next one reads the stop's start from stopReason.at.
    Written to the second (12:00:00 for a stop at 12:00:00.700) it made a save at 12:00:00.300 look like
    one made since the stop, and the crash ended Stopped/CheckpointSaved instead of TrainerFailed."""
    began = STOP_BEGAN

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        running_job(kube, registry, "crash", "ns")
        async with supervising(kube, registry, clock=lambda: began):
            annotate(kube, "crash", "stopline.dev/stop", "enough")
            await until(lambda: phase(kube, "crash") == "Stopping", "the stop's start")
        # a new operator: a fresh registry fed by the watches; the rank crashed meanwhile
        registry = Registry()
        restarted = StandInKube(registry)
        for (kind, _, _), body in kube.objects.items():
            restarted.put(kind, copy.deepcopy(body))
        registry.observe_pod(crashed_after_saving("crash", began - 0.4))
        async with supervising(restarted, registry, clock=lambda: began + 5):
            await until(lambda: phase(restarted, "crash") in ("Stopped", "Failed"), "the stop's end")
        status = restarted.objects[("TrainingJob", "ns", "crash")]["status"]
        finished = {c["type"]: c["reason"] for c in status["conditions"]}
        assert (status["phase"], finished["Finished"]) == ("Failed", "TrainerFailed"), status

    run(scenario)


def test_a_slow_resume_judgement_does_not_hold_back_another_jobs_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resume rule forecasts every stopped member of a study (about 0.5 s at 1,000 members, see
    bench/policy/cost.py). A stand-in rule that takes until the other job's stop is done, or 5 s, shows the
    stop concluding meanwhile: judged on the event loop, the stop waited out the whole judgement."""
    started, released = threading.Event(), threading.Event()
    waited: list[bool] = []

    def slow_decide(*_: object) -> None:  # stand-in: a judgement the test ends, else it ends after 5 s
        started.set()
        waited.append(released.wait(timeout=5))

    monkeypatch.setattr(supervisor_module, "decide", slow_decide)

    async def scenario() -> None:
        registry = Registry()
        kube = StandInKube(registry)
        member = training_job("tried", phase="Stopped", resumePolicy={})
        member["metadata"]["labels"] = {"stopline.dev/study": "sweep"}
        kube.put("TrainingJob", member)
        kube.put("TrainingJob", training_job("queued"))
        kube.put("Job", batch_job("queued"))
        async with supervising(kube, registry) as supervisor:
            tried = registry.get(("ns", "tried"))
            assert tried is not None
            supervisor.study_changed(tried)
            await until(started.is_set, "the judgement to start")
            annotate(kube, "queued", "stopline.dev/stop", "not needed")
            await until(lambda: phase(kube, "queued") == "Stopped", "the other job's stop")
            released.set()
            await until(lambda: bool(waited), "the judgement's end")
        assert waited == [True], "the stop waited for the judgement to end"

    run(scenario)
