"""The e2e tier: on top of the shared fixtures, one local kubelet that runs the trainer pods."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.support import apply_claim
from operatorharness import operator
from stopline_local.controlplane import ADMIN_TOKEN, ControlPlane
from stopline_local.kubelet import LocalKubelet
from stopline_local.workloads import (
    JOBSET_VERSION,
    TRAINER_VERSION,
    TRAINING_OPERATOR_VERSION,
    Manager,
    running_jobset,
    running_trainer,
    running_training_operator,
)


@pytest.fixture
def story(plane: ControlPlane, namespace: str, kubelet: LocalKubelet) -> Iterator[ControlPlane]:
    """The operator watching the test's namespace, with the checkpoint claim the examples use."""
    apply_claim(plane, namespace)
    with operator(namespace):
        yield plane


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubelet]:
    """One local kubelet for the run, so it also finalizes the pods of namespaces deleted after each test."""
    root: Path = tmp_path_factory.mktemp("kubelet")
    ca_file = control_plane.root / "certs" / "apiserver.crt"  # the apiserver's self-signed chain
    with LocalKubelet(control_plane.server, ADMIN_TOKEN, ca_file, root) as running:
        yield running


# the real workload controllers, one per test module that asks (how long each takes to be ready: `-s`)


@pytest.fixture(scope="module")
def jobset_controller(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Manager]:
    started = time.monotonic()
    with running_jobset(control_plane, tmp_path_factory.mktemp("jobset")) as manager:
        print(f"\nJobSet v{JOBSET_VERSION}: ready in {time.monotonic() - started:.1f} s")
        yield manager


@pytest.fixture(scope="module")
def trainer_controller(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory, jobset_controller: Manager
) -> Iterator[Manager]:
    started = time.monotonic()
    with running_trainer(control_plane, tmp_path_factory.mktemp("trainer"), jobset_controller) as manager:
        print(f"\nKubeflow Trainer v{TRAINER_VERSION}: ready in {time.monotonic() - started:.1f} s")
        yield manager


@pytest.fixture(scope="module")
def training_operator(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Manager]:
    started = time.monotonic()
    with running_training_operator(control_plane, tmp_path_factory.mktemp("training-operator")) as manager:
        print(
            f"\nTraining Operator v{TRAINING_OPERATOR_VERSION}: ready in {time.monotonic() - started:.1f} s"
        )
        yield manager
