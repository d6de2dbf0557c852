"""Driving the operator in tests: kopf's KopfRunner, kubectl reads, and stand-ins for what a kubelet does.

The cluster tier has no kubelet: tests patch pod status as a kubelet would (Running with a pod IP on
127.0.0.x, then terminated with a termination message), and the trainer's endpoint is the real one
(stopline_trainer's ControlServer and TrainerMetrics) serving on that IP without any training behind it.
"""

from __future__ import annotations

import base64
import csv
import itertools
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kopf.testing import KopfRunner

from stopline import replay
from stopline_local.controlplane import REPO, ControlPlane, wait_until
from stopline_local.kubelet import terminated_status
from stopline_trainer.checkpoint import TAIL_EPOCHS, Manifest
from stopline_trainer.control import StopFlag
from stopline_trainer.metrics import TrainerMetrics
from stopline_trainer.server import ControlServer

SINGLE = REPO / "examples" / "gpu-patience-pvc.yaml"
SINGLE_NAME = "resnet-lr3e-4"
WAIT_S = 30
RUNNING_AND_READY = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
_addresses = (f"127.0.0.{host}" for host in itertools.count(100))  # the local kubelet uses 127.0.0.2 up


@contextmanager
def operator(namespace: str) -> Iterator[KopfRunner]:
    """The operator watching one namespace; on exit it is stopped and must have ended cleanly."""
    args = ["run", "--standalone", "--namespace", namespace, "-m", "stopline.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def get(plane: ControlPlane, namespace: str, *what: str) -> Any:
    return json.loads(plane.kubectl("get", *what, "-n", namespace, "-o", "json").stdout)


def exists(plane: ControlPlane, namespace: str, *what: str) -> bool:
    return plane.kubectl("get", *what, "-n", namespace, check=False).returncode == 0


def status(plane: ControlPlane, namespace: str, name: str) -> Any:
    return get(plane, namespace, "tj", name).get("status", {})


def phase_is(plane: ControlPlane, namespace: str, name: str, phase: str) -> Callable[[], bool]:
    return lambda: status(plane, namespace, name).get("phase") == phase


def stop_recorded(plane: ControlPlane, namespace: str, name: str = SINGLE_NAME) -> Any:
    """The status once the operator wrote the stop (phase Stopping). POST /stop goes out before that write,
    so a trainer that got the stop does not mean the status says so yet."""
    return wait_until(
        lambda: (current := status(plane, namespace, name)).get("phase") == "Stopping" and current,
        WAIT_S,
        f"{name}: phase Stopping",
    )


def epoch_read(
    plane: ControlPlane, namespace: str, epoch: int, name: str = SINGLE_NAME
) -> Callable[[], bool]:
    """The operator wrote this epoch's progress, or is already stopping."""

    def check() -> bool:
        current = status(plane, namespace, name)
        return bool(current.get("phase") == "Stopping" or current.get("progress", {}).get("epoch") == epoch)

    return check


def events(plane: ControlPlane, namespace: str, name: str, type_: str | None = None) -> list[Any]:
    selector = f"involvedObject.name={name},involvedObject.kind=TrainingJob"
    if type_:
        selector += f",type={type_}"
    return list(get(plane, namespace, "events", "--field-selector", selector)["items"])


def event_posted(
    plane: ControlPlane, namespace: str, name: str, reason: str, type_: str = "Warning"
) -> Callable[[], bool]:
    """Whether an Event with this reason is recorded for the TrainingJob (kopf posts them async)."""
    return lambda: reason in {event["reason"] for event in events(plane, namespace, name, type_)}


def condition(training_job: Any, type_: str) -> Any:
    return next(c for c in training_job["status"]["conditions"] if c["type"] == type_)


def pods(plane: ControlPlane, namespace: str, name: str) -> list[Any]:
    """The TrainingJob's pods, sorted by name (rank order for an Indexed Job)."""
    items = get(plane, namespace, "pods", "-l", f"stopline.dev/job={name}")["items"]
    return sorted(items, key=lambda pod: pod["metadata"]["name"])


def set_pod_status(plane: ControlPlane, namespace: str, pod: str, pod_status: dict[str, Any]) -> None:
    """What a kubelet would report; the Job controller reads it like any pod status."""
    patch = json.dumps({"status": pod_status})
    plane.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)


def terminate(plane: ControlPlane, namespace: str, pod: str, message: str = "", exit_code: int = 0) -> None:
    """The trainer container exited with this code and left `message` in its termination-log."""
    set_pod_status(plane, namespace, pod, terminated_status(message, exit_code))


def manifest(name: str = SINGLE_NAME, **spec: Any) -> dict[str, Any]:
    """The single-GPU example with `spec` keys replaced (criteria, metrics, stopPolicy ...)."""
    training_job = yaml.safe_load(SINGLE.read_text())
    training_job["metadata"]["name"] = name
    training_job["spec"].update(spec)
    return dict(training_job)


def apply(plane: ControlPlane, namespace: str, training_job: dict[str, Any]) -> None:
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(training_job))


def control_token(plane: ControlPlane, namespace: str, name: str) -> str:
    secret = get(plane, namespace, "secret", f"{name}-stopline-control")
    return base64.b64decode(secret["data"]["token"]).decode()


def reserve_address() -> tuple[str, int]:
    """A fresh 127.0.0.x and a port free on it, chosen before the job (and so its token) exists."""
    ip = next(_addresses)
    with socket.socket() as probe:
        probe.bind((ip, 0))
        return ip, int(probe.getsockname()[1])


class StandInTrainer:
    """The trainer's real HTTP endpoint on `address`, with no training behind it: the test plays the loop.

    `report` sets what /metrics shows, as the training loop would; `stop_reason` is what POST /stop set.
    """

    def __init__(self, address: tuple[str, int], token: str, accept_stop: bool = True) -> None:
        self.ip, self.port = address
        self.flag = StopFlag()
        self.metrics = TrainerMetrics(self.flag)
        self.server = ControlServer(
            self.metrics,
            self.flag,
            token=token,
            bind_address=self.ip,
            port=self.port,
            rank=0,
            accept_stop=accept_stop,
        )
        self.server.start()

    def report(self, epoch: int, step: int, **values: float) -> None:
        self.metrics.observe(epoch, step, values)

    @property
    def stop_reason(self) -> str | None:
        return self.flag.reason if self.flag.is_set() else None

    def close(self) -> None:
        self.server.close()


def checkpoint_message(
    epoch: int, step: int, uri: str, stop: dict[str, str] | None = None, tail: list[list[float]] | None = None
) -> str:
    """Rank 0's termination message after a save, made by stopline_trainer's own Manifest; `stop`: the
    operator's decision it followed (sent with POST /stop); `tail`: the last epochs' objective, [[epoch,
    value], ...], as the trainer keeps it."""
    manifest = Manifest(
        uri=uri,
        epoch=epoch,
        step=step,
        size=1024,
        sha256="0" * 64,
        saved_at="2026-11-22T12:00:00Z",
        world_size=1,
        stop=stop,
        tail=tail or [],
    )
    return manifest.termination_message().decode()


@contextmanager
def running_trainer(
    plane: ControlPlane, namespace: str, training_job: dict[str, Any], accept_stop: bool = True
) -> Iterator[tuple[StandInTrainer, str]]:
    """Apply `training_job` with spec.metrics.port set to a stand-in trainer's, and mark its pod Running
    at the stand-in's IP, as a kubelet would; yields the stand-in and the pod's name. Needs the operator."""
    name = training_job["metadata"]["name"]
    address = reserve_address()
    training_job["spec"].setdefault("metrics", {})["port"] = address[1]
    apply(plane, namespace, training_job)
    wait_until(lambda: len(pods(plane, namespace, name)) == 1, WAIT_S, "the Job controller's pod")
    trainer = StandInTrainer(address, control_token(plane, namespace, name), accept_stop)
    try:
        pod = pods(plane, namespace, name)[0]["metadata"]["name"]
        ip = {"podIP": trainer.ip, "podIPs": [{"ip": trainer.ip}]}
        set_pod_status(plane, namespace, pod, RUNNING_AND_READY | ip)
        wait_until(phase_is(plane, namespace, name, "Running"), WAIT_S, "phase Running")
        yield trainer, pod
    finally:
        trainer.close()


def play_curve(
    plane: ControlPlane,
    namespace: str,
    name: str,
    values: list[float],
    trainer: StandInTrainer,
    pod: str,
    first: int = 1,
) -> dict[str, Any]:
    """Report the epochs from `first` one by one, each once the operator has read the previous; end the
    pod as the trainer would (saved after a stop, or at the end of its curve); the job's final status."""
    uri = f"/stopline/checkpoints/{name}/final.pt"
    for epoch in range(first, len(values) + 1):
        trainer.report(epoch, epoch * 100, val_loss=values[epoch - 1])
        wait_until(epoch_read(plane, namespace, epoch, name), WAIT_S, f"{name} epoch {epoch} read")
        if status(plane, namespace, name).get("phase") == "Stopping":
            wait_until(lambda: trainer.stop_reason, WAIT_S, f"{name}'s POST /stop")
            terminate(plane, namespace, pod, checkpoint_message(epoch, epoch * 100, uri))
            wait_until(phase_is(plane, namespace, name, "Stopped"), WAIT_S, f"{name} Stopped")
            return dict(status(plane, namespace, name))
    tail = [[epoch, value] for epoch, value in enumerate(values, start=1)][-TAIL_EPOCHS:]
    terminate(plane, namespace, pod, checkpoint_message(len(values), len(values) * 100, uri, tail=tail))
    wait_until(phase_is(plane, namespace, name, "Succeeded"), WAIT_S, f"{name} Succeeded")
    return dict(status(plane, namespace, name))


def replay_recorded(
    directory: Path, training_job: dict[str, Any], curves: Mapping[str, list[float]]
) -> replay.Replay:
    """`stopline replay` of the curves the operator recorded (status.curve by job, in the sweep's order)
    with `training_job`'s spec: the offline twin of a live sweep."""
    job_file = directory / "sweep.yaml"
    job_file.write_text(yaml.safe_dump(training_job))
    curves_file = directory / "curves.csv"
    with curves_file.open("w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["job", "epoch", "val_loss"])
        for name, curve in curves.items():
            rows.writerows([name, epoch, value] for epoch, value in enumerate(curve, start=1))
    return replay.replay(job_file, curves_file)
