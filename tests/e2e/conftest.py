"""The e2e tier: on top of the shared fixtures, one local kubelet that runs the trainer pods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stopline_local.controlplane import ADMIN_TOKEN, ControlPlane
from stopline_local.kubelet import LocalKubelet


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubelet]:
    """One local kubelet for the run, so it also finalizes the pods of namespaces deleted after each test."""
    root: Path = tmp_path_factory.mktemp("kubelet")
    ca_file = control_plane.root / "certs" / "apiserver.crt"  # the apiserver's self-signed chain
    with LocalKubelet(control_plane.server, ADMIN_TOKEN, ca_file, root) as running:
        yield running
