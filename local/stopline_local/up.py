"""`make up`: a local cluster to try stopline by hand with kubectl, until Ctrl-C.

Starts a real kube-apiserver, etcd and kube-controller-manager (from `make testenv`), installs the
TrainingJob CRD from crds/, makes the claim `checkpoints` in namespace `default`, and starts the operator
(`stopline operator`, all namespaces, as a process) and the local kubelet, which runs the pods of
TrainingJobs of the example trainer (examples/local/) as processes on 127.0.0.x. Then it prints the
KUBECONFIG to export and the commands to try, and stays up until Ctrl-C or SIGTERM, when it stops every
process it started.

    .venv/bin/python -m stopline_local.up
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from stopline_local.cluster import LocalCluster
from stopline_local.controlplane import REPO, TESTENV

NAMESPACE = "default"
EXAMPLE = Path("examples") / "local" / "patience.yaml"
WATCH_S = 2  # how often it checks that the operator is still running


def say(line: str) -> None:
    print(f"up: {line}", flush=True)


def instructions(cluster: LocalCluster) -> str:
    """What to paste into another shell: the KUBECONFIG, kubectl on PATH, and what to try."""
    setup = [
        (f"export KUBECONFIG={shlex.quote(str(cluster.plane.kubeconfig))}", "an admin kubeconfig"),
        (
            f'export PATH={shlex.quote(str(TESTENV / "bin"))}:"$PATH"',
            "the testenv's kubectl; any kubectl works",
        ),
        (f"cd {shlex.quote(str(REPO))}", "the examples' paths start here"),
    ]
    tries = [
        (f"kubectl apply -f {EXAMPLE}", "a TrainingJob that a patience criterion stops"),
        ("kubectl get tj -w", "phase, epoch, objective, best value, stop reason"),
        ('kubectl annotate tj NAME stopline.dev/stop="why"', "stop one by hand, weights kept"),
        ("kubectl describe tj NAME", "its status, conditions and Events"),
    ]
    return (
        f"\nThe local cluster is up. In another shell:\n\n{_commented(setup)}\n\n{_commented(tries)}\n\n"
        "More TrainingJobs for this cluster are in examples/local/. Ctrl-C here stops every process.\n"
    )


def _commented(lines: list[tuple[str, str]]) -> str:
    width = max(len(command) for command, _ in lines) + 2
    return "\n".join(f"  {command:<{width}}# {why}" for command, why in lines)


def _interrupt(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stopline_local.up",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # Ctrl-C raises KeyboardInterrupt already
    volumes = Path(tempfile.mkdtemp(prefix="stopline-up-"))  # kept: the checkpoints outlive the cluster
    cluster = LocalCluster(namespace=NAMESPACE, volumes=volumes)
    try:
        cluster.start(say)
        print(instructions(cluster), flush=True)
        while True:
            time.sleep(WATCH_S)
            cluster.check_operator()
    except KeyboardInterrupt:  # what a user stops it with: a clean stop, exit 0
        print(flush=True)
        say("stopping every process it started")
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the cleanup short
            signal.signal(signum, signal.SIG_IGN)
        cluster.stop()
        say(f"every process stopped; trainer logs and checkpoints stay in {volumes}")


if __name__ == "__main__":
    sys.exit(main())
