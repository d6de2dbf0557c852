"""Checkpoints in a real S3-compatible server (versitygw): multipart upload, manifest last, bytes intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stopline_local.s3server import S3Server
from stopline_trainer.checkpoint import job_tag

from .conftest import StartTrainer
from .support import assert_points_at, assert_reproduces_outputs, verify_blob, wait_until

pytestmark = pytest.mark.trainer

MIB = 1024 * 1024
HIDDEN = 1024  # ~1.1 M parameters: weights + Adam state ~13 MB, i.e. three 5 MiB parts


def test_multipart_upload_then_manifest_and_the_bytes_read_back_equal(
    start_trainer: StartTrainer, s3_server: S3Server, tmp_path: Path
) -> None:
    s3 = s3_server.client()
    s3.create_bucket(Bucket="ckpts")
    pause = tmp_path / "pause"
    t = start_trainer(
        "--epochs", "1", "--steps-per-epoch", "3", "--hidden", str(HIDDEN),
        env={
            **s3_server.env(),
            "STOPLINE_CHECKPOINT_URI": "s3://ckpts/runs/job-a",
            "STOPLINE_S3_PART_SIZE": str(5 * MIB),
            "STOPLINE_FAULT_PAUSE_SAVE": f"1:{pause}",
        },
    )  # fmt: skip

    # paused after the first part: the upload is in flight, and neither the weights nor a manifest exist
    wait_until(lambda: (pause / "paused").exists(), "the first part to be uploaded", on_fail=t.log)
    listed = s3.list_objects_v2(Bucket="ckpts", Prefix="runs/job-a/").get("Contents", [])
    assert listed == []
    uploads = s3.list_multipart_uploads(Bucket="ckpts", Prefix="runs/job-a/").get("Uploads", [])
    tag = job_tag("test-job", "test-ns")
    assert len(uploads) == 1 and uploads[0]["Key"].startswith(f"runs/job-a/ckpt-{tag}-e000001-s000000003-")
    parts = s3.list_parts(Bucket="ckpts", Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])["Parts"]
    assert [p["Size"] for p in parts] == [5 * MIB]
    (pause / "resume").touch()

    assert t.wait_exit() == 0, t.log()
    raw = s3.get_object(Bucket="ckpts", Key="runs/job-a/last.json")["Body"].read()
    manifest = json.loads(raw)
    key = manifest["uri"].removeprefix("s3://ckpts/")
    assert key == uploads[0]["Key"]
    blob = s3.get_object(Bucket="ckpts", Key=key)["Body"].read()
    assert manifest["bytes"] > 2 * 5 * MIB
    state = verify_blob(blob, manifest)
    assert_reproduces_outputs(state, hidden=HIDDEN)
    assert_points_at(t.termination_log, manifest)
    objects = {o["Key"]: o for o in s3.list_objects_v2(Bucket="ckpts", Prefix="runs/job-a/")["Contents"]}
    assert set(objects) == {key, "runs/job-a/last.json"}
    assert objects["runs/job-a/last.json"]["LastModified"] >= objects[key]["LastModified"]
    assert s3.list_multipart_uploads(Bucket="ckpts").get("Uploads", []) == []
