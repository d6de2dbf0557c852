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

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.workloads import CACHE, Manager, Release, apply_crds, release_path, running_manager

KUEUE_VERSION = os.environ.get("KUEUE_VERSION", "0.17.0")
KUEUE_HOME = Path(os.environ.get("STOPLINE_KUEUE", CACHE / "kueue" / f"v{KUEUE_VERSION}"))
API = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # on a Job: the LocalQueue that admits it
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # on a Job: its WorkloadPriorityClass
GPU = "nvidia.com/gpu"  # the local kubelet's node advertises 8
# Kueue's own webhooks and those of batch/v1 Jobs; the release's others serve integrations not enabled here (a
# pod webhook that nothing answers would fail every pod's creation)
WEBHOOK_GROUPS = {"batch", "kueue.x-k8s.io"}

Kueue = Manager  # a running Kueue manager: where it listens and where it logs


def kueue_path(*parts: str) -> Path:
    return release_path(KUEUE_HOME, f"Kueue v{KUEUE_VERSION}", *parts)


def _configuration(manager: Manager) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"{manager.address}:{manager.health_port}"},
        "metrics": {"bindAddress": f"{manager.address}:{manager.metrics_port}"},
        "webhook": {"host": manager.address, "port": manager.webhook_port, "certDir": str(manager.certs)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
    }


def _kueue_webhook(webhook: dict[str, Any]) -> bool:
    return {group for rule in webhook["rules"] for group in rule["apiGroups"]} <= WEBHOOK_GROUPS


def install_crds(plane: ControlPlane, timeout_s: float = 60) -> None:
    """Kueue's CRDs from its release (the Workload CRD is too large for a client-side apply)."""
    crds = sorted(kueue_path("crd").glob("*.yaml"))
    apply_crds(plane, crds, f"Kueue v{KUEUE_VERSION}", timeout_s)


@contextmanager
def running_kueue(plane: ControlPlane, workdir: Path, timeout_s: float = 120) -> Iterator[Kueue]:
    """Install Kueue's CRDs, start its manager against `plane`, register its webhooks (those of
    WEBHOOK_GROUPS), and yield once it is ready and the apiserver reaches its webhooks (a ResourceFlavor's
    server-side dry run passes through both of them). On exit the webhooks go first, then the manager; the
    CRDs and Kueue's objects stay."""
    install_crds(plane)
    release = Release(
        name="kueue",
        binary=kueue_path("bin", "kueue"),
        webhooks=kueue_path("webhook.yaml"),
        keep=_kueue_webhook,
        name_prefix="kueue-",  # as the release names them
    )
    with running_manager(
        plane,
        workdir,
        release,
        _configuration,
        flags=lambda manager: ["--feature-gates=VisibilityOnDemand=false"],  # its API server: 0.0.0.0:8082
        env=lambda manager: {"KUEUE_METRICS_CERT_DIR": str(manager.certs)},  # kueue_metrics_cert_dir
        webhook_check=_resource_flavor("stopline-webhook-check"),
        timeout_s=timeout_s,
    ) as kueue:
        yield kueue


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
