"""`make demo`: the whole story on this machine, no Docker, no GPU.

Starts a real kube-apiserver, etcd and kube-controller-manager (from `make testenv`), the stopline
operator (`stopline operator`, as a process), and the test kubelet that runs each trainer pod as a local
process on 127.0.0.x. Applies a sweep of four TrainingJobs of the example torch trainer, one of them with
a hopeless learning rate, shows their progress live, and ends with each job's stop reason, best metric
and checkpoint, and the epochs saved. Ctrl-C or the end stops every process it started.

    .venv/bin/python tests/demo.py [--epochs 30] [--timeout 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from controlplane import ADMIN_TOKEN, REPO, ControlPlane, free_port, stop_process
from e2e.kubelet import TestKubelet
from e2e.support import CLAIM, training_job

NAMESPACE = "demo"
STUDY = "resnet-sweep"
SWEEP = {
    "lr-3e-3": "3e-3",
    "lr-2e-3": "2e-3",
    "lr-1e-3": "1e-3",
    "lr-1e-7": "1e-7",
}  # the last one is hopeless
TERMINAL = ("Stopped", "Succeeded", "Failed", "Cancelled")


def sweep_member(name: str, lr: str, epochs: int) -> dict[str, Any]:
    """One member of the sweep: the example trainer, stopped by the cohort rule or by patience.

    Patience waits 8 epochs, so on the hopeless job the cohort rule (from epoch 3) decides first even when
    the four trainers start seconds apart on a busy machine; with 3, patience won the race now and then."""
    job = training_job(
        name,
        args=("--epochs", str(epochs), "--steps-per-epoch", "10", "--sleep-per-step", "0.15", "--lr", lr),
    )
    job["metadata"]["labels"] = {"stopline.dev/study": STUDY}
    job["spec"].update(
        maxEpochs=epochs,
        criteria=[
            {"name": "median", "cohort": {"minJobs": 3, "percentile": 50, "warmupEpochs": 2}},
            {"name": "plateau", "patience": {"patience": 8, "minDelta": 0.00005}},
        ],
    )
    job["spec"]["metrics"]["interval"] = "1s"
    return job


def _interrupt(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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


def summary(jobs: list[dict[str, Any]], epochs: int) -> str:
    lines = ["", "summary:"]
    ran = 0
    for job in jobs:
        status, name = job.get("status", {}), job["metadata"]["name"]
        reason = status.get("stopReason", {})
        best = status.get("best", {})
        checkpoint = status.get("checkpoint", {}).get("uri", "-")
        epoch = status.get("progress", {}).get("epoch", 0)
        ran += epoch
        why = f"{reason['type']} ({reason['criterion']}): {reason['message']}" if reason else "ran to the end"
        lines.append(f"  {name}: {status.get('phase')} at epoch {epoch}/{epochs}; {why}")
        if best and checkpoint != "-":
            lines.append(
                f"    best {best['metric']} {best['value']:.5f} (epoch {best['epoch']}), weights {checkpoint}"
            )
    total = epochs * len(jobs)
    saved = sum(float(job.get("status", {}).get("gpuSecondsSaved") or 0) for job in jobs)
    lines.append(
        f"  {ran} of {total} epochs run, {total - ran} saved ({100 * (total - ran) / total:.0f}%); "
        f"estimated GPU-hours saved: {saved / 3600:.4f} (status.gpuSecondsSaved: each epoch not run "
        "costs the measured epoch time on 1 GPU per rank)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=30, help="maxEpochs of each job (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    plane = ControlPlane()
    kubelet: TestKubelet | None = None
    operator: subprocess.Popen[bytes] | None = None
    try:
        print(f"demo: starting etcd, kube-apiserver and kube-controller-manager in {plane.root}", flush=True)
        plane.start()
        plane.install_crd(REPO / "crds" / "trainingjob.yaml")
        plane.kubectl("create", "namespace", NAMESPACE)
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM, "namespace": NAMESPACE},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
        plane.kubectl("apply", "-f", "-", input=json.dumps(claim))
        volumes = Path(tempfile.mkdtemp(prefix="stopline-demo-"))  # kept: the checkpoints outlive the demo
        print(f"demo: trainer logs and checkpoints in {volumes}", flush=True)
        kubelet = TestKubelet(plane.server, ADMIN_TOKEN, plane.root / "certs" / "apiserver.crt", volumes)
        kubelet.start()
        listen = f"127.0.0.1:{free_port()}"
        log = (plane.root / "operator.log").open("wb")
        operator = subprocess.Popen(
            [sys.executable, "-m", "stopline.cli", "operator", "-n", NAMESPACE, "--listen", listen],
            env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        print(
            f"demo: operator on {listen} (log {plane.root / 'operator.log'}), test kubelet running pods",
            flush=True,
        )
        members = [sweep_member(name, lr, args.epochs) for name, lr in SWEEP.items()]
        plane.kubectl(
            "apply",
            "-n",
            NAMESPACE,
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": members}),
        )
        print(
            f"demo: applied a sweep of {len(members)} TrainingJobs (study {STUDY}); kubectl get tj:\n",
            flush=True,
        )
        deadline = time.monotonic() + args.timeout
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            jobs = json.loads(plane.kubectl("get", "tj", "-n", NAMESPACE, "-o", "json").stdout)["items"]
            print(table(jobs) + "\n", flush=True)
            if all(job.get("status", {}).get("phase") in TERMINAL for job in jobs):
                break
            if operator.poll() is not None:
                raise RuntimeError(
                    f"the operator exited with {operator.returncode}; see {plane.root / 'operator.log'}"
                )
            time.sleep(3)
        else:
            print(f"demo: not finished after {args.timeout:.0f}s", flush=True)
            return 1
        print(summary(jobs, args.epochs), flush=True)
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted, cleaning up", flush=True)
        return 130
    finally:
        if operator is not None:
            stop_process(operator, 30)
        if kubelet is not None:
            kubelet.stop()
        plane.stop()
        print("demo: every process stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
