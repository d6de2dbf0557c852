"""The control plane the cluster and e2e tiers stand on: real controllers, and nothing left behind."""

from __future__ import annotations

import json
import os

import pytest

from stopline_local.controlplane import ControlPlane, wait_until

pytestmark = pytest.mark.cluster


def test_the_job_controller_creates_pods_for_a_batch_job(control_plane: ControlPlane, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "probe"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
            },
        },
    }
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))

    def two_pods() -> bool:
        out = control_plane.kubectl("get", "pods", "-n", namespace, "-l", "job-name=probe", "-o", "json")
        indexes = {
            pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            for pod in json.loads(out.stdout)["items"]
        }
        return indexes == {"0", "1"}

    wait_until(two_pods, 60, "the Job controller to create pods with indexes 0 and 1")


def test_stop_leaves_no_process_and_no_data_behind() -> None:
    plane = ControlPlane(with_controller_manager=False).start()
    pids = [process.pid for process in plane.processes.values()]
    assert plane.kubectl("get", "--raw", "/readyz").stdout == "ok"
    plane.stop()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} survived stop()"
    assert not plane.root.exists()
