"""A missing testenv is one clear instruction, never a silent skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from stopline_local import controlplane


def test_missing_binary_says_run_make_testenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controlplane, "TESTENV", tmp_path)
    with pytest.raises(controlplane.MissingTestenv, match=r"bin/etcd is missing: run `make testenv`"):
        controlplane.ControlPlane(root=tmp_path / "run").start()
