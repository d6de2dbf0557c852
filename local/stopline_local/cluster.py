"""The local cluster as `make demo` and `make up` start it: the control plane with the TrainingJob CRD from
crds/, a namespace with the claim `checkpoints`, the local kubelet running trainer pods as processes, and
the operator as its own process (`stopline operator`), as a user runs it.

    cluster = LocalCluster(namespace="demo", volumes=folder, watch=("demo",)).start(say=print)
    ...
    cluster.stop()   # the operator, the kubelet and its trainers, then the control plane
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stopline_local.controlplane import (
    ADMIN_TOKEN,
    REPO,
    ControlPlane,
    die_with_parent,
    free_port,
    stop_process,
)
from stopline_local.kubelet import LocalKubelet

CRD = REPO / "crds" / "trainingjob.yaml"
CLAIM = "checkpoints"  # the claim examples/local/*.yaml keep their weights on
OPERATOR_GRACE_S = 30  # the operator stops its loops and kopf on SIGTERM; past this it is killed


def claim_manifest(namespace: str, name: str = CLAIM) -> dict[str, object]:
    """The PersistentVolumeClaim the examples name; the local kubelet mounts it as a local folder."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


@dataclass
class LocalCluster:
    """Every process of one local cluster; `stop()` ends each one that `start()` began, even half-way."""

    namespace: str  # made (unless `default`, which exists) with the claim `checkpoints` in it
    volumes: Path  # trainer logs and the claims' folders: kept after stop(), the weights outlive the cluster
    watch: tuple[str, ...] = ()  # the namespaces the operator watches; empty: all of them
    plane: ControlPlane = field(default_factory=ControlPlane)
    kubelet: LocalKubelet | None = None
    operator: subprocess.Popen[bytes] | None = None
    operator_address: str = ""

    @property
    def operator_log(self) -> Path:
        return self.plane.root / "operator.log"

    def start(self, say: Callable[[str], None] = print) -> LocalCluster:
        """Start everything in order, saying what each step did; on any failure stop what started."""
        try:
            say(f"starting etcd, kube-apiserver and kube-controller-manager in {self.plane.root}")
            self.plane.start()
            self.plane.install_crd(CRD)
            if self.namespace != "default":
                self.plane.kubectl("create", "namespace", self.namespace)
            self.plane.kubectl("apply", "-f", "-", input=json.dumps(claim_manifest(self.namespace)))
            say(f"CRD {CRD.relative_to(REPO)} installed; claim {CLAIM} in namespace {self.namespace}")
            self.volumes.mkdir(parents=True, exist_ok=True)
            ca_file = self.plane.root / "certs" / "apiserver.crt"  # the apiserver's self-signed chain
            self.kubelet = LocalKubelet(self.plane.server, ADMIN_TOKEN, ca_file, self.volumes).start()
            self._start_operator()
            say(
                f"operator on {self.operator_address} (log {self.operator_log}); local kubelet running "
                f"pods as processes, trainer logs and checkpoints in {self.volumes}"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _start_operator(self) -> None:
        self.operator_address = f"127.0.0.1:{free_port()}"
        namespaces = [argument for namespace in self.watch for argument in ("-n", namespace)]
        with self.operator_log.open("wb") as log:
            self.operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stopline.cli",
                    "operator",
                    *namespaces,
                    "--listen",
                    self.operator_address,
                ],
                env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )

    def check_operator(self) -> None:
        """Raise, naming its log, once the operator has exited: nothing would stop the trainers then."""
        if self.operator is not None and self.operator.poll() is not None:
            raise RuntimeError(
                f"the operator exited with {self.operator.returncode}; see {self.operator_log}"
            )

    def stop(self) -> None:
        """The operator first (it acts on nothing more), the kubelet and its trainers, then the control plane
        (its folder, with the kubeconfig and the logs, is deleted)."""
        if self.operator is not None:
            stop_process(self.operator, OPERATOR_GRACE_S)
            self.operator = None
        if self.kubelet is not None:
            self.kubelet.stop()
            self.kubelet = None
        self.plane.stop()
