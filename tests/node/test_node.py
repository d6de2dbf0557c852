"""Pods in real containers: images built here, run by containerd through a real kubelet, named by CoreDNS,
and stopline installed with `helm install` and stopping a TrainingJob whose trainer runs in a container."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from nodeharness import Pod, apply, container_id, logs, wait_pod_phase
from stopline_local.controlplane import wait_until
from stopline_local.node import CLUSTER_DOMAIN, Node

CHECKPOINT_MOUNT = "/stopline/checkpoints"  # where the operator mounts the claim in a trainer pod


def python_pod(name: str, image: str, code: str, **spec: object) -> Pod:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", code],
                }
            ],
            **spec,
        },
    }


def test_a_pod_from_an_image_built_here_runs_to_completion_in_containerd(
    node: Node, namespace: str, operator_image: str
) -> None:
    apply(node, namespace, python_pod("hello", operator_image, "import os; print('uid', os.getuid())"))
    pod = wait_pod_phase(node, namespace, "hello", "Succeeded")
    cid = container_id(pod)
    assert cid.startswith("containerd://")
    assert node.ctr("containers", "info", cid.removeprefix("containerd://")).returncode == 0
    assert logs(node, namespace, "hello").strip() == "uid 10001"  # the Dockerfile's USER


def test_coredns_resolves_pod_names_under_a_headless_service(
    node: Node, namespace: str, operator_image: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "ranks"},
        "spec": {"clusterIP": "None", "selector": {"app": "ranks"}, "ports": [{"port": 29500}]},
    }
    serve = "import http.server as h; h.HTTPServer(('', 29500), h.BaseHTTPRequestHandler).serve_forever()"
    server = python_pod("rank-0", operator_image, serve, hostname="rank-0", subdomain="ranks")
    server["metadata"] = {"name": "rank-0", "labels": {"app": "ranks"}}
    apply(node, namespace, service, server)
    rank0 = wait_pod_phase(node, namespace, "rank-0", "Running")
    name = f"rank-0.ranks.{namespace}.svc.{CLUSTER_DOMAIN}"
    ask = f"import socket; print(socket.gethostbyname('{name}')); print(socket.gethostbyname('rank-0.ranks'))"
    apply(node, namespace, python_pod("asker", operator_image, ask))
    wait_pod_phase(node, namespace, "asker", "Succeeded")
    answers = logs(node, namespace, "asker").split()
    assert answers == [rank0["status"]["podIP"]] * 2


def test_helm_install_brings_the_operator_pod_to_ready(installed: str) -> None:
    assert installed


def test_a_patience_criterion_stops_a_trainer_in_a_container_and_torch_loads_its_weights(
    node: Node, installed: str, trainer_image: str, namespace: str, tmp_path: Path
) -> None:
    volume = node.root / "volumes" / namespace
    volume.mkdir(parents=True)
    os.chmod(volume, 0o777)  # the trainer runs as uid 10001
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"checkpoints-{namespace}"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "hostPath": {"path": str(volume), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": "checkpoints"},
        },
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(pv))
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "checkpoints"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": f"checkpoints-{namespace}",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    job = {
        "apiVersion": "stopline.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "patience"},
        "spec": {
            "maxEpochs": 60,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": trainer_image,
                            "imagePullPolicy": "Never",
                            "args": [
                                "--epochs",
                                "60",
                                "--steps-per-epoch",
                                "20",
                                "--sleep-per-step",
                                "0.1",
                                "--hidden",
                                "64",
                            ],
                        }
                    ]
                }
            },
            "objective": {"metric": "val_loss", "mode": "min"},
            "metrics": {"interval": "2s"},
            "criteria": [
                {
                    "name": "impatient",
                    "patience": {
                        "patience": 2,
                        "minDelta": 0.5,
                        "minDeltaMode": "relative",
                        "warmupEpochs": 1,
                    },
                }
            ],
            "checkpoint": {"pvc": {"claimName": "checkpoints", "path": "runs/patience"}},
            "stopPolicy": {"gracePeriod": "2m"},
        },
    }
    apply(node, namespace, claim, job)

    def stopped() -> Pod:
        found = node.kubectl("get", "tj", "-n", namespace, "patience", "-o", "json")
        status = json.loads(found.stdout).get("status", {})
        assert status.get("phase") not in ("Failed", "Succeeded"), status
        return status if status.get("phase") == "Stopped" else {}

    status = wait_until(
        stopped, 600, "TrainingJob Stopped", interval=1, retry_on=(), details=node.describe_pods
    )
    pods = json.loads(node.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    trainer = next(pod for pod in pods if pod["metadata"]["name"].startswith("patience"))
    assert container_id(trainer).startswith("containerd://")
    uri = str(status["checkpoint"]["uri"])
    path = volume / uri.removeprefix("file://").removeprefix(CHECKPOINT_MOUNT).lstrip("/")
    weights = torch.load(path, map_location="cpu", weights_only=False)
    assert weights, f"{path} holds no weights"
