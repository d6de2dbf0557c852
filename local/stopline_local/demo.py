"""`make demo`: the whole story on this machine, no Docker, no GPU.

Starts a real kube-apiserver, etcd and kube-controller-manager (from `make testenv`), the stopline
operator (`stopline operator`, as a process), and the local kubelet that runs each trainer pod as a local
process on 127.0.0.x. Applies examples/local/demo-sweep.yaml with kubectl, as a user would: a sweep of four
TrainingJobs of the example torch trainer, one of them with a hopeless learning rate. Shows their progress
live, and ends with each job's stop reason, best metric and checkpoint, and the epochs saved. Ctrl-C or the
end stops every process it started.

Then the recommended sweep policy (examples/recommended-policy.yaml): its forecast needs five finished jobs
like a job before it judges it, more than four jobs give, so it is shown on a recorded sweep instead, the
first 40 jobs of AlgoPerf's WMT sweep (bench/policy/curves), as `stopline replay` runs it.

    .venv/bin/python -m stopline_local.demo [--timeout 300]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from stopline import replay
from stopline_local.cluster import LocalCluster
from stopline_local.controlplane import REPO

NAMESPACE = "demo"
SWEEP = REPO / "examples" / "local" / "demo-sweep.yaml"
TERMINAL = ("Stopped", "Succeeded", "Failed", "Cancelled")
POLL_S = 3
RECOMMENDED = REPO / "examples" / "recommended-policy.yaml"
RECORDED = REPO / "bench" / "policy" / "curves" / "curves.csv.gz"
RECORDED_SWEEP = ("algoperf_v05/wmt_pytorch", 40)  # a sweep of val_loss, the recommended objective


def _interrupt(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def say(line: str) -> None:
    print(f"demo: {line}", flush=True)


def table(jobs: list[dict[str, Any]]) -> str:
    rows = [f"{'job':<9} {'phase':<10} {'epoch':>5} {'val_loss':>9} {'best':>9}  reason"]
    for job in jobs:
        status = job.get("status", {})
        value = status.get("progress", {}).get("metrics", {}).get("val_loss")
        best = status.get("best", {}).get("value")
        shown = [f"{number:.5f}" if number is not None else "-" for number in (value, best)]
        reason = status.get("stopReason", {})
        rows.append(
            f"{job['metadata']['name']:<9} {status.get('phase', 'Pending'):<10} "
            f"{status.get('progress', {}).get('epoch', 0):>5} "
            f"{shown[0]:>9} {shown[1]:>9}"
            f"  {reason.get('type', '')} {('(' + reason['criterion'] + ')') if reason else ''}"
        )
    return "\n".join(rows)


def max_epochs(job: dict[str, Any]) -> int | None:
    """spec.maxEpochs as applied; None when the manifest leaves it out (the job then has no set length)."""
    value = job.get("spec", {}).get("maxEpochs")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def summary(jobs: list[dict[str, Any]]) -> str:
    """Each job's end, and the epochs saved against the maxEpochs of the jobs that set one."""
    lines = ["", "summary:"]
    ran = total = 0
    for job in jobs:
        status, name = job.get("status", {}), job["metadata"]["name"]
        reason = status.get("stopReason", {})
        best = status.get("best", {})
        checkpoint = status.get("checkpoint", {}).get("uri", "-")
        epoch = status.get("progress", {}).get("epoch", 0)
        limit = max_epochs(job)
        if limit is not None:
            ran, total = ran + min(epoch, limit), total + limit
        why = f"{reason['type']} ({reason['criterion']}): {reason['message']}" if reason else "ran to the end"
        of = f"/{limit}" if limit is not None else ""
        lines.append(f"  {name}: {status.get('phase')} at epoch {epoch}{of}; {why}")
        if best and checkpoint != "-":
            lines.append(
                f"    best {best['metric']} {best['value']:.5f} (epoch {best['epoch']}), weights {checkpoint}"
            )
    saved = sum(float(job.get("status", {}).get("gpuSecondsSaved") or 0) for job in jobs)
    if total:
        lines.append(
            f"  {ran} of {total} epochs run, {total - ran} saved ({100 * (total - ran) / total:.0f}%); "
            f"estimated GPU-hours saved: {saved / 3600:.4f} (status.gpuSecondsSaved: each epoch not run "
            "costs the measured epoch time on 1 GPU per rank)"
        )
    return "\n".join(lines)


def first_jobs(task: str, jobs: int) -> list[dict[str, str]]:
    """The rows of a recorded task's first `jobs` configs in file order (the file is sorted by task)."""
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    with gzip.open(RECORDED, "rt") as source:
        for row in csv.DictReader(source):
            if row["task"] != task:
                if seen:
                    break
                continue
            if row["config"] not in seen and len(seen) == jobs:
                break
            seen.add(row["config"])
            rows.append(row)
    return rows


def recorded_sweep(folder: Path) -> Path:
    """The recorded sweep's first jobs, as a curves file `stopline replay` reads (job, epoch, val_loss)."""
    task, jobs = RECORDED_SWEEP
    out = folder / f"{task.replace('/', '-')}-first-{jobs}.csv"
    with out.open("w", newline="") as sink:
        rows = csv.writer(sink)
        rows.writerow(["job", "epoch", "val_loss"])
        rows.writerows([row["config"], row["epoch"], row["val_loss"]] for row in first_jobs(task, jobs))
    return out


def show_recommended_policy(folder: Path) -> None:
    curves = recorded_sweep(folder)
    say(
        f"the recommended policy on a recorded sweep: stopline replay --job {RECOMMENDED.relative_to(REPO)} "
        f"--curves {curves}\n"
    )
    print(replay.render_table(replay.replay(RECOMMENDED, curves)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stopline_local.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    volumes = Path(tempfile.mkdtemp(prefix="stopline-demo-"))  # kept: the checkpoints outlive the demo
    cluster = LocalCluster(namespace=NAMESPACE, volumes=volumes, watch=(NAMESPACE,))
    try:
        cluster.start(say)
        applied = cluster.plane.kubectl("apply", "-n", NAMESPACE, "-f", str(SWEEP))
        say(f"kubectl apply -n {NAMESPACE} -f {SWEEP.relative_to(REPO)}")
        print(applied.stdout.rstrip(), flush=True)
        say("kubectl get tj, every few seconds:\n")
        deadline = time.monotonic() + args.timeout
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            listed = cluster.plane.kubectl("get", "tj", "-n", NAMESPACE, "-o", "json")
            jobs = json.loads(listed.stdout)["items"]
            print(table(jobs) + "\n", flush=True)
            if jobs and all(job.get("status", {}).get("phase") in TERMINAL for job in jobs):
                break
            cluster.check_operator()
            time.sleep(POLL_S)
        else:
            say(f"not finished after {args.timeout:.0f}s")
            return 1
        print(summary(jobs), flush=True)
        print(flush=True)
        show_recommended_policy(volumes)
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted, cleaning up", flush=True)
        return 130
    finally:
        cluster.stop()
        say("every process stopped")


if __name__ == "__main__":
    sys.exit(main())
