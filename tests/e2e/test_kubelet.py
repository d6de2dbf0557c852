"""The children the builders make, run end to end: real apiserver and Job controller, the local kubelet,
real torch training on CPU, the stop protocol over HTTP and over SIGTERM, weights loaded back.

No operator runs here: the test plays its part (apply the children, POST /stop, read the termination
message), so these tests pin down the pod side the operator relies on.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.support import CLAIM, DEADLINE_S, EXAMPLE, METRICS_PORT, load_weights, terminated_pods, training_job
from operatorharness import pods
from stopline.api import parse_spec
from stopline.workload import Owner, build_job, build_service, build_token_secret
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet

pytestmark = pytest.mark.e2e


def apply_children(
    plane: ControlPlane, namespace: str, name: str, replicas: int = 1, command: tuple[str, ...] = EXAMPLE
) -> str:
    """Create the TrainingJob and apply what the operator would make for it; returns the control token."""
    manifest = training_job(name, replicas, command)
    created = json.loads(
        plane.kubectl("create", "-n", namespace, "-o", "json", "-f", "-", input=json.dumps(manifest)).stdout
    )
    owner = Owner(name=name, namespace=namespace, uid=created["metadata"]["uid"])
    spec = parse_spec(created["spec"])
    token = f"token-{created['metadata']['uid']}"
    children = [build_token_secret(owner, token), build_job(owner, spec)]
    if replicas > 1:
        children.append(build_service(owner))
    plane.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": children}),
    )
    secret = json.loads(
        plane.kubectl("get", "secret", f"{name}-stopline-control", "-n", namespace, "-o", "json").stdout
    )
    return base64.b64decode(secret["data"]["token"]).decode()


def running_pods(plane: ControlPlane, namespace: str, name: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def all_running() -> bool:
        found[:] = pods(plane, namespace, name)
        return len(found) == count and all(pod["status"].get("phase") == "Running" for pod in found)

    wait_until(all_running, DEADLINE_S, f"{count} pod(s) of {name} to run")
    return found


def metrics(pod_ip: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{pod_ip}:{METRICS_PORT}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def wait_epoch(pod_ip: str, at_least: float) -> float:
    """Poll the pod's /metrics until stopline_epoch reaches `at_least`; returns the epoch seen."""
    seen: list[float] = [0.0]

    def reached() -> bool:
        seen[0] = metrics(pod_ip).get("stopline_epoch", 0.0)
        return seen[0] >= at_least

    wait_until(reached, DEADLINE_S, f"stopline_epoch >= {at_least} at {pod_ip}")
    return seen[0]


def post_stop(pod_ip: str, token: str, reason: str) -> int:
    request = urllib.request.Request(
        f"http://{pod_ip}:{METRICS_PORT}/stop",
        data=json.dumps({"reason": reason}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def job_condition(plane: ControlPlane, namespace: str, name: str, kind: str) -> bool:
    job = json.loads(plane.kubectl("get", "job", name, "-n", namespace, "-o", "json").stdout)
    return any(c["type"] == kind and c["status"] == "True" for c in job["status"].get("conditions", []))


def test_post_stop_ends_the_pod_succeeded_with_the_manifest_and_loadable_weights(
    crd_installed: ControlPlane, namespace: str, kubelet: LocalKubelet, request: pytest.FixtureRequest
) -> None:
    plane, name = crd_installed, "mlp"
    token = apply_children(plane, namespace, name)
    created = time.monotonic()
    [pod] = running_pods(plane, namespace, name, 1)
    running = time.monotonic()
    pod_ip = pod["status"]["podIP"]
    assert pod["spec"]["nodeName"] == kubelet.node_name and pod_ip != "127.0.0.1"
    request.addfinalizer(lambda: print(kubelet.log_of(namespace, pod["metadata"]["name"])[-3000:]))

    first = wait_epoch(pod_ip, 1)
    wait_epoch(pod_ip, first + 1)  # training advances
    assert post_stop(pod_ip, token, "e2e: enough") == 202
    stop_posted = time.monotonic()

    [terminated] = terminated_pods(plane, namespace, name, 1)
    ended = time.monotonic()
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    folder = kubelet.claim_folder(namespace, CLAIM) / "runs" / name
    pointer = json.loads(terminated["message"])  # compact: where the weights are; the rest is in last.json
    manifest = json.loads((folder / "last.json").read_bytes())
    assert pointer["uri"] == manifest["uri"] and pointer["sha256"] == manifest["sha256"]
    assert manifest["stopReason"] == "e2e: enough" and manifest["epoch"] >= first + 1
    load_weights(manifest, folder)

    wait_until(lambda: job_condition(plane, namespace, name, "Complete"), DEADLINE_S, "the Job to complete")
    print(
        f"\nfigures: pod created->Running {running - created:.2f}s, POST /stop->pod ended "
        f"{ended - stop_posted:.2f}s, ->Job Complete {time.monotonic() - stop_posted:.2f}s"
    )


def test_suspending_the_job_sigterms_the_trainer_which_saves_and_exits_0(
    crd_installed: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    plane, name = crd_installed, "mlp"
    apply_children(plane, namespace, name)
    [pod] = running_pods(plane, namespace, name, 1)
    pod_name = pod["metadata"]["name"]
    wait_epoch(pod["status"]["podIP"], 1)

    plane.kubectl("patch", "job", name, "-n", namespace, "-p", '{"spec":{"suspend":true}}')
    wait_until(
        lambda: not pods(plane, namespace, name), DEADLINE_S, "the kubelet to finalize the pod's deletion"
    )

    assert kubelet.exit_code(namespace, pod_name) == 0, kubelet.log_of(namespace, pod_name)
    folder = kubelet.claim_folder(namespace, CLAIM) / "runs" / name
    manifest = json.loads((folder / "last.json").read_bytes())
    assert "SIGTERM" in manifest["stopReason"]
    load_weights(manifest, folder)
    assert job_condition(plane, namespace, name, "Suspended")


def test_two_ranks_rendezvous_through_the_headless_service_name_and_stop_at_the_same_step(
    crd_installed: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    plane, name = crd_installed, "ddp"
    token = apply_children(plane, namespace, name, replicas=2)
    rank0, rank1 = running_pods(plane, namespace, name, 2)
    assert [rank0["spec"]["hostname"], rank1["spec"]["hostname"]] == [f"{name}-0", f"{name}-1"]
    wait_epoch(rank0["status"]["podIP"], 1)  # an epoch ends only once both ranks have joined gloo

    assert post_stop(rank1["status"]["podIP"], token, "e2e: rank 1 asked") == 202

    ended = terminated_pods(plane, namespace, name, 2)
    logs = kubelet.logs()
    assert [state["exitCode"] for state in ended] == [0, 0], logs
    pointer, rank1_report = (json.loads(state["message"]) for state in ended)
    manifest = json.loads((kubelet.claim_folder(namespace, CLAIM) / "runs" / name / "last.json").read_bytes())
    assert manifest["worldSize"] == 2 and rank1_report["rank"] == 1
    assert pointer["step"] == manifest["step"] == rank1_report["step"]
    assert rank1_report["stopReason"] == "e2e: rank 1 asked"
    assert manifest["stopReason"] == "stop requested by another rank"
    wait_until(lambda: job_condition(plane, namespace, name, "Complete"), DEADLINE_S, "the Job to complete")


def test_a_container_that_cannot_start_fails_its_pod_and_the_job(
    crd_installed: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    plane, name = crd_installed, "typo"
    apply_children(plane, namespace, name, command=("no-such-trainer-program",))
    [terminated] = terminated_pods(plane, namespace, name, 1)
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert "no-such-trainer-program" in terminated["message"]
    wait_until(lambda: job_condition(plane, namespace, name, "Failed"), DEADLINE_S, "the Job to fail")
