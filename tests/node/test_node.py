"""Pods in real containers: images built here, run by containerd through a real kubelet, named by CoreDNS,
and stopline installed with `helm install` and stopping a TrainingJob whose trainer runs in a container."""

from __future__ import annotations

import json

import pytest

from nodeharness import Pod, apply, container_id, logs, wait_pod_phase
from stopline_local.node import CLUSTER_DOMAIN, NODE_NAME, Node, NodeRunning

pytestmark = pytest.mark.node


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


def test_a_second_node_refuses_to_start_and_leaves_the_running_one_alone(node: Node) -> None:
    second = Node()
    with pytest.raises(NodeRunning, match="another node runs here"):
        second.start(say=lambda _: None)
    assert not second.root.exists()
    ready = node.kubectl(
        "get", "node", "-o", 'jsonpath={.items[0].status.conditions[?(@.type=="Ready")].status}'
    )
    assert ready.stdout == "True"
    assert node.ctr("tasks", "list", "--quiet").stdout.split(), "the running node's containers were killed"


def test_the_kubelet_evicts_nothing_whatever_the_disk_of_the_machine_running_the_tests(node: Node) -> None:
    """A CI machine's disk can be nearly full: with any disk threshold on, the kubelet set DiskPressure and
    evicted the operator's pod before it started (every story then waited for a pod that never ran)."""
    configz = node.kubectl("get", "--raw", f"/api/v1/nodes/{NODE_NAME}/proxy/configz")
    thresholds = json.loads(configz.stdout)["kubeletconfig"].get("evictionHard", {})
    assert {signal: value for signal, value in thresholds.items() if value not in ("0%", "100%")} == {}
    conditions = node.kubectl("get", "node", NODE_NAME, "-o", "json")
    pressure = [
        condition["type"]
        for condition in json.loads(conditions.stdout)["status"]["conditions"]
        if condition["type"].endswith("Pressure") and condition["status"] == "True"
    ]
    assert pressure == []
