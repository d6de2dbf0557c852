"""The two distributions: a training image installs stopline-trainer and gets nothing of the operator."""

from __future__ import annotations

from pathlib import Path

import pytest

from stopline_local.controlplane import REPO

from .support import requirements, wheel

pytestmark = pytest.mark.trainer

OPERATOR_ONLY = {"kopf", "kubernetes", "kubernetes-asyncio", "kubernetes_asyncio", "aiohttp", "pyyaml"}


def test_the_trainer_distribution_pulls_nothing_of_the_operator(tmp_path: Path) -> None:
    built = wheel(REPO / "trainer-image", tmp_path)
    packages = {
        entry.split("/")[0] for entry in built.namelist() if not entry.split("/")[0].endswith(".dist-info")
    }
    assert packages == {"stopline_trainer"}
    needs = requirements(built)
    assert needs[""] == ["prometheus-client"]
    assert not OPERATOR_ONLY & {package for extra in needs.values() for package in extra}
    assert set(needs) == {"", "torch", "lightning", "s3", "hf"}


def test_the_operator_distribution_ships_only_the_operator(tmp_path: Path) -> None:
    built = wheel(REPO, tmp_path)
    packages = {
        entry.split("/")[0] for entry in built.namelist() if not entry.split("/")[0].endswith(".dist-info")
    }
    assert packages == {"stopline"}
    assert "torch" not in requirements(built)[""]
