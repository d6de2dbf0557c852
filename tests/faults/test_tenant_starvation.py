"""One tenant loads every resource the operator shares, and another tenant's jobs still stop on time (N3).

The attacker's namespace: a Prometheus (a stand-in on 127.0.0.x) that answers its queries, the trainer
query of its namespace and its promql criteria, with 30,000 series of one job (over the operator's 8 MiB
cap), each after 4.5 s, just under the query deadline; two jobs with 32 promql criteria each (the CRD's
most) on it; jobs whose checkpoint is on an object store that trickles its answer a byte every 2 s; and
pods created and deleted under one of its jobs' names, as fast as the apiserver takes them. The victim's
namespace: a job on the same Prometheus URL stopped by its threshold, and a scraped job stopped by
`kubectl annotate`. The operator is restarted once every job runs, so it meets the attack from its first
visit, as an operator restarted during a lasting attack does.

`story` is the whole of it, with the operator started by the caller: in this process (kopf.testing) here,
as its own process in bench/hostile/tenant_starvation.py, which measures its memory.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from faults.support import LoopbackServer, operator_watching, start_pod, trainer_series
from operatorharness import (
    WAIT_S,
    checkpoint_message,
    get,
    manifest,
    phase_is,
    reserve_address,
    running_trainer,
    stop_recorded,
    terminate,
)
from stopline_local.controlplane import ADMIN_TOKEN, ControlPlane, wait_until

pytestmark = pytest.mark.faults

SLOW_S = 4.5  # each of the attacker's answers: under the operator's 5 s query deadline, so it holds a slot
FLOOD_SERIES = 30_000  # one trainer's stopline_metric names: about 9 MiB of answer, over the 8 MiB cap
CRITERIA = 32  # promql criteria per job, the CRD's most
TRICKLE_S = 2.0  # the object store's answer: one byte this often
STOP_WITHIN_S = 20.0  # a victim's stop, from its cause to POST /stop: about 2 s unloaded, an interval of 1 s
GOOD_ENOUGH = [{"name": "good", "threshold": {"metric": "val_accuracy", "mode": "max", "value": 0.95}}]
URI = "/stopline/checkpoints/{name}/step-000200.pt"


class TenantPrometheus:
    """Prometheus' query API shared by both tenants. The attacker's queries, its trainer query (naming its
    namespace) and its promql criteria (`slow_...`), get `series` series of `flood`'s pod after `delay_s`;
    any other query gets the victim's series at once."""

    def __init__(self, address: tuple[str, int], attacker: str, series: int, delay_s: float) -> None:
        self.attacker, self.series, self.delay_s = attacker, series, delay_s
        self.flood = b""
        self.victim: list[dict[str, Any]] = []
        self.attacker_queries = 0
        app = web.Application()
        app.router.add_get("/api/v1/query", self._query)
        self.server = LoopbackServer(app, *address)
        self.url = self.server.base_url

    def flood_from(self, job: str, pod: str) -> None:
        values = {f"loss_{index:05d}": 0.5 for index in range(self.series)}
        series = trainer_series(self.attacker, job, pod, 1, **values)
        self.flood = _vector(series)

    async def _query(self, request: web.Request) -> web.Response:
        query = request.query.get("query", "")
        named = re.search(r'namespace=~"([^"]*)"', query)
        namespaces = named.group(1).replace("\\", "").split("|") if named else []
        if query.startswith("slow_") or self.attacker in namespaces:
            self.attacker_queries += 1
            await asyncio.sleep(self.delay_s)
            return web.Response(body=self.flood, content_type="application/json")
        return web.Response(body=_vector(self.victim), content_type="application/json")

    def close(self) -> None:
        self.server.close()


def _vector(result: list[dict[str, Any]]) -> bytes:
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


class TricklingStore:
    """An object store that answers every request one byte every TRICKLE_S and never finishes."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="trickling-store", daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._answer, *address), self.loop
        ).result(10)
        self.url = f"http://{address[0]}:{address[1]}"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n":
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(TRICKLE_S)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the operator hung up: what it should do
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class PodChurn:
    """Pods labelled stopline.dev/job=`job` (impostors: no owner), each created and deleted at once,
    `workers` at a time, through the apiserver's API, until close(); `created` counts them."""

    def __init__(self, plane: ControlPlane, namespace: str, job: str, workers: int = 4) -> None:
        self.url = f"{plane.server}/api/v1/namespaces/{namespace}/pods"
        self.job, self.workers = job, workers
        self.created = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="pod-churn", daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        tls = ssl.create_default_context()
        tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls), headers=headers) as session:
            await asyncio.gather(*(self._churn(session, worker) for worker in range(self.workers)))

    async def _churn(self, session: aiohttp.ClientSession, worker: int) -> None:
        for count in range(1_000_000):
            if self.stopping.is_set():
                return
            name = f"{self.job}-churn-{worker}-{count}"
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"stopline.dev/job": self.job}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "trainer", "image": "ghcr.io/someone/else:1"}],
                },
            }
            async with session.post(self.url, json=pod) as created:
                if created.status != 201:
                    await asyncio.sleep(0.5)  # the namespace's ServiceAccount is not there yet
                    continue
            self.created += 1
            async with session.delete(f"{self.url}/{name}", params={"gracePeriodSeconds": "0"}):
                pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(30)


@dataclass
class Figures:
    """What the victims saw under the attack: seconds from each stop's cause to its POST /stop (None:
    not within STOP_WITHIN_S), and how much of the attack the operator met meanwhile."""

    threshold_stop_s: float | None
    annotated_stop_s: float | None
    pods_churned: int
    attacker_queries: int
    store_requests: int

    def lines(self) -> list[str]:
        def seconds(value: float | None) -> str:
            return f"{value:.1f} s" if value is not None else f"none within {STOP_WITHIN_S:g} s"

        return [
            f"victim on the shared Prometheus, threshold -> POST /stop: {seconds(self.threshold_stop_s)}",
            f"victim scraped, kubectl annotate -> POST /stop: {seconds(self.annotated_stop_s)}",
            f"meanwhile: {self.pods_churned} pods churned, {self.attacker_queries} attacker's queries asked, "
            f"{self.store_requests} object store requests trickled",
        ]


def start_pods(plane: ControlPlane, namespace: str, training_jobs: list[dict[str, Any]]) -> dict[str, str]:
    """Each TrainingJob applied with its pod marked Running at a fresh address no one serves; name -> pod."""
    return {
        job["metadata"]["name"]: start_pod(plane, namespace, job, reserve_address()) for job in training_jobs
    }


def stopped_within(check: Callable[[], Any], what: str) -> float | None:
    """Seconds until `check` holds, or None when it did not within STOP_WITHIN_S."""
    began = time.monotonic()
    try:
        wait_until(check, STOP_WITHIN_S, what, interval=0.1)
    except TimeoutError:
        return None
    return time.monotonic() - began


def story(
    plane: ControlPlane,
    victim: str,
    attacker: str,
    operator: Callable[[], AbstractContextManager[object]],
    flood_series: int = FLOOD_SERIES,
    delay_s: float = SLOW_S,
    churned: int = 300,
) -> Figures:
    """The jobs made, then the operator restarted into the attack (an attack that lasts meets every
    restart), then each victim's stop, timed; the victims are then stopped for good (checkpoint written)
    when both stops came. `operator` is entered twice. `flood_series` and `delay_s`: the attacker's
    answers; `churned`: the pods created and deleted before the victims' stops (the churn goes on)."""
    with ExitStack() as stack:
        prometheus = TenantPrometheus(reserve_address(), attacker, flood_series, delay_s)
        stack.callback(prometheus.close)
        store = TricklingStore(reserve_address())
        stack.callback(store.close)
        shared = {"interval": "1s", "prometheus": {"url": prometheus.url}}
        slow = [
            {"name": f"slow-{index}", "promql": {"query": f"slow_{index} > 0"}} for index in range(CRITERIA)
        ]
        on_store = {"objectStore": {"uri": "s3://checkpoints/runs", "endpoint": store.url}}
        with operator():
            attackers = start_pods(
                plane,
                attacker,
                [manifest("flood", criteria=[], metrics=dict(shared))]
                + [manifest(f"hog-{index}", criteria=slow, metrics=dict(shared)) for index in range(2)]
                + [manifest(f"store-{index}", criteria=[], checkpoint=dict(on_store)) for index in range(3)],
            )
            on_threshold, threshold_pod = stack.enter_context(
                running_trainer(
                    plane, victim, manifest("threshold", criteria=GOOD_ENOUGH, metrics=dict(shared))
                )
            )
            on_annotation, annotated_pod = stack.enter_context(
                running_trainer(plane, victim, manifest("annotated", criteria=[], metrics={"interval": "1s"}))
            )
        prometheus.flood_from("flood", attackers["flood"])
        prometheus.victim = trainer_series(victim, "threshold", threshold_pod, 1, val_accuracy=0.5)
        on_annotation.report(1, 100, val_loss=1.0)
        stack.enter_context(operator())  # restarted into the attack

        churn = PodChurn(plane, attacker, "flood")
        stack.callback(churn.close)
        for index in range(3):  # each store job's rank 0 saved to the store: the operator verifies it
            uri = f"s3://checkpoints/runs/store-{index}/step-1.pt"
            terminate(plane, attacker, attackers[f"store-{index}"], checkpoint_message(1, 1, uri))
        wait_until(
            lambda: prometheus.attacker_queries >= 4 and store.requests >= 3 and churn.created >= churned,
            60,
            "the attack in full swing: its queries answered, its checkpoints verified, its pods churned",
        )

        prometheus.victim = trainer_series(victim, "threshold", threshold_pod, 2, val_accuracy=0.97)
        threshold_s = stopped_within(lambda: on_threshold.stop_reason, "the threshold victim's POST /stop")
        plane.kubectl("annotate", "tj", "annotated", "-n", victim, "stopline.dev/stop=enough")
        annotated_s = stopped_within(lambda: on_annotation.stop_reason, "the annotated victim's POST /stop")
        figures = Figures(
            threshold_s, annotated_s, churn.created, prometheus.attacker_queries, store.requests
        )
        if threshold_s is None or annotated_s is None:
            return figures

        for name, pod in (("threshold", threshold_pod), ("annotated", annotated_pod)):
            stop_recorded(plane, victim, name)
            terminate(plane, victim, pod, checkpoint_message(2, 200, URI.format(name=name)))
            wait_until(phase_is(plane, victim, name, "Stopped"), WAIT_S, f"{name}: phase Stopped")
        return figures


def resident_mib() -> tuple[float, float]:
    """This process's VmRSS now and VmHWM (its peak), in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_a_tenant_flooding_prometheus_the_object_store_and_the_pod_watch_delays_no_other_tenants_stop(
    plane: ControlPlane, namespace: str, other_namespace: str
) -> None:
    """The attacker is other_namespace; `namespace`'s two jobs stop, each within STOP_WITHIN_S of its
    cause, and end Stopped with their checkpoints."""
    figures = story(plane, namespace, other_namespace, lambda: operator_watching(namespace, other_namespace))
    now, peak = resident_mib()
    print(*figures.lines(), sep="\n")
    print(f"this process (the operator in it, and the stand-ins): VmRSS {now:.0f} MiB, peak {peak:.0f} MiB")
    assert figures.threshold_stop_s is not None, figures.lines()
    assert figures.annotated_stop_s is not None, figures.lines()
    for name in ("threshold", "annotated"):
        stopped = get(plane, namespace, "tj", name)["status"]
        assert stopped["checkpoint"]["uri"] == URI.format(name=name)
    assert figures.pods_churned >= 200 and figures.store_requests >= 3
