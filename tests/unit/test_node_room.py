"""CI runs the real node's tier only where a run fits: on a disk too full for its images the tier says why
it skipped instead of failing every story (CI's machine: DiskPressure, then "no space left on device")."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from stopline_local import node


def test_a_warm_node_is_skipped_when_the_disk_has_less_room_than_a_run_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node, "warm", lambda: True)
    free = shutil.disk_usage(tempfile.gettempdir()).free
    monkeypatch.setattr(node, "ROOM_NEEDED", free + 2**40)
    reason = node.why_not_run()
    assert reason is not None and f"GiB free under {tempfile.gettempdir()}" in reason
    monkeypatch.setattr(node, "ROOM_NEEDED", 0)
    assert node.why_not_run() is None


def test_a_cold_node_is_skipped_saying_how_to_warm_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "warm", lambda: False)
    assert "make testenv-node images-base" in (node.why_not_run() or "")
