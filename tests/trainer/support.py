"""Support for the trainer tier: the example trainer as a process, polls with deadlines, checkpoint checks."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch.multiprocessing.spawn import start_processes

from scripts import load_script
from stopline_local.controlplane import REPO, T, free_port
from stopline_local.controlplane import wait_until as poll
from stopline_trainer import distributed

EXAMPLE = REPO / "trainer-image" / "examples" / "train.py"
TOKEN = "test-token-0123456789"
DEADLINE_S = 90.0  # generous: the CI box is shared; every wait polls and returns as soon as it can


def wait_until(check: Callable[[], T], what: str, on_fail: Callable[[], str] | None = None) -> T:
    """controlplane.wait_until with this tier's deadline and a fast poll; an exception fails at once."""
    return poll(check, DEADLINE_S, what, interval=0.05, retry_on=(), details=on_fail)


def load_example() -> ModuleType:
    """The example trainer as a module, for make_model() and probe_input()."""
    return load_script(EXAMPLE, "stopline_example_train")


class Endpoint:
    """A client of one trainer's /metrics, /healthz and /stop."""

    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self) -> dict[str, float] | None:
        """Samples keyed like `stopline_metric{name="val_loss"}`; None while the server is not up yet."""
        try:
            status, body = self.get("/metrics")
        except OSError:
            return None
        assert status == 200
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def post_stop(self, body: dict[str, str] | None = None, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(self.url + "/stop", data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


class TrainerProcess(Endpoint):
    """One example-trainer process with its own port, termination log and log file."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str], name: str) -> None:
        super().__init__(free_port())
        self.termination_log = workdir / f"{name}.termination-log"
        self.log_path = workdir / f"{name}.log"
        full_env = {
            **os.environ,
            "STOPLINE_JOB": "test-job",
            "STOPLINE_NAMESPACE": "test-ns",
            "STOPLINE_METRICS_PORT": str(self.port),
            "STOPLINE_BIND_ADDRESS": "127.0.0.1",
            "STOPLINE_CONTROL_TOKEN": TOKEN,
            "STOPLINE_TERMINATION_LOG": str(self.termination_log),
            "OMP_NUM_THREADS": "1",  # two cores shared with builds: one thread per trainer
            **env,
        }
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(EXAMPLE), *args], env=full_env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_metric(self, name: str, at_least: float) -> float:
        def check() -> float | None:
            self.assert_running()
            m = self.metrics()
            return m[name] if m and m.get(name, -1) >= at_least else None

        value = wait_until(check, f"{name} >= {at_least}", on_fail=self.log)
        assert value is not None  # wait_until returns only a truthy value
        return value

    def signal(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"trainer exited early with {self.proc.returncode}\n{self.log()}")

    def wait_exit(self, deadline_s: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(deadline_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"trainer still running after {deadline_s}s\n{self.log()}")


def verify_blob(blob: bytes, manifest: dict[str, Any]) -> dict[str, Any]:
    """The weights match the manifest's size and sha256; returns the loaded state."""
    assert len(blob) == manifest["bytes"]
    assert hashlib.sha256(blob).hexdigest() == manifest["sha256"]
    state: dict[str, Any] = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    return state


POINTER_KEYS = ("uri", "epoch", "step", "bytes", "sha256", "savedAt")  # what status.checkpoint holds


def assert_points_at(termination_log: Path, manifest: dict[str, Any]) -> None:
    """Rank 0's termination message is the compact pointer to this manifest's weights, and nothing more."""
    message = termination_log.read_bytes()
    assert len(message) < 1024
    # and the objective of the last epochs that reported it (status.curve's end, for a job that ends
    # between two of the operator's reads)
    keys = (*POINTER_KEYS, "tail") if "tail" in manifest else POINTER_KEYS
    assert json.loads(message) == {key: manifest[key] for key in keys}


def read_local_checkpoint(folder: Path, which: str = "last.json") -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, state) of a checkpoint in a folder, verified."""
    manifest = json.loads((folder / which).read_bytes())
    assert Path(manifest["uri"]).parent == folder
    return manifest, verify_blob(Path(manifest["uri"]).read_bytes(), manifest)


def assert_reproduces_outputs(state: dict[str, Any], hidden: int = 128) -> None:
    """A fresh model with the saved weights gives the trainer's own outputs on the probe batch."""
    example = load_example()
    model = example.make_model(hidden)
    model.load_state_dict(state["model"])
    with torch.no_grad():
        out = model(example.probe_input())
    torch.testing.assert_close(out, state["probe_output"])
    assert not torch.equal(example.make_model(hidden)(example.probe_input()), out)  # not a fresh init


def wheel(source: Path, into: Path) -> zipfile.ZipFile:
    """Build the distribution's wheel as pip would for `pip install`, offline (no build isolation)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(into),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    [built] = into.glob("*.whl")
    return zipfile.ZipFile(built)


def requirements(built: zipfile.ZipFile) -> dict[str, list[str]]:
    """Requires-Dist by extra ("" for the plain install), names only, lower case."""
    [name] = [entry for entry in built.namelist() if entry.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(built.read(name).decode())
    found: dict[str, list[str]] = {}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement, _, marker = line.partition(";")
        extra = marker.split("extra ==")[-1].strip().strip("'\"") if "extra" in marker else ""
        package = requirement.strip().split(" ")[0].split(">")[0].split("=")[0].split("<")[0].split("[")[0]
        found.setdefault(extra, []).append(package.lower())
    return found


def counting_all_reduces(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The flags should_stop() all-reduces, one entry per collective (single process: the flag itself)."""
    asked: list[bool] = []
    real = distributed.any_rank

    def any_rank(flag: bool) -> bool:
        asked.append(flag)
        return real(flag)

    monkeypatch.setattr(distributed, "any_rank", any_rank)
    return asked


# What the ranks run: imported once by the fork server, so each rank starts at once
RANK_MODULES = [f"{__package__}.ranks"]


def run_ranks(fn: Any, *args: object, beside: Callable[[], object] | None = None) -> None:
    """Two ranks forked from a fork server (a fresh interpreter that imported torch and RANK_MODULES once
    for the whole tier), each failing the test with its traceback, both killed past the tier's deadline.
    Not forked from this process: once it has run torch on several threads, OpenMP hangs in a forked
    child. `beside` runs on a thread of this process meanwhile."""
    # torch._dynamo: DTensor imports it on first use, ~1 s a rank
    multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", *RANK_MODULES])  # no-op once it runs
    ranks = start_processes(fn, args=args, nprocs=2, join=False, start_method="forkserver")  # type: ignore[no-untyped-call]
    helper = threading.Thread(target=beside, daemon=True) if beside is not None else None
    if helper is not None:
        helper.start()
    deadline = time.monotonic() + DEADLINE_S
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks still run after {DEADLINE_S}s")
    if helper is not None:
        helper.join(DEADLINE_S)
