"""The trainer contract across the two distributions, which never import each other: the env the operator
puts on the trainer container is the Config stopline_trainer reads, the trainer's /metrics is what the
operator's parser reads, and rank 0's termination message is what becomes status.checkpoint.

Everything here is the real code of both sides; the test plays the kubelet (resolving secretKeyRef and
fieldRef) and the scrape (one GET on 127.0.0.1).
"""

from __future__ import annotations

import json
import math
import re
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stopline.api import parse_spec
from stopline.metrics import exposition
from stopline.metrics.exposition import parse_exposition
from stopline.pointer import checkpoint_status, exported_checkpoint, last_values, stop_cause
from stopline.workload import Owner, build_job, build_token_secret
from stopline_local.controlplane import REPO
from stopline_trainer import Config, Run
from stopline_trainer.checkpoint import Manifest as TrainerManifest
from stopline_trainer.control import clean_cause
from stopline_trainer.storage.s3 import S3Store

OWNER = Owner(name="resnet", namespace="ml", uid="1b4e28ba-2fa1-11d2-883f-0016d3cca427")
TOKEN = "tok-0123456789abcdef"
COMPLETION_INDEX = re.compile(r"metadata\.annotations\['(?P<key>[^']+)'\]")
# injected for code other than stopline_trainer's own parser: torch.distributed's env:// and the AWS SDK
READ_BY_OTHERS = {"MASTER_ADDR", "MASTER_PORT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


class RecordingEnv(dict[str, str]):
    """A pod's environment as the trainer reads it, remembering every name it asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def example_spec(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())["spec"]
    return spec


def pod_env(
    job: dict[str, Any], secrets: dict[str, dict[str, str]], annotations: dict[str, str]
) -> RecordingEnv:
    """What the kubelet would set in the trainer container of one of the Job's pods."""
    containers = job["spec"]["template"]["spec"]["containers"]
    trainer = next((c for c in containers if c["name"] == "trainer"), containers[0])
    env: dict[str, str] = {}
    for variable in trainer["env"]:
        source = variable.get("valueFrom", {})
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[variable["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            match = COMPLETION_INDEX.fullmatch(source["fieldRef"]["fieldPath"])
            assert match is not None, variable
            env[variable["name"]] = annotations[match["key"]]
    return RecordingEnv(env)


def token_secrets() -> dict[str, dict[str, str]]:
    secret = build_token_secret(OWNER, TOKEN)
    return {secret["metadata"]["name"]: secret["stringData"]}


def test_a_single_rank_pod_env_is_the_config_the_trainer_reads() -> None:
    raw = example_spec("gpu-patience-pvc.yaml")
    del raw["checkpoint"]["pvc"]["path"]  # the default: the job's own folder
    raw["checkpoint"]["resume"] = False
    raw["objective"] = {"metric": "val_accuracy", "mode": "max"}
    raw["metrics"] = {"port": 9100}  # every value differs from the trainer's default, so none arrives by luck
    env = pod_env(build_job(OWNER, parse_spec(raw)), token_secrets(), {})

    assert Config.from_env(env) == Config(
        job="resnet",
        namespace="ml",
        metrics_port=9100,
        checkpoint_uri="/stopline/checkpoints/ml/resnet-1b4e28ba",
        control_token=TOKEN,
        rank=0,
        world_size=1,
        objective="val_accuracy",
        objective_mode="max",
        keep_best=True,
        resume=False,
    )
    unread = set(env) - env.read - READ_BY_OTHERS
    assert not unread, f"the operator injects {unread}, which the trainer never reads"


def test_rank_one_of_an_s3_job_gets_its_rank_the_bucket_and_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = example_spec("sweep-member-s3.yaml")
    raw["checkpoint"]["objectStore"].update(endpoint="http://127.0.0.1:7070", region="eu-north-1")
    credentials = {"s3-credentials": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}}
    annotations = {"batch.kubernetes.io/job-completion-index": "1"}
    env = pod_env(build_job(OWNER, parse_spec(raw)), token_secrets() | credentials, annotations)

    config = Config.from_env(env)
    assert (config.rank, config.world_size, config.resume) == (1, 2, True)
    assert (config.checkpoint_uri, config.control_token) == ("s3://ml-checkpoints/resnet-sweep/lr1e-3", TOKEN)
    for name, value in env.items():  # the S3 store reads the process environment, like the AWS SDK
        monkeypatch.setenv(name, value)
    store = S3Store.from_uri(config.checkpoint_uri, part_size=config.s3_part_size)
    assert (store.bucket, store.prefix) == ("ml-checkpoints", "resnet-sweep/lr1e-3")
    assert store.client.meta.endpoint_url == "http://127.0.0.1:7070"
    assert store.client.meta.region_name == "eu-north-1"
    unread = set(env) - env.read - READ_BY_OTHERS - {"AWS_ENDPOINT_URL", "AWS_REGION"}
    assert not unread, f"the operator injects {unread}, which the trainer never reads"


def trainer_config(tmp_path: Path, **settings: Any) -> Config:
    base: dict[str, Any] = {
        "job": "resnet",
        "namespace": "ml",
        "metrics_port": 0,
        "bind_address": "127.0.0.1",
        "checkpoint_uri": str(tmp_path / "claim" / "ml" / "resnet-1b4e28ba"),
        "control_token": TOKEN,
        "termination_log": tmp_path / "termination-log",
    }
    return Config(**(base | settings))


def test_the_operator_reads_the_trainers_own_exposition(tmp_path: Path) -> None:
    with Run(trainer_config(tmp_path), handle_signals=False) as run:
        for epoch in (1, 2, 3):
            run.report(epoch, 100 * epoch, train_loss=1 / epoch)
        run.report(3, 300, val_loss=0.25, val_accuracy=0.9, grad_norm=math.nan)
        manifest = run.save({"weights": torch.ones(2)})
        run.flag.request("patience")
        with urllib.request.urlopen(f"http://127.0.0.1:{run.server.port}/metrics", timeout=5) as scrape:
            text = scrape.read().decode()
    assert manifest is not None

    report = parse_exposition(text)
    assert (report.epoch, report.step) == (3, 300)
    assert {k: v for k, v in report.metrics.items() if k != "grad_norm"} == {
        "train_loss": pytest.approx(1 / 3),
        "val_loss": 0.25,
        "val_accuracy": 0.9,
    }
    assert math.isnan(report.metrics["grad_norm"])  # NaN reaches the divergence criteria as NaN
    assert report.epoch_seconds is not None and report.epoch_seconds >= 0
    assert report.stop_requested
    assert report.checkpoint == {
        "uri": manifest.uri,
        "epoch": "3",
        "step": "300",
        "sha256": manifest.sha256,
        "bytes": str(manifest.size),
        "saved_at": manifest.saved_at,
        "format": "torch.save",
    }
    served = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    operator_reads = {
        exposition.EPOCH,
        exposition.STEP,
        exposition.METRIC,
        exposition.METRIC_EPOCH,
        exposition.EPOCH_SECONDS,
        exposition.STOP_REQUESTED,
        exposition.CHECKPOINT_INFO,
    }
    assert operator_reads <= served


def test_a_validation_value_belongs_to_the_epoch_it_was_reported_in_not_the_next(tmp_path: Path) -> None:
    """Read while epoch 4 runs, val_loss is still epoch 3's: the operator files it under epoch 3, so no
    criterion takes it for epoch 4's (and epoch 4's own value counts when it comes)."""
    with Run(trainer_config(tmp_path), handle_signals=False) as run:
        run.report(3, 300, train_loss=0.5)
        run.report(3, 300, val_loss=0.25)
        run.report(4, 301, train_loss=0.4)
        with urllib.request.urlopen(f"http://127.0.0.1:{run.server.port}/metrics", timeout=5) as scrape:
            report = parse_exposition(scrape.read().decode())
    assert report.epoch == 4
    assert report.by_epoch() == {3: {"val_loss": 0.25}, 4: {"train_loss": 0.4}}


def status_checkpoint_keys() -> set[str]:
    crd = yaml.safe_load((REPO / "crds" / "trainingjob.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return set(status["properties"]["checkpoint"]["properties"])


def test_rank_zeros_termination_message_becomes_status_checkpoint(tmp_path: Path) -> None:
    with Run(trainer_config(tmp_path), handle_signals=False) as run:
        run.report(7, 700, **{f"metric_{i}": float(i) for i in range(80)})
        run.flag.request("promql: " + "up == 0 or " * 400)
        manifest = run.save({"weights": torch.ones(2)})
        with urllib.request.urlopen(f"http://127.0.0.1:{run.server.port}/metrics", timeout=5) as scrape:
            exported = parse_exposition(scrape.read().decode()).checkpoint
    assert manifest is not None

    status = checkpoint_status((tmp_path / "termination-log").read_text())
    assert status == {
        "uri": manifest.uri,
        "epoch": 7,
        "step": 700,
        "bytes": manifest.size,
        "sha256": manifest.sha256,
        "savedAt": manifest.saved_at,
    }
    assert set(status) == status_checkpoint_keys()  # every key the CRD's status.checkpoint has, no other
    # while it runs, its /metrics names the same checkpoint (shown in status, should it never save again)
    assert exported_checkpoint(exported) == status
    assert datetime.fromisoformat(status["savedAt"]).tzinfo is not None  # a date-time the CRD accepts
    kept = json.loads(Path(manifest.uri).with_name("last.json").read_bytes())
    assert kept["stopReason"].startswith("promql: up == 0") and len(kept["metrics"]) == 80


def test_the_last_epochs_objective_rides_in_the_pointer_for_a_job_that_ends_between_reads(
    tmp_path: Path,
) -> None:
    with Run(trainer_config(tmp_path), handle_signals=False) as run:
        for epoch in range(1, 13):
            run.report(epoch, epoch * 10, train_loss=1.0)
            run.report(epoch, epoch * 10, val_loss=1.0 / epoch)
        run.report(13, 121, train_loss=1.0)  # epoch 13 has no val_loss yet
        run.save({"weights": torch.ones(2)})
    message = (tmp_path / "termination-log").read_text()
    assert last_values(message) == {epoch: 1.0 / epoch for epoch in range(5, 13)}  # the last 8
    assert len(message) < 1024


def test_another_ranks_termination_message_is_no_checkpoint(tmp_path: Path) -> None:
    with Run(trainer_config(tmp_path, rank=1, world_size=2), handle_signals=False) as run:
        run.report(7, 700)
        run.flag.request("stop requested by another rank")
    message = (tmp_path / "termination-log").read_text()
    assert json.loads(message)["rank"] == 1
    assert checkpoint_status(message) is None


def test_the_decision_sent_with_post_stop_comes_back_in_the_termination_message() -> None:
    """An operator that restarts between POST /stop and its Stopping write learns the reason from rank 0."""
    cause = clean_cause("Patience", "plateau")
    pointer = TrainerManifest(
        uri="/ckpt/a.pt", epoch=7, step=700, size=9, sha256="0" * 64, saved_at="2026-12-02T00:00:00Z",
        world_size=1, stop=cause,
    ).termination_message()  # fmt: skip
    assert len(pointer) < 1024
    assert stop_cause(pointer.decode()) == {"type": "Patience", "criterion": "plateau"}
    assert clean_cause("Patience\n", "plateau") is None and clean_cause("Patience", "a b") is None
    assert stop_cause('{"stop": {"type": "Reboot", "criterion": "x"}}') is None  # not a stop reason type
