"""The real Kueue manager beside the real apiserver, with the local kubelet running the pods: plain batch
Jobs queued on a quota of one fake GPU, admitted, kept waiting and preempted. No operator runs here: these
tests pin down what Kueue does to a Job, which the operator's queue support relies on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stopline_local.controlplane import ADMIN_TOKEN, ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet
from stopline_local.kueue import (
    GPU,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    Kueue,
    cluster_queue,
    condition,
    local_queue,
    resource_flavor,
    workload_of,
    workload_priority_class,
)

pytestmark = pytest.mark.cluster

DEADLINE_S = 60  # generous for a shared 2-core box; every wait returns as soon as its check passes
# the pod's process: runs until the test creates the file named by its argument
UNTIL_RELEASED = (
    "import pathlib, sys, time\nwhile not pathlib.Path(sys.argv[1]).exists():\n    time.sleep(0.05)"
)


@pytest.fixture(scope="module")
def kubelet(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKubelet]:
    """Runs the pods as processes on a node with 8 nvidia.com/gpu: the quota holds them, not the node."""
    ca_file = control_plane.root / "certs" / "apiserver.crt"
    with LocalKubelet(
        control_plane.server, ADMIN_TOKEN, ca_file, tmp_path_factory.mktemp("kubelet")
    ) as running:
        yield running


@pytest.fixture
def queue(control_plane: ControlPlane, kueue: Kueue, kubelet: LocalKubelet, namespace: str) -> str:
    """A LocalQueue in the test's namespace on its own ClusterQueue with a quota of one GPU."""
    resource_flavor(control_plane, "default")
    cluster_queue(control_plane, f"gpus-{namespace}", gpus=1)
    local_queue(control_plane, namespace, "gpus", f"gpus-{namespace}")
    workload_priority_class(control_plane, "stopline-test-low", 100)
    workload_priority_class(control_plane, "stopline-test-high", 1000)
    return "gpus"


def gpu_job(name: str, queue: str, release: Path, priority: str | None = None) -> dict[str, Any]:
    """A Job of one pod that requests one GPU and runs until `release` exists, created suspended as a queued
    Job is (Kueue's webhook would suspend it anyway)."""
    labels = {QUEUE_LABEL: queue, **({PRIORITY_LABEL: priority} if priority else {})}
    container = {
        "name": "trainer",
        "image": "ghcr.io/stopline-dev/trainer:test",  # ignored by the local kubelet
        "command": ["python", "-c", UNTIL_RELEASED, str(release)],
        "resources": {"requests": {GPU: "1"}, "limits": {GPU: "1"}},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "suspend": True,
            "backoffLimit": 0,  # a preempted pod must not count as a failure
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                }
            },
        },
    }


def create(plane: ControlPlane, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    out = plane.kubectl("create", "-n", namespace, "-o", "json", "-f", "-", input=json.dumps(manifest)).stdout
    return dict(json.loads(out))


def get_job(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(plane.kubectl("get", "job", name, "-n", namespace, "-o", "json").stdout))


def job_pods(plane: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    out = plane.kubectl(
        "get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={name}", "-o", "json"
    )
    return list(json.loads(out.stdout)["items"])


def running_pod(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """The Job's one pod once the kubelet runs it and nothing deletes it; empty before."""
    running = [
        pod
        for pod in job_pods(plane, namespace, name)
        if pod["status"].get("phase") == "Running" and "deletionTimestamp" not in pod["metadata"]
    ]
    return running[0] if len(running) == 1 else {}


def wait_admitted_and_running(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """Kueue unsuspends the Job, the Job controller makes its pod, the kubelet runs it; returns the pod."""
    wait_until(
        lambda: get_job(plane, namespace, name)["spec"]["suspend"] is False, DEADLINE_S, f"{name} admitted"
    )
    return wait_until(lambda: running_pod(plane, namespace, name), DEADLINE_S, f"the pod of {name} running")


def wait_workload(plane: ControlPlane, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
    uid = job["metadata"]["uid"]
    return wait_until(
        lambda: workload_of(plane, namespace, uid), DEADLINE_S, f"the Workload of {job['metadata']['name']}"
    )


def wait_completed(plane: ControlPlane, namespace: str, name: str) -> None:
    def complete() -> bool:
        conditions = get_job(plane, namespace, name).get("status", {}).get("conditions", [])
        return any(c["type"] == "Complete" and c["status"] == "True" for c in conditions)

    wait_until(complete, DEADLINE_S, f"{name} Complete")


def show(what: str, found: Any) -> None:
    """What Kueue wrote, printed for the reader of `pytest -s` (the operator reads the same fields)."""
    print(f"\n{what}:\n{json.dumps(found, indent=1, sort_keys=True)}")


def test_a_second_job_waits_suspended_with_a_message_until_the_first_ends(
    control_plane: ControlPlane, queue: str, namespace: str, tmp_path: Path
) -> None:
    plane = control_plane
    first = create(plane, namespace, gpu_job("first", queue, tmp_path / "first-done"))
    pod = wait_admitted_and_running(plane, namespace, "first")
    show("the admitted Job", get_job(plane, namespace, "first")["metadata"])
    show("its pod's nodeSelector and labels", [pod["spec"].get("nodeSelector"), pod["metadata"]["labels"]])
    admitted = wait_workload(plane, namespace, first)
    assert condition(admitted, "Admitted").get("status") == "True"

    second = create(plane, namespace, gpu_job("second", queue, tmp_path / "second-done"))

    def waiting_for_quota() -> dict[str, Any]:
        quota = condition(workload_of(plane, namespace, second["metadata"]["uid"]), "QuotaReserved")
        return quota if quota.get("status") == "False" and quota.get("message") else {}

    pending = wait_until(waiting_for_quota, DEADLINE_S, "the second Workload to say why it waits")
    show("the waiting Workload's QuotaReserved", pending)
    assert GPU in pending["message"]
    assert get_job(plane, namespace, "second")["spec"]["suspend"] is True
    assert job_pods(plane, namespace, "second") == []

    (tmp_path / "first-done").touch()
    wait_completed(plane, namespace, "first")
    wait_admitted_and_running(plane, namespace, "second")
    show("the first Workload once its Job completed", wait_workload(plane, namespace, first)["status"])
    (tmp_path / "second-done").touch()
    wait_completed(plane, namespace, "second")


def test_a_high_priority_job_preempts_a_running_low_one_which_runs_again_after_it(
    control_plane: ControlPlane, kubelet: LocalKubelet, queue: str, namespace: str, tmp_path: Path
) -> None:
    plane = control_plane
    low = create(plane, namespace, gpu_job("low", queue, tmp_path / "low-done", "stopline-test-low"))
    preempted_pod = wait_admitted_and_running(plane, namespace, "low")["metadata"]["name"]

    high = create(plane, namespace, gpu_job("high", queue, tmp_path / "high-done", "stopline-test-high"))
    wait_admitted_and_running(plane, namespace, "high")
    # Kueue suspended the low Job; its pod got SIGTERM (it ended before the high one was admitted) and goes
    assert get_job(plane, namespace, "low")["spec"]["suspend"] is True
    assert kubelet.exit_code(namespace, preempted_pod) == -15
    wait_until(lambda: job_pods(plane, namespace, "low") == [], DEADLINE_S, "the preempted pod deleted")
    assert "failed" not in get_job(plane, namespace, "low")["status"]  # with backoffLimit 0 the Job goes on
    evicted = wait_workload(plane, namespace, low)
    show("the preempted Job", get_job(plane, namespace, "low"))
    show("the preempted Workload", evicted)
    assert condition(evicted, "Evicted").get("reason") == "Preempted"
    assert condition(evicted, "Preempted").get("status") == "True"
    assert condition(evicted, "QuotaReserved").get("status") == "False"
    assert high["metadata"]["uid"] in condition(evicted, "Preempted").get("message", "")

    (tmp_path / "high-done").touch()
    wait_completed(plane, namespace, "high")
    wait_admitted_and_running(plane, namespace, "low")
    show("the re-admitted Workload", wait_workload(plane, namespace, low)["status"])
    (tmp_path / "low-done").touch()
    wait_completed(plane, namespace, "low")


def test_suspending_an_admitted_job_does_not_stop_it_deactivating_its_workload_does(
    control_plane: ControlPlane, kubelet: LocalKubelet, queue: str, namespace: str, tmp_path: Path
) -> None:
    """How a controller stops a Job that Kueue admitted: Kueue resumes a Job that someone else suspends while
    its Workload is admitted (the pod gets SIGTERM and a new one starts); with `spec.active: false` on the
    Workload Kueue suspends the Job itself and does not queue it again."""
    plane = control_plane
    job = create(plane, namespace, gpu_job("job", queue, tmp_path / "done"))
    first_pod = wait_admitted_and_running(plane, namespace, "job")["metadata"]["name"]

    plane.kubectl("patch", "job", "job", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')

    def resumed_with_a_new_pod() -> bool:
        pod = running_pod(plane, namespace, "job")
        return bool(pod) and pod["metadata"]["name"] != first_pod

    wait_until(resumed_with_a_new_pod, DEADLINE_S, "Kueue to resume the Job with a new pod")
    assert get_job(plane, namespace, "job")["spec"]["suspend"] is False
    assert kubelet.exit_code(namespace, first_pod) == -15

    workload = wait_workload(plane, namespace, job)["metadata"]["name"]
    deactivate = '{"spec":{"active":false}}'
    plane.kubectl(
        "patch", "workloads.kueue.x-k8s.io", workload, "-n", namespace, "--type=merge", "-p", deactivate
    )
    wait_until(lambda: job_pods(plane, namespace, "job") == [], DEADLINE_S, "the Job's pod deleted")
    assert get_job(plane, namespace, "job")["spec"]["suspend"] is True
    deactivated = wait_workload(plane, namespace, job)
    show("the deactivated Workload's conditions", deactivated["status"]["conditions"])
    assert condition(deactivated, "Evicted").get("reason") == "Deactivated"
    assert condition(deactivated, "Requeued").get("status") == "False"
