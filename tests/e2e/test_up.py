"""`make up` as a user drives it: the printed KUBECONFIG, kubectl in another shell, examples/local/ applied,
the job stopped by its criterion with its weights kept, and SIGTERM ending every process it started."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from stopline_local.controlplane import REPO, built_binary, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = Path("examples") / "local" / "patience.yaml"
START_S = 180  # the control plane, the CRD, the kubelet and the operator on a busy 2-core machine
STOP_S = 240  # from the apply: the trainer's start, ~10 epochs of ~4 s, the save, the Job's completion
EXIT_S = 120  # SIGTERM to exit: the operator's grace, the trainers, the control plane


class Output:
    """Every line the process prints, read on a thread so that it never blocks on a full pipe."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def after(self, prefix: str) -> str | None:
        """The rest of the first line that starts with `prefix` (leading blanks ignored), if printed yet."""
        return next(
            (line.strip()[len(prefix) :] for line in list(self.lines) if line.strip().startswith(prefix)),
            None,
        )


def kubectl(kubeconfig: str, *args: str) -> str:
    """The testenv's kubectl as the user runs it: KUBECONFIG exported, in the repository root."""
    result = subprocess.run(
        [str(built_binary("kubectl")), *args],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def test_make_up_runs_what_kubectl_applies_until_sigterm_stops_every_process() -> None:
    name = yaml.safe_load((REPO / EXAMPLE).read_text())["metadata"]["name"]
    up = subprocess.Popen(
        [sys.executable, "-m", "stopline_local.up"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert up.stdout is not None
    output = Output(up.stdout)
    try:

        def printed_kubeconfig() -> str:
            assert up.poll() is None, f"make up exited with {up.returncode}:\n{output.text()}"
            printed = output.after("export KUBECONFIG=")  # a path, as the shell would read it
            return shlex.split(printed, comments=True)[0] if printed else ""

        # `make up` that exited (the testenv not built: it says `make testenv`) fails the test at once
        kubeconfig = wait_until(
            printed_kubeconfig, START_S, "the KUBECONFIG line", retry_on=(), details=output.text
        )
        assert f"kubectl apply -f {EXAMPLE}" in output.text()
        applied = kubectl(kubeconfig, "apply", "-f", str(EXAMPLE))
        assert f"trainingjob.stopline.dev/{name} created" in applied

        def stopped() -> dict[str, Any]:
            job: dict[str, Any] = json.loads(kubectl(kubeconfig, "get", "tj", name, "-o", "json"))
            status: dict[str, Any] = job.get("status", {})
            return status if status.get("phase") == "Stopped" and status.get("checkpoint") else {}

        status = wait_until(
            stopped,
            STOP_S,
            f"{name} Stopped with a checkpoint",
            interval=2,
            details=lambda: kubectl(kubeconfig, "describe", "tj", name),
        )
        row = kubectl(kubeconfig, "get", "tj").splitlines()[1].split()
        assert row[:2] == [name, "Stopped"] and row[5] == "Patience", row
        assert status["stopReason"]["criterion"] == "plateau"
        assert "CheckpointSaved" in kubectl(kubeconfig, "describe", "tj", name)
        weights = Path(status["checkpoint"]["uri"])

        up.send_signal(signal.SIGTERM)
        assert up.wait(EXIT_S) == 0, output.text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    output.thread.join(10)
    out = output.text()
    assert out.rstrip().splitlines()[-1].startswith("up: every process stopped"), out
    kept = Path(out.rstrip().rsplit(" stay in ", 1)[-1])
    assert weights.is_file() and kept in weights.parents, "the weights outlive the cluster, where it says"
    shutil.rmtree(kept)
    root = output.after("up: starting etcd, kube-apiserver and kube-controller-manager in ")
    operator = output.after("up: operator on ")
    assert root and operator, out
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert root not in left, "a control plane process outlived make up"
    assert operator.split()[0] not in left, "the operator outlived make up"
    assert "--sleep-per-step 0.4" not in left, "the trainer outlived make up"
