"""The tenant-starvation story (tests/faults/test_tenant_starvation.py) with the operator as its own process,
so its memory is its own: one tenant floods the shared Prometheus (30,000 series, answers of 4.5 s, 64
promql criteria), trickles its object store's answers and churns pods under its job's name; the other
tenant's two jobs are stopped, one by its threshold through that Prometheus, one by `kubectl annotate`.

A fresh control plane; `stopline operator --namespace victim --namespace attacker` with the admin
kubeconfig, started twice (the story restarts it), its code from --operator-source (default: this
checkout's operator/; a `git worktree` of an earlier commit measures the code before a fix). Printed:
each victim's seconds from the stop's cause to its POST /stop, what the attack did meanwhile, and each
operator process's RSS (VmRSS sampled every 0.5 s: its peak, and at its end). Figures only;
nothing is asserted.

Run: .venv/bin/python bench/hostile/tenant_starvation.py [--operator-source /tmp/before/operator]
     [--flood-series 26000 --delay 0]   (answers just under the 8 MiB cap, at once: the most parsing)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from faults.test_tenant_starvation import FLOOD_SERIES, SLOW_S, story  # noqa: E402
from stopline_local.controlplane import ControlPlane, die_with_parent, stop_process  # noqa: E402

VICTIM, ATTACKER = "victim", "attacker"


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError("VmRSS")


class Samples:
    """VmRSS of one process every 0.5 s until stopped: the largest and the last."""

    def __init__(self, pid: int) -> None:
        self.pid, self.values = pid, [resident_mib(pid)]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, name="rss", daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stopping.wait(0.5):
            self.values.append(resident_mib(self.pid))

    def stop(self) -> str:
        self.stopping.set()
        self.thread.join(5)
        return f"VmRSS {max(self.values):.0f} MiB at its peak, {self.values[-1]:.0f} MiB at its end"


@contextmanager
def operator_process(plane: ControlPlane, source: Path, log: Path, report: list[str]) -> Iterator[None]:
    """`stopline operator` on both namespaces, its `stopline` package from `source`; its RSS into `report`."""
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "PYTHONPATH": str(source)}
    command = [
        sys.executable,
        "-m",
        "stopline.cli",
        "operator",
        "--namespace",
        VICTIM,
        "--namespace",
        ATTACKER,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
        )
    samples = Samples(process.pid)
    try:
        yield
    finally:
        report.append(samples.stop())
        stop_process(process, grace_s=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operator-source", type=Path, default=REPO / "operator")
    parser.add_argument(
        "--flood-series", type=int, default=FLOOD_SERIES, help="series in each attacker answer"
    )
    parser.add_argument("--delay", type=float, default=SLOW_S, help="seconds before each attacker answer")
    parser.add_argument("--churned", type=int, default=2000, help="pods churned before the victims' stops")
    args = parser.parse_args()
    plane = ControlPlane().start()
    try:
        plane.install_crd(REPO / "crds" / "trainingjob.yaml")
        for namespace in (VICTIM, ATTACKER):
            plane.kubectl("create", "namespace", namespace)
        report: list[str] = []
        log = plane.root / "operator.log"
        figures = story(
            plane,
            VICTIM,
            ATTACKER,
            lambda: operator_process(plane, args.operator_source.resolve(), log, report),
            args.flood_series,
            args.delay,
            args.churned,
        )
        print(f"operator from {args.operator_source} (log: {log})")
        print(f"attacker's answers: {args.flood_series} series after {args.delay:g} s")
        roles = ("the operator that made the jobs", "the operator restarted into the attack")
        print(
            *figures.lines(),
            *(f"{role}: {line}" for role, line in zip(roles, report, strict=False)),
            sep="\n",
        )
    finally:
        plane.stop()


if __name__ == "__main__":
    main()
