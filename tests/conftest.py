"""Fixtures shared by the cluster and e2e tiers. Unit tests never request them, so nothing starts there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from stopline_local.controlplane import REPO, ControlPlane
from stopline_local.kueue import Kueue, running_kueue

CRD = REPO / "crds" / "trainingjob.yaml"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One real control plane for the whole run; stopped even when tests fail or the run is interrupted."""
    plane = ControlPlane().start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def crd_installed(control_plane: ControlPlane) -> ControlPlane:
    """The CRD from crds/, installed once, as a user installs it."""
    control_plane.install_crd(CRD)
    return control_plane


@pytest.fixture
def namespace(crd_installed: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test, so tests never see each other's objects."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    crd_installed.kubectl("create", "namespace", name)
    yield name
    crd_installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def plane(crd_installed: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> ControlPlane:
    """The control plane, with KUBECONFIG pointing at it for kopf's login and the operator's client."""
    monkeypatch.setenv("KUBECONFIG", str(crd_installed.kubeconfig))
    return crd_installed


@pytest.fixture(scope="module")
def kueue(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """A real Kueue manager for the tests of one module: its webhooks see every Job while it runs."""
    with running_kueue(control_plane, tmp_path_factory.mktemp("kueue")) as running:
        yield running
