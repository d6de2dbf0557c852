"""Fixtures shared by the cluster and e2e tiers. Unit tests never request them, so nothing starts there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One real control plane for the whole run; stopped even when tests fail or the run is interrupted."""
    plane = ControlPlane().start()
    try:
        yield plane
    finally:
        plane.stop()
