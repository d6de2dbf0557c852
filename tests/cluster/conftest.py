"""The cluster tier's fixture for tests that run the operator in-process."""

from __future__ import annotations

import pytest

from controlplane import ControlPlane


@pytest.fixture
def plane(crd_installed: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> ControlPlane:
    """The control plane, with KUBECONFIG pointing at it for kopf's login and the operator's client."""
    monkeypatch.setenv("KUBECONFIG", str(crd_installed.kubeconfig))
    return crd_installed
