"""The two distributions: a training image installs stopline-trainer and gets nothing of the operator."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from stopline_local.controlplane import REPO

pytestmark = pytest.mark.trainer

OPERATOR_ONLY = {"kopf", "kubernetes", "kubernetes-asyncio", "kubernetes_asyncio", "aiohttp", "pyyaml"}


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


def test_the_trainer_distribution_pulls_nothing_of_the_operator(tmp_path: Path) -> None:
    built = wheel(REPO / "trainer-image", tmp_path)
    packages = {
        entry.split("/")[0] for entry in built.namelist() if not entry.split("/")[0].endswith(".dist-info")
    }
    assert packages == {"stopline_trainer"}
    needs = requirements(built)
    assert needs[""] == ["prometheus-client"]
    assert not OPERATOR_ONLY & {package for extra in needs.values() for package in extra}
    assert set(needs) == {"", "torch", "lightning", "s3"}


def test_the_operator_distribution_ships_only_the_operator(tmp_path: Path) -> None:
    built = wheel(REPO, tmp_path)
    packages = {
        entry.split("/")[0] for entry in built.namelist() if not entry.split("/")[0].endswith(".dist-info")
    }
    assert packages == {"stopline"}
    assert "torch" not in requirements(built)[""]
