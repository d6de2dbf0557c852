"""`pip install stopline-trainer` without extras: a fresh venv with the trainer's wheel and its one base
dependency (prometheus-client), no torch. The library imports, serves /metrics and /stop, takes report()
and answers should_stop() in one process; saving names the extra to install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from stopline_local.controlplane import REPO

from .support import TOKEN, requirements, wheel

pytestmark = pytest.mark.trainer

# Runs in the fresh venv, isolated (-I: no PYTHONPATH, no script folder, no user site-packages).
PROBE = """
import importlib.util, json, os, sys, urllib.request
from pathlib import Path

assert importlib.util.find_spec("torch") is None, "torch is installed: not a bare install"
import stopline_trainer
from stopline_trainer import Config, Run, distributed
from stopline_trainer.storage import open_store

folder = Path(sys.argv[1])
config = Config(
    metrics_port=0,
    bind_address="127.0.0.1",
    control_token=sys.argv[2],
    checkpoint_uri=str(folder / "ckpt"),
    termination_log=folder / "termination-log",
)
out = {"file": stopline_trainer.__file__}
with Run(config, handle_signals=False) as run:
    run.report(1, 10, val_loss=0.25)
    out["before"] = run.should_stop()
    url = f"http://127.0.0.1:{run.port}"
    with urllib.request.urlopen(url + "/metrics", timeout=10) as answer:
        out["metrics"] = answer.read().decode()
    stop = urllib.request.Request(
        url + "/stop",
        data=b'{"reason": "bare install"}',
        headers={"Authorization": "Bearer " + sys.argv[2], "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(stop, timeout=10) as answer:
        out["stop"] = answer.status
    out["after"] = run.should_stop()
    try:
        run.save({"w": [1.0]})
    except ImportError as e:
        out["save"] = str(e)
for name, use in (
    ("lightning", lambda: __import__("stopline_trainer.lightning")),
    ("hf", lambda: __import__("stopline_trainer.huggingface")),
    ("group", lambda: os.environ.update(WORLD_SIZE="2") or distributed.init_from_env()),
    ("s3", lambda: open_store("s3://bucket/run", s3_part_size=5 << 20)),
):
    try:
        use()
    except ImportError as e:
        out[name] = str(e)
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


def install(venv: Path, wheels: Path) -> None:
    """The trainer's wheel and its base dependencies, nothing else: from local wheels where pip's
    find-links has them (no network), else from the index, at the version the dev venv runs."""
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    [trainer] = wheels.glob("stopline_trainer-*.whl")
    base = [f"{name}=={version(name)}" for name in requirements(zipfile.ZipFile(trainer))[""]]
    links = [f"--find-links={folder}" for folder in os.environ.get("PIP_FIND_LINKS", "").split() if folder]
    offline = subprocess.run(
        [*pip, "--no-index", *links, str(trainer), *base], capture_output=True, text=True
    )
    if offline.returncode == 0:
        return
    online = subprocess.run([*pip, str(trainer), *base], capture_output=True, text=True)
    if online.returncode != 0:
        pytest.skip(
            f"{' '.join(base)}: no local wheel and no index to fetch it from\n{online.stderr[-2000:]}"
        )


def test_the_base_install_imports_and_serves_without_torch(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheel(REPO / "trainer-image", wheels).close()
    venv = tmp_path / "venv"

    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    made = time.monotonic()
    install(venv, wheels)
    installed = time.monotonic()
    print(f"bare install: python -m venv {made - started:.1f}s, pip install {installed - made:.1f}s")

    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", PROBE, str(tmp_path), TOKEN],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    out = json.loads(probe.stdout)
    assert Path(out["file"]).is_relative_to(venv)  # the installed copy, not the repository's
    assert out["before"] is False and out["after"] is True and out["stop"] == 202
    assert (
        "stopline_epoch 1.0" in out["metrics"] and 'stopline_metric{name="val_loss"} 0.25' in out["metrics"]
    )
    assert out["save"] == (
        "saving a checkpoint (torch.save) needs torch, which is not installed: "
        "pip install 'stopline-trainer[torch]'"
    )
    extra = "which is not installed: pip install 'stopline-trainer[{}]'"
    assert out["lightning"] == "stopline_trainer.lightning needs lightning, " + extra.format("lightning")
    assert out["hf"] == "stopline_trainer.huggingface needs transformers, " + extra.format("hf")
    assert out["group"] == (
        "joining the ranks' process group (WORLD_SIZE > 1) needs torch, " + extra.format("torch")
    )
    assert out["s3"] == "the checkpoint target s3://bucket/run needs boto3, " + extra.format("s3")
    assert out["torch_loaded"] is False
