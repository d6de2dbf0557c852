"""Helpers of the node tier (tests/node): kubectl on the real node, pods waited on with deadlines."""

from __future__ import annotations

import json
from typing import Any

from stopline_local.controlplane import wait_until
from stopline_local.node import Node

Pod = dict[str, Any]


def apply(node: Node, namespace: str, *manifests: Pod) -> None:
    node.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifests)}),
    )


def pod_json(node: Node, namespace: str, name: str) -> Pod:
    found = node.kubectl("get", "pod", "-n", namespace, name, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else {}


def wait_pod_phase(node: Node, namespace: str, name: str, phase: str, timeout: float = 180) -> Pod:
    def reached() -> Pod:
        pod = pod_json(node, namespace, name)
        status = pod.get("status", {})
        assert isinstance(status, dict)
        if status.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"pod {name} failed: {json.dumps(status)[:2000]}")
        return pod if status.get("phase") == phase else {}

    return wait_until(
        reached,
        timeout,
        f"pod {namespace}/{name} {phase}",
        interval=0.5,
        retry_on=(),
        details=node.describe_pods,
    )


def logs(node: Node, namespace: str, name: str) -> str:
    return node.kubectl("logs", "-n", namespace, name).stdout


def container_id(pod: Pod) -> str:
    status = pod["status"]
    assert isinstance(status, dict)
    return str(status["containerStatuses"][0]["containerID"])
