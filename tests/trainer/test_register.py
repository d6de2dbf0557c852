"""Checkpoints the framework wrote, registered: a 2-rank DCP folder, a folder on S3, a truncated shard, and
safetensors from the plain save."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from stopline.verify import verify_checkpoint
from stopline_local.controlplane import free_port
from stopline_local.s3server import S3Server
from stopline_trainer import Config, CorruptCheckpoint, Run
from stopline_trainer.checkpoint import FILES_MANIFEST

from .ranks import ROWS, dcp_rank, full_weights
from .support import TOKEN, assert_points_at, run_ranks
from .test_verify import SecretsOnly, spec

pytestmark = pytest.mark.trainer

MIB = 1024 * 1024


def config(tmp_path: Path, uri: str, name: str = "termination-log", **settings: Any) -> Config:
    return Config(
        job="llm",
        namespace="ml",
        metrics_port=0,
        bind_address="127.0.0.1",
        checkpoint_uri=uri,
        control_token=TOKEN,
        termination_log=tmp_path / name,
        **settings,
    )


def test_a_dcp_checkpoint_of_two_ranks_is_registered_verified_and_loaded_back(tmp_path: Path) -> None:
    run_ranks(dcp_rank, str(tmp_path), free_port(), TOKEN)

    ckpt = tmp_path / "ckpt"
    manifest = json.loads((ckpt / "last.json").read_bytes())
    folder = Path(manifest["uri"]).parent
    assert manifest["format"] == "files" and Path(manifest["uri"]).name == FILES_MANIFEST
    assert (manifest["epoch"], manifest["step"], manifest["worldSize"]) == (3, 12, 2)
    raw = Path(manifest["uri"]).read_bytes()
    assert len(raw) == manifest["bytes"]  # the pointer's bytes and sha256 are the file list's own
    listed = {f["path"]: f for f in json.loads(raw)["files"]}
    # rank 0 wrote .metadata and its shard, rank 1 only its shard, each on its own "disk"
    assert set(listed) == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    for name, entry in listed.items():
        assert (folder / name).stat().st_size == entry["bytes"]
    assert manifest["files"] == 3 and manifest["filesBytes"] == sum(f["bytes"] for f in listed.values())
    assert_points_at(tmp_path / "rank0.log", manifest)
    assert not (tmp_path / "rank1.log").exists() or "uri" not in json.loads(
        (tmp_path / "rank1.log").read_text()
    )
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["last.json", folder.name])

    full = full_weights()
    for rank in (0, 1):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["uri"] == manifest["uri"] and sorted(out["files"]) == sorted(listed)
        assert out["step"] == 12
        torch.testing.assert_close(
            torch.tensor(out["shard"]), full[rank * ROWS // 2 : (rank + 1) * ROWS // 2]
        )
        torch.testing.assert_close(torch.tensor(out["full"]), full)


def save_pretrained_like(folder: Path, big: int) -> dict[str, bytes]:
    """A folder as save_pretrained leaves it: weights (one above a multipart part), a config, a subfolder."""
    files = {
        "model.safetensors": os.urandom(big),
        "config.json": b'{"n_layer": 2}',
        "tokenizer/vocab.json": b'{"a": 0}',
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def test_a_folder_registered_on_s3_is_uploaded_before_its_manifest_verified_and_kept_to_the_newest(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = s3_server.client()
    s3.create_bucket(Bucket="ckpts")
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    uri = "s3://ckpts/runs/a"
    first, second = tmp_path / "checkpoint-10", tmp_path / "checkpoint-20"
    save_pretrained_like(first, 100)
    files = save_pretrained_like(second, 6 * MIB)
    with Run(config(tmp_path, uri, s3_part_size=5 * MIB), handle_signals=False) as run:
        run.report(1, 10, val_loss=0.9)
        older = run.register(first)
        run.report(2, 20, val_loss=0.8)
        manifest = run.register(second)

    assert manifest.uri.startswith("s3://ckpts/runs/a/ckpt-") and manifest.uri.endswith(f"/{FILES_MANIFEST}")
    folder = manifest.uri.removeprefix("s3://ckpts/").rsplit("/", 1)[0]
    objects = {o["Key"]: o for o in s3.list_objects_v2(Bucket="ckpts", Prefix="runs/a/")["Contents"]}
    # the older folder is gone (kept to the newest); the files, then the file list, then last.json
    assert set(objects) == {f"{folder}/{name}" for name in [*files, FILES_MANIFEST]} | {"runs/a/last.json"}
    assert older.entry != manifest.entry
    listing_time = objects[f"{folder}/{FILES_MANIFEST}"]["LastModified"]
    assert all(objects[f"{folder}/{name}"]["LastModified"] <= listing_time for name in files)
    assert objects["runs/a/last.json"]["LastModified"] >= listing_time
    assert s3.list_multipart_uploads(Bucket="ckpts").get("Uploads", []) == []

    last = json.loads(s3.get_object(Bucket="ckpts", Key="runs/a/last.json")["Body"].read())
    assert (last["uri"], last["bytes"], last["sha256"]) == (manifest.uri, manifest.size, manifest.sha256)
    assert_points_at(tmp_path / "termination-log", last)
    # the operator's own check: HEAD the pointer's uri under the job's prefix, compare its bytes
    kube = SecretsOnly({k: s3_server.env()[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    pointer = json.loads((tmp_path / "termination-log").read_bytes())
    condition = asyncio.run(verify_checkpoint(kube, "ns", spec(s3_server), pointer))  # type: ignore[arg-type]
    assert condition is not None and (condition.status, condition.reason) == (True, "ObjectVerified")

    resumed = Run(config(tmp_path, uri, "again")).resume(into=tmp_path / "download")
    assert resumed is not None and resumed.path == tmp_path / "download"
    assert (resumed.manifest.epoch, resumed.manifest.step) == (2, 20)
    assert {name: (resumed.path / name).read_bytes() for name in resumed.files} == files


def test_a_truncated_changed_or_missing_shard_fails_verification(tmp_path: Path) -> None:
    source = tmp_path / "checkpoint-5"
    save_pretrained_like(source, 4096)
    ckpt = tmp_path / "ckpt"
    with Run(config(tmp_path, str(ckpt)), handle_signals=False) as run:
        run.report(1, 5)
        manifest = run.register(source)
    good = Run(config(tmp_path, str(ckpt), "good")).resume()
    assert good is not None and good.path == ckpt / manifest.entry
    assert sorted(good.files) == ["config.json", "model.safetensors", "tokenizer/vocab.json"]

    shard = ckpt / manifest.entry / "model.safetensors"
    original = shard.read_bytes()
    with open(shard, "r+b") as f:
        f.truncate(4000)
    with pytest.raises(
        CorruptCheckpoint, match=r"model\.safetensors: 4000 bytes .* manifest says 4096 bytes"
    ):
        Run(config(tmp_path, str(ckpt), "bad")).resume()
    shard.write_bytes(b"\0" * 4096)  # the right size, other bytes
    with pytest.raises(CorruptCheckpoint, match=r"model\.safetensors: 4096 bytes sha256 .* manifest says"):
        Run(config(tmp_path, str(ckpt), "other")).resume()
    shard.write_bytes(original)
    (ckpt / manifest.entry / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(CorruptCheckpoint, match=r"tokenizer/vocab\.json is missing"):
        Run(config(tmp_path, str(ckpt), "gone")).resume()


def test_one_registered_file_comes_back_as_that_file_and_safetensors_from_the_plain_save(
    tmp_path: Path,
) -> None:
    ckpt = tmp_path / "ckpt"
    weights = {"layer.weight": torch.randn(4, 3), "layer.bias": torch.randn(4)}
    lightning_file = tmp_path / "epoch=2.ckpt"
    torch.save({"state_dict": weights, "epoch": 2}, lightning_file)
    with Run(config(tmp_path, str(ckpt)), handle_signals=False) as run:
        run.report(2, 40)
        run.register(lightning_file)
    registered = Run(config(tmp_path, str(ckpt), "a"))
    path = registered.resume_path()
    assert path is not None and Path(path).name == "epoch=2.ckpt" and Path(path).parent.parent == ckpt
    assert torch.load(path, weights_only=True)["epoch"] == 2

    with Run(config(tmp_path, str(ckpt)), handle_signals=False) as run:
        run.report(3, 60)
        manifest = run.save(weights, format="safetensors")
        with pytest.raises(TypeError, match="flat"):
            run.save({"model": weights}, format="safetensors")
    assert manifest is not None and manifest.format == "safetensors" and manifest.uri.endswith(".safetensors")
    ckpt_back = Run(config(tmp_path, str(ckpt), "b")).resume()
    assert ckpt_back is not None and ckpt_back.manifest.step == 60
    assert ckpt_back.state.keys() == weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(ckpt_back.state[name], tensor)
    # the registered folder was collected once the save replaced it
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["last.json", Path(manifest.uri).name])
