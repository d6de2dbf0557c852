"""The user's stories on the real node, through kubectl only: stopline installed with `helm install`, each
TrainingJob's trainer in a container of the trainer image built here, its checkpoint on a claim bound to a
hostPath PersistentVolume, and the weights loaded back by torch wherever a stop is graceful."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from e2e.support import terminated_pods
from nodeharness import container_id
from operatorharness import condition, event_posted, events, get, pods, status
from stopline_local.controlplane import wait_until
from stopline_local.node import Node
from trainer.support import assert_reproduces_outputs, verify_blob

pytestmark = pytest.mark.node

CLAIM = "checkpoints"
CHECKPOINT_MOUNT = "/stopline/checkpoints"  # where the operator mounts the claim in a trainer pod
TERMINAL = ("Stopped", "Succeeded", "Failed", "Cancelled")
DEADLINE_S = 300  # trainers import torch in a container on two shared cores
EPOCH_S = ("--steps-per-epoch", "10", "--sleep-per-step", "0.05")


@contextmanager
def claim_on_host(node: Node, namespace: str) -> Iterator[Path]:
    """The claim `checkpoints` in `namespace`, bound to a hostPath folder on the node; yields that folder
    and deletes the volume after."""
    folder = node.root / "volumes" / namespace
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)  # the trainer runs as uid 10001
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"checkpoints-{namespace}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "hostPath": {"path": str(folder), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": CLAIM},
        },
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": f"checkpoints-{namespace}",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    node.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [volume, claim]})
    )
    yield folder
    node.kubectl("delete", "pv", f"checkpoints-{namespace}", "--wait=false", check=False)


@pytest.fixture
def story(node: Node, installed: str, trainer_image: str, namespace: str) -> Iterator[Path]:
    """The operator installed by helm, the claim `checkpoints` in the test's namespace bound to a hostPath
    folder; yields that folder."""
    with claim_on_host(node, namespace) as folder:
        yield folder


def job(
    node: Node,
    namespace: str,
    name: str,
    criteria: Sequence[dict[str, Any]] = (),
    trainer_args: Sequence[str] = (),
    replicas: int = 1,
) -> None:
    trainer = {
        "name": "trainer",
        "image": os.environ.get("TRAINER_IMAGE", "ghcr.io/stopline-dev/trainer:0.1.0"),
        "imagePullPolicy": "Never",
        "args": ["--epochs", "60", *EPOCH_S, *trainer_args],
        "env": [{"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "GLOO_SOCKET_IFNAME", "value": "eth0"}],
    }
    manifest = {
        "apiVersion": "stopline.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "maxEpochs": 60,
            "template": {"spec": {"containers": [trainer]}},
            "objective": {"metric": "val_loss", "mode": "min"},
            "metrics": {"interval": "1s"},
            "criteria": list(criteria),
            "checkpoint": {"pvc": {"claimName": CLAIM, "path": f"runs/{name}"}},
            "stopPolicy": {"gracePeriod": "60s"},
        },
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def finish(node: Node, namespace: str, name: str) -> dict[str, Any]:
    wait_until(
        lambda: status(node.plane, namespace, name).get("phase") in TERMINAL,
        DEADLINE_S,
        f"{name} to end",
        details=lambda: f"{status(node.plane, namespace, name)}\n{node.describe_pods()}",
    )
    return dict(get(node.plane, namespace, "tj", name))


def epoch_reached(node: Node, namespace: str, name: str, epoch: int) -> None:
    wait_until(
        lambda: status(node.plane, namespace, name).get("progress", {}).get("epoch", 0) >= epoch,
        DEADLINE_S,
        f"{name}: epoch {epoch} in status.progress",
        details=node.describe_pods,
    )


def weights_load_back(folder: Path, stopped: dict[str, Any]) -> None:
    """status.checkpoint names a file in the container's mount of the claim; on the volume's folder its
    bytes match and torch loads it into the example's model, which gives its outputs."""
    manifest = stopped["status"]["checkpoint"]
    weights = folder / Path(manifest["uri"]).relative_to(CHECKPOINT_MOUNT)
    assert_reproduces_outputs(verify_blob(weights.read_bytes(), manifest))


def in_containers(node: Node, namespace: str, name: str) -> None:
    for pod in pods(node.plane, namespace, name):
        assert container_id(pod).startswith("containerd://")


def test_a_patience_criterion_stops_the_trainer_and_its_weights_load_back(
    node: Node, story: Path, namespace: str
) -> None:
    patience = {"name": "plateau", "patience": {"patience": 1, "minDelta": 0.0002}}
    job(node, namespace, "mlp", [patience])
    epoch_reached(node, namespace, "mlp", 1)
    in_containers(node, namespace, "mlp")
    stopped = finish(node, namespace, "mlp")
    assert (stopped["status"]["phase"], stopped["status"]["stopReason"]["type"]) == ("Stopped", "Patience")
    weights_load_back(story, stopped)


def test_kubectl_annotate_stop_keeps_the_weights_and_says_why(
    node: Node, story: Path, namespace: str
) -> None:
    job(node, namespace, "mlp")
    epoch_reached(node, namespace, "mlp", 2)
    node.kubectl("annotate", "tj", "mlp", "-n", namespace, "stopline.dev/stop=looks good")
    stopped = finish(node, namespace, "mlp")
    assert stopped["status"]["phase"] == "Stopped"
    assert stopped["status"]["stopReason"]["type"] == "Manual"
    weights_load_back(story, stopped)


def test_cancel_kills_the_trainer_and_saves_nothing(node: Node, story: Path, namespace: str) -> None:
    job(node, namespace, "mlp")
    epoch_reached(node, namespace, "mlp", 2)
    node.kubectl("annotate", "tj", "mlp", "-n", namespace, "stopline.dev/cancel=wrong data")
    cancelled = finish(node, namespace, "mlp")
    assert cancelled["status"]["phase"] == "Cancelled"
    assert "checkpoint" not in cancelled["status"]
    wait_until(lambda: not pods(node.plane, namespace, "mlp"), DEADLINE_S, "the trainer pod gone")
    assert condition(cancelled, "Finished")["message"] == "cancelled: wrong data; nothing was saved"


def test_two_ranks_rendezvous_through_the_headless_service_dns_with_gloo(
    node: Node, story: Path, namespace: str
) -> None:
    job(node, namespace, "ddp", replicas=2)
    epoch_reached(node, namespace, "ddp", 2)
    node.kubectl("annotate", "tj", "ddp", "-n", namespace, "stopline.dev/stop=enough")
    stopped = finish(node, namespace, "ddp")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    weights_load_back(story, stopped)
    ranks = terminated_pods(node.plane, namespace, "ddp", 2)
    reports = [json.loads(state["message"]) for state in ranks]
    manifest = json.loads((story / "runs" / "ddp" / "last.json").read_bytes())
    assert [state["exitCode"] for state in ranks] == [0, 0]
    assert manifest["worldSize"] == 2 and reports[0]["step"] == reports[1]["step"] == manifest["step"]


def test_a_trainer_that_ignores_post_stop_gets_sigterm_in_its_container_and_still_saves(
    node: Node, story: Path, namespace: str
) -> None:
    job(node, namespace, "deaf", trainer_args=("--fault", "ignore-stop"))
    epoch_reached(node, namespace, "deaf", 1)
    node.kubectl("annotate", "tj", "deaf", "-n", namespace, "stopline.dev/stop=enough")
    stopped = finish(node, namespace, "deaf")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    assert "StopNotAcknowledged" in {
        event["reason"] for event in events(node.plane, namespace, "deaf", "Warning")
    }
    weights_load_back(story, stopped)


def test_the_operator_pod_deleted_while_a_job_is_stopping_comes_back_and_the_stop_completes_once(
    node: Node, story: Path, namespace: str, installed: str
) -> None:
    job(node, namespace, "deaf", trainer_args=("--fault", "ignore-stop"))  # Stopping lasts until SIGTERM
    epoch_reached(node, namespace, "deaf", 1)
    node.kubectl("annotate", "tj", "deaf", "-n", namespace, "stopline.dev/stop=enough")
    wait_until(
        lambda: status(node.plane, namespace, "deaf").get("phase") in ("Stopping", *TERMINAL),
        DEADLINE_S,
        "phase Stopping",
    )
    node.kubectl("delete", "pod", "-n", installed, "-l", "app.kubernetes.io/name=stopline", "--wait=false")
    stopped = finish(node, namespace, "deaf")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    saved_event = event_posted(node.plane, namespace, "deaf", "CheckpointSaved", "Normal")
    wait_until(saved_event, DEADLINE_S, "a CheckpointSaved Event")
    jobs = json.loads(node.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(jobs) == 1
    saved = [event for event in events(node.plane, namespace, "deaf") if event["reason"] == "CheckpointSaved"]
    assert len(saved) == 1
    weights_load_back(story, stopped)
    node.kubectl("rollout", "status", "deployment", "-n", installed, "--timeout=180s")
