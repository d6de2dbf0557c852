"""torchrun inside pods: two "pods" (two torchrun processes, --nnodes 2 --nproc-per-node 2) of the example
trainer on this machine, each with its own metrics port and termination log as two pods would have.

One endpoint per pod (local rank 0's); a stop that reaches one pod, by POST /stop to its endpoint or by the
SIGTERM the kubelet sends its container (torchrun forwards it to its workers), stops all four processes
at the same step; global rank 0 alone saves and leaves the pointer to the weights.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from stopline_local.controlplane import free_port
from stopline_trainer import Config, Run

from .support import (
    DEADLINE_S,
    EXAMPLE,
    TOKEN,
    Endpoint,
    assert_points_at,
    assert_reproduces_outputs,
    read_local_checkpoint,
    wait_until,
)

pytestmark = pytest.mark.trainer

PODS = 2
PROCESSES_PER_POD = 2
FLAGS = ["--epochs", "1000", "--steps-per-epoch", "20", "--sleep-per-step", "0.02", "--save-every", "0"]
STOPPING = re.compile(r"stopline: rank (\d+) stopping at epoch (\d+) step (\d+)")
SERVING = re.compile(r"stopline: rank (\d+) serving /metrics and /stop on 127\.0\.0\.1:(\d+)")
SERVES_NOTHING = re.compile(r"stopline: rank (\d+) \(local rank (\d+)\) serves nothing")
SAVED = "stopline: saved "
OTHER_RANK = "stop requested by another rank"


class Pod(Endpoint):
    """One torchrun process with the env the operator gives pod `index` of a 2-replica job."""

    def __init__(self, workdir: Path, index: int, master_port: int, ckpt: Path) -> None:
        super().__init__(free_port())
        self.index = index
        self.termination_log = workdir / f"pod{index}.termination-log"
        self.log_path = workdir / f"pod{index}.log"
        env = {
            **os.environ,
            "STOPLINE_JOB": "test-job",
            "STOPLINE_NAMESPACE": "test-ns",
            "STOPLINE_METRICS_PORT": str(self.port),
            "STOPLINE_BIND_ADDRESS": "127.0.0.1",
            "STOPLINE_CONTROL_TOKEN": TOKEN,
            "STOPLINE_TERMINATION_LOG": str(self.termination_log),
            "STOPLINE_CHECKPOINT_URI": str(ckpt),
            # the pod's contract; torchrun gives its workers their own RANK, WORLD_SIZE and LOCAL_RANK
            "RANK": str(index),
            "WORLD_SIZE": str(PODS),
            "JOB_COMPLETION_INDEX": str(index),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",  # two cores for six processes
        }
        torchrun = [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(PODS), "--nproc-per-node", str(PROCESSES_PER_POD), "--node-rank", str(index),
            "--master-addr", "127.0.0.1", "--master-port", str(master_port),
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*torchrun, str(EXAMPLE), *FLAGS], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def step(self) -> float | None:
        """stopline_step on this pod's endpoint; None while it does not answer yet."""
        if self.proc.poll() is not None:
            pytest.fail(
                f"pod {self.index}'s torchrun exited with {self.proc.returncode}\n{self.log()[-4000:]}"
            )
        return (self.metrics() or {}).get("stopline_step")

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pod {self.index}'s torchrun still runs after {DEADLINE_S}s\n{self.log()[-4000:]}")

    def stops(self) -> dict[int, tuple[int, int]]:
        """{global rank: (epoch, step)} each of this pod's processes logged when it agreed to stop."""
        return {int(r): (int(e), int(s)) for r, e, s in STOPPING.findall(self.log())}


def test_a_process_of_local_rank_1_serves_nothing_and_leaves_no_termination_message(tmp_path: Path) -> None:
    """Its pod's metrics port and termination log are local rank 0's: it neither binds nor writes them."""
    config = Config(
        metrics_port=free_port(),
        bind_address="127.0.0.1",
        rank=1,
        world_size=2,
        local_rank=1,
        local_world_size=2,
        termination_log=tmp_path / "termination-log",
    )
    with Run(config, handle_signals=False) as run:
        assert run.port is None
        with pytest.raises(RuntimeError, match="local rank 1 serves nothing"):
            assert run.server
        run.report(1, 5, train_loss=0.5)
        run.flag.request("test")
        assert run.should_stop()  # its own stop request still counts (no process group: itself only)
    assert not (tmp_path / "termination-log").exists()


def test_local_rank_0_warns_when_torchrun_made_its_pod_another_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator reads pod 0's endpoint and termination message: pod 0 must be torchrun's node 0."""
    config = Config(metrics_port=0, bind_address="127.0.0.1", termination_log=tmp_path / "log")
    for node_rank, pod_index, warned in ((0, 0, False), (1, 0, True), (None, 0, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "stopline_trainer"):
            run = Run(replace(config, node_rank=node_rank, pod_index=pod_index), handle_signals=False)
            run.start().close()
        assert ("torchrun made pod 0 its node 1" in caplog.text) == warned, caplog.text


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[list[Pod]]:
    master_port = free_port()
    started = [Pod(tmp_path, index, master_port, tmp_path / "ckpt") for index in range(PODS)]
    yield started
    for pod in started:
        if pod.proc.poll() is None:
            pod.proc.kill()  # torchrun's workers die with it (its death signal is SIGKILL for them too)
            pod.proc.wait()


def past_step_3(pod: Pod) -> bool:
    return (pod.step() or 0) >= 3


def running(pods: list[Pod]) -> None:
    """Every pod's endpoint answers with steps past the third: all four processes joined and train."""
    for pod in pods:
        wait_until(partial(past_step_3, pod), f"pod {pod.index}'s endpoint at step 3", pod.log)


def assert_one_endpoint_per_pod(pods: list[Pod]) -> None:
    for pod in pods:
        log = pod.log()
        first = pod.index * PROCESSES_PER_POD  # --node-rank i: global ranks i*N .. i*N+N-1
        assert SERVING.findall(log) == [(str(first), str(pod.port))], log[-4000:]
        assert SERVES_NOTHING.findall(log) == [(str(first + 1), "1")], log[-4000:]


def assert_stopped_together(pods: list[Pod], tmp_path: Path) -> tuple[int, int]:
    """All four processes stopped at one (epoch, step); rank 0 saved once, the weights load and reproduce
    the trainer's outputs; pod 0's termination message points at them, pod 1's is its rank's stop."""
    stops = {rank: at for pod in pods for rank, at in pod.stops().items()}
    assert set(stops) == set(range(PODS * PROCESSES_PER_POD)), stops
    [(epoch, step)] = set(stops.values())
    assert sum(pod.log().count(SAVED) for pod in pods) == 1
    ckpt = tmp_path / "ckpt"
    manifest, state = read_local_checkpoint(ckpt)
    assert (manifest["epoch"], manifest["step"]) == (epoch, step)
    assert manifest["worldSize"] == PODS * PROCESSES_PER_POD
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["last.json", Path(manifest["uri"]).name])
    assert_reproduces_outputs(state)
    assert_points_at(pods[0].termination_log, manifest)
    assert json.loads(pods[1].termination_log.read_bytes()) == {
        "rank": PROCESSES_PER_POD,
        "epoch": epoch,
        "step": step,
        "stopReason": OTHER_RANK,
    }
    return epoch, step


def test_a_stop_posted_to_pod_0_stops_every_process_of_both_pods_at_the_same_step(
    pods: list[Pod], tmp_path: Path
) -> None:
    running(pods)
    assert_one_endpoint_per_pod(pods)
    assert pods[0].post_stop({"reason": "torchrun test"}) == (
        202,
        {"stopping": True, "reason": "torchrun test", "rank": 0},
    )

    for pod in pods:
        assert pod.wait_exit() == 0, pod.log()[-4000:]
    assert_stopped_together(pods, tmp_path)
    manifest, _ = read_local_checkpoint(tmp_path / "ckpt")
    assert manifest["stopReason"] == "torchrun test"


def test_sigterm_to_pod_0_stops_every_process_of_both_pods_at_the_same_step(
    pods: list[Pod], tmp_path: Path
) -> None:
    """The kubelet's SIGTERM to pod 0's container: torchrun forwards it to its two workers, which stop
    every rank at the same step; rank 0 saves before torchrun's shutdown timeout (30 s) runs out.

    torchrun itself then exits 1: its agent re-raises the signal once its workers have exited (0, after
    the save). Pod 1's torchrun, whose workers stopped with them, exits 0.
    """
    running(pods)
    pods[0].proc.send_signal(signal.SIGTERM)

    codes = [pod.wait_exit() for pod in pods]
    assert_stopped_together(pods, tmp_path)
    manifest, _ = read_local_checkpoint(tmp_path / "ckpt")
    assert manifest["stopReason"] == "SIGTERM"
    assert "closing signal SIGTERM" in pods[0].log()  # torchrun forwarded the kubelet's signal
    assert "closing signal SIGKILL" not in pods[0].log()  # and its workers ended in time, none killed
    assert codes == [1, 0], [pod.log()[-4000:] for pod in pods]
    assert "SignalException" in pods[0].log()
