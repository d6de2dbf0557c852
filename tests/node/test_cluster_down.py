"""`make cluster` then Ctrl-C leaves nothing behind: no process, mount, network device, address or cgroup.

Runs first in the tier (before the session's node exists): one node per machine, its addresses are fixed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stopline_local.controlplane import REPO, TESTENV, wait_until
from stopline_local.node import NODE_IP, NODE_STATE, kubepods_cgroups

pytestmark = pytest.mark.node

SLEEPER = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "sleeper", "namespace": "default"},
    "spec": {
        "containers": [{"name": "sleeper", "image": "stopline.local/pause:1", "imagePullPolicy": "Never"}],
        "terminationGracePeriodSeconds": 600,  # Ctrl-C must not wait for it
    },
}


def our_processes() -> set[str]:
    """Processes of a node: its folder (stopline-node-*) in their argv (etcd, the apiserver, containerd, the
    shims, the kubelet...), or in the kubelet's pod cgroups (containers)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
            cgroups = (proc / "cgroup").read_text()
        except OSError:
            continue
        if b"stopline-node-" in argv or "kubepods" in cgroups:
            found.add(f"{proc.name} {argv[:200]!r}")
    return found


def links() -> set[str]:
    shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in shown.splitlines()}


def node_mounts() -> list[str]:
    return [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "stopline-node-" in line
    ]


def test_ctrl_c_leaves_no_process_mount_device_or_address_behind() -> None:
    before_links = links()
    assert not our_processes(), "a node or control plane is running already"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cluster = subprocess.Popen(
        [sys.executable, "-m", "stopline_local.node"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(
            NODE_STATE.exists,
            300,
            "make cluster to come up",
            interval=0.5,
            details=lambda: str(cluster.poll()),
        )
        kubeconfig = json.loads(NODE_STATE.read_text())["kubeconfig"]
        kubectl = [str(TESTENV / "bin" / "kubectl"), f"--kubeconfig={kubeconfig}"]
        subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(SLEEPER), text=True, check=True)
        subprocess.run(
            [*kubectl, "wait", "pod/sleeper", "--for=condition=Ready", "--timeout=120s"], check=True
        )
        assert node_mounts(), "a running pod has mounts (its rootfs, its network namespace)"
        assert "stopline0" in links()
    finally:
        cluster.send_signal(signal.SIGINT)
        try:
            output, _ = cluster.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            cluster.terminate()  # its SIGTERM stops the node too, so the tier's next node can start
            output, _ = cluster.communicate(timeout=300)
            raise AssertionError(f"Ctrl-C did not stop make cluster within 300 s:\n{output}") from None
    assert cluster.returncode == 0, output
    assert our_processes() == set(), output
    assert node_mounts() == []
    assert links() == before_links
    addresses = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True
    ).stdout
    assert NODE_IP not in addresses
    assert kubepods_cgroups() == []
    assert not NODE_STATE.exists()
