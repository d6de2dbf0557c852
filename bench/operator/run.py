"""The operator at scale: N TrainingJobs on the real test apiserver, their pods stood in for, measured.

For each N (and each read path: scraping the pods, or one PromQL query per interval) it starts a fresh
control plane (etcd, kube-apiserver with an audit log of the operator's requests, kube-controller-manager),
the operator as its own process with a ServiceAccount token, and the stand-in fleet (fleet.py). Then:
1. start: create N TrainingJobs; time until every one is Running (the operator creates the Secret and Job,
   the Job controller the pod, the fleet marks it Running, the operator sees the Job active);
2. steady: every job trains (an epoch every --epoch s, read every --interval s); the operator's CPU,
   the apiserver requests it makes and its status writes are counted over --steady s;
3. stop: each job's objective crosses its threshold at a time spread over --spread s; decision latency is
   from the moment the deciding sample is on /metrics to the moment the pod receives POST /stop;
4. the time until every TrainingJob is Stopped (the fleet answers with a checkpoint manifest).

Run: make bench-operator (or .venv/bin/python bench/operator/run.py
--jobs 100,1000 --source scrape,promql). Results accumulate in bench/operator/out/results.json; the table
(results.md) and plot (scale.png) are drawn from all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from matplotlib.figure import Figure
from prometheus_client.parser import text_string_to_metric_families

from fleet import OBJECTIVE, THRESHOLD, Fleet
from stopline_local.controlplane import ADMIN_TOKEN, ControlPlane, die_with_parent, free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "out"
CRD = REPO / "crds" / "trainingjob.yaml"
NAMESPACE = "stopline-bench"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:stopline"
API = f"/apis/stopline.dev/v1alpha1/namespaces/{NAMESPACE}/trainingjobs"
STUDY_SIZE = 50  # jobs per stopline.dev/study label: sweeps, as platform teams run them
# --forecast: each study first runs this many jobs to their end (fast epochs), for the forecast to fit on
FINISHED_PER_STUDY = 10
FINISHED_EPOCH_S, FINISHED_EPOCHS = 0.5, 20
# --forecast's reference: a val_loss every job beats (the stand-in's never exceeds 1), so the forecast is
# fitted at each new epoch of every job and never stops one: the stops stay the threshold's, as measured
NEVER_MISSED = 2.0
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["{OPERATOR_USER}"]
- level: None
"""


def training_job(
    name: str, study: int, port: int, interval_s: float, prometheus: str | None, forecast: bool
) -> dict[str, Any]:
    metrics: dict[str, Any] = {"port": port, "interval": f"{interval_s:g}s"}
    if prometheus:
        metrics["prometheus"] = {"url": prometheus}
    criteria: list[dict[str, Any]] = [{"name": "good-enough", "threshold": {"value": THRESHOLD}}]
    if forecast:
        criteria.append({"name": "forecast", "forecast": {"reference": "target", "target": NEVER_MISSED}})
    return {
        "apiVersion": "stopline.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "labels": {"stopline.dev/study": f"sweep-{study:03d}"}},
        "spec": {
            "maxEpochs": 1000,
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:bench"}]}},
            "objective": {"metric": OBJECTIVE, "mode": "min"},
            "criteria": criteria,
            "metrics": metrics,
            "checkpoint": {"pvc": {"claimName": "checkpoints", "path": name}},
        },
    }


class OperatorProcess:
    """`stopline operator` in its own process, so its CPU and RSS are its own; read from /proc."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        command = [sys.executable, "-m", "stopline.cli", "operator", "-n", NAMESPACE]
        self.process = subprocess.Popen(
            [*command, "--listen", f"127.0.0.1:{self.port}"],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent,
        )

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def memory_mib(self, field: str) -> float:
        """VmRSS (now) or VmHWM (peak) in MiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def stop(self) -> None:
        stop_process(self.process, grace_s=30)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu(plane: ControlPlane) -> dict[str, float]:
    """CPU seconds so far of what shares the cores with the operator: the control plane and this process
    (the fleet and the benchmark)."""
    used = {name: cpu_seconds(process.pid) for name, process in plane.processes.items()}
    return used | {"fleet+bench": time.process_time()}


class Cluster:
    """The admin's view of the apiserver, for what the benchmark itself does (never counted)."""

    def __init__(self, plane: ControlPlane, session: aiohttp.ClientSession) -> None:
        self.plane, self.session = plane, session
        self.phases: dict[str, str] = {}

    async def create_all(self, manifests: list[dict[str, Any]]) -> None:
        slots = asyncio.Semaphore(16)

        async def create(manifest: dict[str, Any]) -> None:
            async with slots, self.session.post(f"{self.plane.server}{API}", json=manifest) as response:
                response.raise_for_status()

        await asyncio.gather(*(create(manifest) for manifest in manifests))

    async def watch_phases(self) -> None:
        """Keep `self.phases` (name -> phase) current from a list and a watch, cheaper than listing N
        objects every second; listed and watched again when the watch ends or the CRD is still new (429)."""
        while True:
            try:
                await self._list_and_watch()
            except aiohttp.ClientError as error:
                say(f"  watching TrainingJobs: {error}; again in 1s")
                await asyncio.sleep(1)

    async def _list_and_watch(self) -> None:
        url = f"{self.plane.server}{API}"
        async with self.session.get(url) as response:
            response.raise_for_status()
            listed = await response.json()
        for item in listed["items"]:
            self.phases[item["metadata"]["name"]] = (item.get("status") or {}).get("phase", "")
        params = {"watch": "1", "resourceVersion": listed["metadata"]["resourceVersion"]}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
        async with self.session.get(url, params=params, timeout=timeout) as response:
            response.raise_for_status()
            async for line in response.content:
                item = json.loads(line)["object"]
                self.phases[item["metadata"]["name"]] = (item.get("status") or {}).get("phase", "")

    async def wait_for_phase(self, phase: str, count: int, deadline_s: float, what: str) -> float:
        """Seconds until `count` TrainingJobs have `phase`; progress on stderr every 10 s."""
        began = last_said = time.time()
        while True:
            done = sum(1 for value in self.phases.values() if value == phase)
            now = time.time()
            if done >= count:
                return now - began
            if now - began > deadline_s:
                raise TimeoutError(f"{what}: {done} of {count} {phase} after {deadline_s:.0f}s")
            if now - last_said >= 10:
                say(f"  {what}: {done}/{count} {phase} after {now - began:.0f}s")
                last_said = now
            await asyncio.sleep(0.2)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextmanager
def control_plane() -> Iterator[ControlPlane]:
    """A fresh control plane whose apiserver audits the operator's ServiceAccount, and nobody else."""
    plane = ControlPlane()
    policy = plane.root / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    plane.apiserver_args += [
        f"--audit-policy-file={policy}",
        f"--audit-log-path={plane.root / 'audit.log'}",
        "--audit-log-maxsize=0",  # no rotation: the benchmark reads the whole log
        "--audit-log-mode=batch",  # written behind the requests, so the count does not slow them down
        "--audit-log-batch-max-wait=5s",
    ]
    # the Job controller's default client rate (20 qps) would make pod creation the measured bottleneck
    plane.controller_manager_args += ["--kube-api-qps=500", "--kube-api-burst=1000"]
    plane.start()
    try:
        plane.install_crd(CRD)
        plane.kubectl("create", "namespace", NAMESPACE)
        plane.kubectl("create", "serviceaccount", "stopline", "-n", NAMESPACE)
        plane.kubectl(
            "create", "clusterrolebinding", "stopline-bench", "--clusterrole=cluster-admin",
            f"--serviceaccount={NAMESPACE}:stopline",
        )  # fmt: skip
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "checkpoints", "namespace": NAMESPACE},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        }
        plane.kubectl("apply", "-f", "-", input=json.dumps(claim))
        yield plane
    finally:
        plane.stop()


def audit_counts(log: Path, began: float, ended: float) -> dict[str, int]:
    """The operator's requests received in [began, ended): all, writes, and TrainingJob status patches."""
    seen: set[str] = set()
    counts = {"requests": 0, "writes": 0, "status_writes": 0}
    with log.open() as lines:
        for line in lines:
            event = json.loads(line)
            if event["auditID"] in seen:
                continue
            received = datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            if not began <= received < ended:
                continue
            seen.add(event["auditID"])
            counts["requests"] += 1
            if event["verb"] in WRITE_VERBS:
                counts["writes"] += 1
                target = event.get("objectRef") or {}
                if target.get("resource") == "trainingjobs" and target.get("subresource") == "status":
                    counts["status_writes"] += 1
    return counts


def histogram_quantiles(exposition: str, fractions: tuple[float, ...]) -> list[float]:
    """Upper bounds of the buckets holding these quantiles of the operator's own decision latency (the
    deciding scrape to the trainers' acknowledgement), from its /metrics."""
    buckets = [
        (float(sample.labels["le"]), sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "stopline_decision_latency_seconds_bucket"
    ]
    total = buckets[-1][1] if buckets else 0
    return [
        next((le for le, count in buckets if count >= fraction * total), math.inf) for fraction in fractions
    ]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(plane: ControlPlane, jobs: int, source: str, args: argparse.Namespace) -> dict[str, Any]:
    token = plane.kubectl("create", "token", "stopline", "-n", NAMESPACE, "--duration=6h").stdout.strip()
    kubeconfig = plane.write_kubeconfig(plane.root / "operator.kubeconfig", token)
    port = free_port()
    fleet = Fleet(plane.server, ADMIN_TOKEN, NAMESPACE, port, args.epoch)
    for index in range(jobs):
        fleet.add(index, f"bench-{index:05d}")
    studies = -(-jobs // STUDY_SIZE)
    finished = (
        [(f"done-{study:03d}-{k:02d}", study) for study in range(studies) for k in range(FINISHED_PER_STUDY)]
        if args.forecast
        else []
    )
    for index, (name, _) in enumerate(finished, start=jobs):
        fleet.add(index, name, epoch_s=FINISHED_EPOCH_S, finish_at=FINISHED_EPOCHS)
    await fleet.start()
    prometheus = None
    if source == "promql":
        prometheus_port = free_port()
        await fleet.listen("127.0.0.1", prometheus_port)
        prometheus = f"http://127.0.0.1:{prometheus_port}"
    operator = OperatorProcess(kubeconfig, plane.root / "operator.log")
    connector = aiohttp.TCPConnector(ssl=False, limit=32)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    session = aiohttp.ClientSession(connector=connector, headers=headers)
    cluster = Cluster(plane, session)
    watches = [asyncio.create_task(fleet.run_pods()), asyncio.create_task(cluster.watch_phases())]
    try:
        await wait_healthy(session, operator.port)
        if finished:
            say(f"{source} N={jobs}: {len(finished)} jobs run to their end first, for the forecast")
            await cluster.create_all(
                [training_job(name, study, port, args.interval, prometheus, True) for name, study in finished]
            )
            await cluster.wait_for_phase("Succeeded", len(finished), args.deadline, "finished jobs")
        measured = [job for job in fleet.jobs.values() if job.finish_at is None]
        say(f"{source} N={jobs}: creating TrainingJobs")
        manifests = [
            training_job(
                f"bench-{index:05d}", index // STUDY_SIZE, port, args.interval, prometheus, args.forecast
            )
            for index in range(jobs)
        ]
        cpu_before_start, began = operator.cpu_seconds(), time.time()
        await cluster.create_all(manifests)
        created_s = time.time() - began
        started_s = created_s + await cluster.wait_for_phase("Running", jobs, args.deadline, "start")
        start_cpu_s = operator.cpu_seconds() - cpu_before_start
        say(f"  all {jobs} Running after {started_s:.1f}s; settling for {2 * args.epoch:g}s")
        await asyncio.sleep(2 * args.epoch)

        window_began, cpu_began, others_began = time.time(), operator.cpu_seconds(), machine_cpu(plane)
        epochs_began = sum(job.epoch(window_began) for job in measured)
        rss_samples = []
        while time.time() - window_began < args.steady:
            await asyncio.sleep(min(5.0, args.steady))
            rss_samples.append(operator.memory_mib("VmRSS"))
        window_ended, cpu_ended, others_ended = time.time(), operator.cpu_seconds(), machine_cpu(plane)
        epochs = sum(job.epoch(window_ended) for job in measured) - epochs_began
        minutes = (window_ended - window_began) / 60
        say(f"  steady {window_ended - window_began:.0f}s: {(cpu_ended - cpu_began) / minutes:.1f} CPU s/min")
        if finished:  # what the forecast of one measured job says: that it was fitted, on how many jobs
            first = json.loads(
                plane.kubectl("get", "tj", "bench-00000", "-n", NAMESPACE, "-o", "json").stdout
            )
            lines = [
                c.get("message", "") for c in first["status"].get("criteria", []) if c["name"] == "forecast"
            ]
            say(f"  bench-00000's forecast: {lines[0] if lines else 'none'}")

        crossing_began, cpu_crossing = time.time(), operator.cpu_seconds()
        for index, job in enumerate(measured):
            job.cross_after = crossing_began + args.spread * index / jobs
        deadline = crossing_began + args.spread + args.deadline
        while time.time() < deadline and any(job.stop_received is None for job in measured):
            await asyncio.sleep(0.5)
        stop_all_s = await cluster.wait_for_phase("Stopped", jobs, args.deadline, "stop")
        stopping_minutes = (time.time() - crossing_began) / 60
        stopping_cpu = (operator.cpu_seconds() - cpu_crossing) / stopping_minutes
        latencies = [
            job.stop_received - job.sample_available
            for job in measured
            if job.stop_received is not None and job.sample_available is not None
        ]
        audit = audit_counts(plane.root / "audit.log", window_began, window_ended)
        async with session.get(f"http://127.0.0.1:{operator.port}/metrics") as response:
            signal_p50, signal_p99 = histogram_quantiles(await response.text(), (0.5, 0.99))
        return {
            "source": source,
            "criteria": "threshold+forecast" if args.forecast else "threshold",
            "jobs": jobs,
            "interval_s": args.interval,
            "epoch_s": args.epoch,
            "create_s": round(created_s, 1),
            "start_s": round(started_s, 1),
            "start_cpu_s": round(start_cpu_s, 1),
            "latency_p50_s": round(percentile(latencies, 0.50), 2),
            "latency_p99_s": round(percentile(latencies, 0.99), 2),
            "latency_max_s": round(max(latencies), 2),
            "signal_p50_s": signal_p50,
            "signal_p99_s": signal_p99,
            "early": sum(1 for value in latencies if value < 0),
            "stopped": len(latencies),
            "stop_all_s": round(stop_all_s, 1),
            "cpu_s_per_min": round((cpu_ended - cpu_began) / minutes, 1),
            "stopping_cpu_s_per_min": round(stopping_cpu, 1),
            "rss_steady_mib": round(statistics.mean(rss_samples), 1),
            "rss_peak_mib": round(operator.memory_mib("VmHWM"), 1),
            "requests_per_job_min": round(audit["requests"] / jobs / minutes, 2),
            "writes_per_job_min": round(audit["writes"] / jobs / minutes, 2),
            "status_writes_per_epoch": round(audit["status_writes"] / max(1, epochs), 3),
            "epochs_in_window": epochs,
            "others_cpu_s_per_min": {
                name: round((others_ended[name] - others_began[name]) / minutes, 1) for name in others_began
            },
        }
    finally:
        for watch in watches:
            watch.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        operator.stop()
        await session.close()
        await fleet.close()


async def wait_healthy(session: aiohttp.ClientSession, port: int, deadline_s: float = 60) -> None:
    began = time.time()
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.time() - began > deadline_s:
            raise TimeoutError("the operator's /healthz did not answer 200")
        await asyncio.sleep(0.5)


COLUMNS = {
    "source": "read path",
    "criteria": "criteria",
    "epoch_s": "epoch (s)",
    "jobs": "jobs",
    "start_s": "start N (s)",
    "latency_p50_s": "latency p50 (s)",
    "latency_p99_s": "latency p99 (s)",
    "signal_p99_s": "of which decide→ack p99 (s)",
    "cpu_s_per_min": "CPU s/min",
    "rss_peak_mib": "peak RSS (MiB)",
    "requests_per_job_min": "requests/job/min",
    "writes_per_job_min": "writes/job/min",
    "status_writes_per_epoch": "status writes/epoch",
    "stop_all_s": "last /stop to all Stopped (s)",
}


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for result in results:
        row = result | {"criteria": _criteria(result)}
        lines.append("| " + " | ".join(str(row[key]) for key in COLUMNS) + " |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    figure = Figure(figsize=(13, 3.8), layout="constrained")
    latency, cpu, rss = figure.subplots(1, 3)
    for line in sorted({_line(result) for result in results}):
        source, epoch, criteria = line
        rows = sorted((r for r in results if _line(r) == line), key=lambda r: r["jobs"])
        label = f"{source}, {epoch:g}s epochs" + ("" if criteria == "threshold" else f", {criteria}")
        jobs = [row["jobs"] for row in rows]
        latency.plot(jobs, [row["latency_p99_s"] for row in rows], "o-", label=f"{label} p99")
        latency.plot(jobs, [row["latency_p50_s"] for row in rows], "o--", label=f"{label} p50")
        cpu.plot(jobs, [row["cpu_s_per_min"] / 60 for row in rows], "o-", label=label)
        rss.plot(jobs, [row["rss_peak_mib"] for row in rows], "o-", label=label)
    interval = max(result["interval_s"] for result in results)
    latency.axhline(interval + 1, color="grey", linestyle=":", label="target: interval + 1 s")
    cpu.axhline(0.5, color="grey", linestyle=":", label="target: 0.5 core")
    rss.axhline(300, color="grey", linestyle=":", label="target: 300 MiB")
    titles = {latency: "decision latency (s)", cpu: "operator CPU (cores)", rss: "peak RSS (MiB)"}
    for axes, title in titles.items():
        axes.set_xscale("log")
        axes.set_xlabel("concurrent TrainingJobs")
        axes.set_title(title)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=110)


def _line(result: dict[str, Any]) -> tuple[str, float, str]:
    """One line of the plot: the runs of a read path, epoch length and criteria, over N."""
    return result["source"], result["epoch_s"], _criteria(result)


def _run_key(result: dict[str, Any]) -> tuple[str, int, float, str]:
    return result["source"], result["jobs"], result["epoch_s"], _criteria(result)


def _criteria(result: dict[str, Any]) -> str:
    """The run's criteria; runs saved before --forecast existed had only the threshold."""
    return str(result.get("criteria", "threshold"))


def save(result: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Add one run to out/results.json (replacing an earlier run of the same source, N and epoch)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    results = [r for r in results if _run_key(r) != _run_key(result)]
    results = sorted([*results, result], key=lambda r: (r["epoch_s"], r["source"], r["jobs"]))
    path.write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table(results) + "\n")
    plot(results, out / "scale.png")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--jobs", default="100,1000", help="comma-separated N (default: %(default)s)")
    parser.add_argument("--source", default="scrape,promql", help="scrape, promql or both (default: both)")
    parser.add_argument("--interval", type=float, default=5, help="spec.metrics.interval, s (default: 5)")
    parser.add_argument("--epoch", type=float, default=30, help="seconds per epoch (default: 30)")
    parser.add_argument("--steady", type=float, default=60, help="steady window, s (default: 60)")
    parser.add_argument("--spread", type=float, default=60, help="crossings spread over, s (default: 60)")
    parser.add_argument("--deadline", type=float, default=600, help="longest wait for a phase, s")
    parser.add_argument(
        "--forecast",
        action="store_true",
        help=f"every job also carries a forecast, fitted each epoch ({FINISHED_PER_STUDY} ended per study)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help="results folder (default: bench/operator/out)")
    args = parser.parse_args()
    for source in args.source.split(","):
        for jobs in (int(n) for n in args.jobs.split(",")):
            with control_plane() as plane:
                result = asyncio.run(measure(plane, jobs, source, args))
            results = save(result, args.out)
            print(table([result]).splitlines()[-1], flush=True)
    print(table(results))
    print(f"\n{args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
