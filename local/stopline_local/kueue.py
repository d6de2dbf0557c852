"""A real Kueue manager beside the test apiserver, for tests of jobs that a queue admits and preempts.

The manager, its CRDs and its webhooks come from `make testenv` (the Kueue step of testenv/build.sh). It runs
as a process with the control plane's admin kubeconfig, with what its Deployment would get from a cluster made
here instead: a self-signed certificate for its loopback address (its own certificate management is off: it
would sign for a Service name nothing resolves), and its webhooks registered by URL on that address.

    with running_kueue(plane, tmp_path) as kueue:
        resource_flavor(plane, "default")
        cluster_queue(plane, "gpus", gpus=1, flavor="default")
        local_queue(plane, namespace, "queue", "gpus")
        # a Job labelled kueue.x-k8s.io/queue-name=queue is created suspended and admitted by unsuspending it
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stopline_local.controlplane import (
    ControlPlane,
    MissingTestenv,
    die_with_parent,
    stop_process,
    wait_until,
)

KUEUE_VERSION = os.environ.get("KUEUE_VERSION", "0.17.0")
KUEUE_HOME = Path(
    os.environ.get("STOPLINE_KUEUE", Path.home() / ".cache" / "stopline" / "kueue" / f"v{KUEUE_VERSION}")
)
API = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # on a Job: the LocalQueue that admits it
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # on a Job: its WorkloadPriorityClass
GPU = "nvidia.com/gpu"  # the local kubelet's node advertises 8
# Kueue's own webhooks and those of batch/v1 Jobs; the release's others serve integrations not enabled here (a
# pod webhook that nothing answers would fail every pod's creation)
WEBHOOK_GROUPS = {"batch", "kueue.x-k8s.io"}
GRACE_S = 15


@dataclass(frozen=True)
class Kueue:
    """A running manager: where it listens and where it logs."""

    address: str  # 127.0.0.x: webhooks, metrics and health
    webhook_port: int
    health_port: int
    log: Path

    def log_tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else "(no log)"


def kueue_path(*parts: str) -> Path:
    path = KUEUE_HOME.joinpath(*parts)
    if not path.exists():
        raise MissingTestenv(f"{path} is missing: run `make testenv` (it builds Kueue v{KUEUE_VERSION} once)")
    return path


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _certificate(folder: Path, address: str) -> bytes:
    """A self-signed certificate for `address` (tls.crt, tls.key in `folder`): the webhooks' caBundle too."""
    folder.mkdir(parents=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
         "-keyout", str(folder / "tls.key"), "-out", str(folder / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return (folder / "tls.crt").read_bytes()


def _configuration(address: str, webhook_port: int, health_port: int, certs: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"{address}:{health_port}"},
        "metrics": {"bindAddress": f"{address}:{_free_port(address)}"},
        "webhook": {"host": address, "port": webhook_port, "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
    }


def webhook_configurations(url: str, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The release's webhook configurations for WEBHOOK_GROUPS, reached at `url` + each webhook's path."""
    configurations = []
    for document in yaml.safe_load_all(kueue_path("webhook.yaml").read_text()):
        webhooks = []
        for webhook in document["webhooks"]:
            groups = {group for rule in webhook["rules"] for group in rule["apiGroups"]}
            if groups <= WEBHOOK_GROUPS:
                path = webhook["clientConfig"]["service"]["path"]
                webhook["clientConfig"] = {
                    "url": url + path,
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                }
                webhooks.append(webhook)
        document["metadata"]["name"] = "kueue-" + document["metadata"]["name"]  # as the release names them
        configurations.append({**document, "webhooks": webhooks})
    return configurations


def install_crds(plane: ControlPlane, timeout_s: float = 60) -> None:
    """Kueue's CRDs from its release, applied server-side (the Workload CRD is too large for the annotation
    of a client-side apply), then waited on until each is Established."""
    crds = sorted(kueue_path("crd").glob("*.yaml"))
    plane.kubectl("apply", "--server-side", "--force-conflicts", *(f"--filename={crd}" for crd in crds))
    names = {yaml.safe_load(crd.read_text())["metadata"]["name"] for crd in crds}

    def established() -> bool:
        found = json.loads(plane.kubectl("get", "crd", "-o", "json").stdout)["items"]
        ready = {
            crd["metadata"]["name"]
            for crd in found
            if any(
                c["type"] == "Established" and c["status"] == "True"
                for c in crd.get("status", {}).get("conditions", [])
            )
        }
        return names <= ready

    wait_until(established, timeout_s, f"Kueue's {len(names)} CRDs Established")


@contextmanager
def running_kueue(plane: ControlPlane, workdir: Path, timeout_s: float = 120) -> Iterator[Kueue]:
    """Install Kueue's CRDs, start its manager against `plane`, register its webhooks, and yield once it is
    ready and the apiserver reaches its webhooks. On exit the webhooks go first (they fail closed: with the
    manager gone every Job's creation would fail), then the manager; the CRDs and Kueue's objects stay."""
    binary = kueue_path("bin", "kueue")
    install_crds(plane)
    address = f"127.0.0.{random.randint(100, 250)}"
    workdir.mkdir(parents=True, exist_ok=True)
    certs = workdir / "kueue-certs"
    ca_bundle = _certificate(certs, address)
    kueue = Kueue(address, _free_port(address), _free_port(address), workdir / "kueue.log")
    config = workdir / "kueue-config.yaml"
    config.write_text(yaml.safe_dump(_configuration(address, kueue.webhook_port, kueue.health_port, certs)))
    with kueue.log.open("wb") as log:
        process = subprocess.Popen(
            [str(binary), f"--config={config}", f"--kubeconfig={plane.kubeconfig}",
             "--feature-gates=VisibilityOnDemand=false"],  # its API server would bind 0.0.0.0:8082
            env={**os.environ, "KUEUE_METRICS_CERT_DIR": str(certs)},  # kueue_metrics_cert_dir, build.sh
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )  # fmt: skip
    webhooks = webhook_configurations(f"https://{address}:{kueue.webhook_port}", ca_bundle)
    names = [f"{document['kind'].lower()}/{document['metadata']['name']}" for document in webhooks]
    try:
        plane.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": webhooks})
        )

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"kueue exited with {process.returncode}; last log lines:\n{kueue.log_tail()}"
                )
            with urllib.request.urlopen(f"http://{address}:{kueue.health_port}/readyz", timeout=2) as answer:
                return bool(answer.status == 200)

        wait_until(
            ready, timeout_s, "the Kueue manager's /readyz", retry_on=(OSError,), details=kueue.log_tail
        )
        # the apiserver's way to the webhooks: a server-side dry run passes through both of them
        flavor = json.dumps(_resource_flavor("stopline-webhook-check"))
        checked = plane.kubectl("create", "--dry-run=server", "-f", "-", input=flavor, check=False)
        if checked.returncode != 0:
            raise RuntimeError(
                f"the apiserver cannot reach Kueue's webhooks: {checked.stderr}\n{kueue.log_tail()}"
            )
        yield kueue
    finally:
        plane.kubectl("delete", "--ignore-not-found", *names, check=False)
        stop_process(process, GRACE_S)


def _apply(plane: ControlPlane, manifest: dict[str, Any]) -> None:
    plane.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def _wait_active(
    plane: ControlPlane, kind: str, name: str, namespace: str = "", timeout_s: float = 30
) -> None:
    """Kueue sets a queue's condition Active once it can admit; a Job queued before that only waits longer."""
    where = ["-n", namespace] if namespace else []
    jsonpath = '{.status.conditions[?(@.type=="Active")].status}'

    def active() -> bool:
        found = plane.kubectl("get", kind, name, *where, "-o", f"jsonpath={jsonpath}", check=False)
        return found.stdout.strip() == "True"

    wait_until(active, timeout_s, f"{kind} {name} Active")


def _resource_flavor(name: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": name}}


def resource_flavor(plane: ControlPlane, name: str = "default") -> None:
    """A flavor with no node labels: every node of the local kubelet fits it."""
    _apply(plane, _resource_flavor(name))


def cluster_queue(plane: ControlPlane, name: str, gpus: int, flavor: str = "default") -> None:
    """A ClusterQueue for every namespace with a quota of `gpus` of nvidia.com/gpu (cpu and memory are covered
    too, with quotas no test reaches, so pods that request them are admitted on GPUs alone), in which a job
    preempts jobs of lower priority; waits until it is Active."""
    quotas = {GPU: gpus, "cpu": 1000, "memory": "1Ti"}
    _apply(
        plane,
        {
            "apiVersion": API,
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": list(quotas),
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": resource, "nominalQuota": quota}
                                    for resource, quota in quotas.items()
                                ],
                            }
                        ],
                    }
                ],
                "preemption": {"withinClusterQueue": "LowerPriority"},
            },
        },
    )
    _wait_active(plane, "clusterqueue", name)


def local_queue(plane: ControlPlane, namespace: str, name: str, cluster_queue: str) -> None:
    """The queue a namespace's Jobs name in their label kueue.x-k8s.io/queue-name; waits until Active."""
    _apply(
        plane,
        {
            "apiVersion": API,
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue},
        },
    )
    _wait_active(plane, "localqueue", name, namespace)


def workload_priority_class(plane: ControlPlane, name: str, value: int) -> None:
    """A priority a Job names in its label kueue.x-k8s.io/priority-class; it orders and preempts Workloads
    only (pods keep their own priority)."""
    _apply(
        plane,
        {"apiVersion": API, "kind": "WorkloadPriorityClass", "metadata": {"name": name}, "value": value},
    )


def workload_of(plane: ControlPlane, namespace: str, job_uid: str) -> dict[str, Any]:
    """The Workload Kueue made for a Job (job-<job>-<hash>, owned by the Job); empty before it exists."""
    found = json.loads(plane.kubectl("get", "workloads.kueue.x-k8s.io", "-n", namespace, "-o", "json").stdout)
    for workload in found["items"]:
        if any(owner["uid"] == job_uid for owner in workload["metadata"].get("ownerReferences", [])):
            return dict(workload)
    return {}


def condition(workload: dict[str, Any], kind: str) -> dict[str, Any]:
    """A Workload's condition of type `kind` (QuotaReserved, Admitted, Evicted, Preempted, Requeued...);
    empty when it has none."""
    for found in workload.get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}
