"""What a save leaves behind, through the real Run and checkpointer on a real folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stopline_trainer import Config, Run

from .support import POINTER_KEYS, TOKEN

pytestmark = pytest.mark.trainer

URI_CHARS = 512


def run_config(tmp_path: Path, folder: Path, **settings: object) -> Config:
    defaults: dict[str, object] = {
        "job": "mlp",
        "namespace": "ml",
        "metrics_port": 0,
        "bind_address": "127.0.0.1",
        "checkpoint_uri": str(folder),
        "control_token": TOKEN,
        "termination_log": tmp_path / "termination-log",
    }
    return Config(**{**defaults, **settings})  # type: ignore[arg-type]


def folder_of_length(base: Path, length: int) -> Path:
    """A folder whose absolute path has `length` characters (components under the 255-byte limit)."""
    folder = base.absolute()
    while len(str(folder)) < length:
        folder = folder / ("d" * min(100, length - len(str(folder)) - 1))
    return folder


def test_the_termination_message_is_a_pointer_under_1_kib_and_the_manifest_keeps_the_rest(
    tmp_path: Path,
) -> None:
    folder = folder_of_length(tmp_path / "claim", URI_CHARS)
    metrics = {f"metric_{i:02d}": i / 7 for i in range(80)}
    with Run(run_config(tmp_path, folder), handle_signals=False) as run:
        run.flag.request("promql: " + "rate(x[5m]) > 0 and " * 2400 + "\n")  # a 48 KB PromQL reason
        run.report(12, 12_000, **metrics)
        manifest = run.save({"weights": torch.ones(3)})
    assert manifest is not None and len(manifest.uri) > URI_CHARS

    message = (tmp_path / "termination-log").read_bytes()
    pointer = json.loads(message)
    assert set(pointer) == set(POINTER_KEYS)
    assert (pointer["uri"], pointer["epoch"], pointer["step"]) == (manifest.uri, 12, 12_000)
    # the message grows byte for byte with the URI: with a 512-character one it stays under 1 KiB
    assert len(message) - len(manifest.uri) + URI_CHARS < 1024

    kept = json.loads((folder / "last.json").read_bytes())
    assert kept["metrics"] == metrics
    assert kept["stopReason"].startswith("promql: rate(x[5m]) > 0 and")
    assert (kept["job"], kept["namespace"], kept["worldSize"]) == ("mlp", "ml", 1)


def test_a_uri_too_long_for_the_kubelet_is_said_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past 4096 bytes the kubelet cuts the message, the operator cannot parse it: the log says why."""
    folder = folder_of_length(tmp_path / "claim", 4000)
    with Run(run_config(tmp_path, folder), handle_signals=False) as run:
        run.report(1, 10)
        run.save({"weights": torch.ones(3)})
    assert len((tmp_path / "termination-log").read_bytes()) > 4096
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("the operator will not see this checkpoint" in w for w in warnings), warnings
