"""The faults tier: on top of the shared fixtures (tests/conftest.py), a second namespace for the tenancy
stories and the local kubelet (stopline_local.kubelet) for the one story that needs real trainers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stopline_local.controlplane import ADMIN_TOKEN, ControlPlane
from stopline_local.kubelet import LocalKubelet


@pytest.fixture
def other_namespace(crd_installed: ControlPlane) -> Iterator[str]:
    """A second fresh namespace: another tenant of the same cluster."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    crd_installed.kubectl("create", "namespace", name)
    yield name
    crd_installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kubelet(plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[LocalKubelet]:
    """A local kubelet for this test's namespace only: the other fault tests play the kubelet themselves,
    so it must never run their pods. On exit its pods are removed for good (no kubelet is left to
    finish their deletion), so the namespace can go."""
    ca_file = plane.root / "certs" / "apiserver.crt"
    with LocalKubelet(
        plane.server, ADMIN_TOKEN, ca_file, tmp_path / "kubelet", namespaces={namespace}
    ) as running:
        yield running
    plane.kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", check=False)
