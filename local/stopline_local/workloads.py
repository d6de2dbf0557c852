"""The real workload controllers beside the test apiserver: JobSet, Kubeflow Trainer v2 and the Kubeflow
Training Operator v1, for tests of the objects they turn into Jobs and pods (Kueue: stopline_local.kueue).

Each manager, its CRDs and its webhooks come from `make testenv` (testenv/build.sh builds each once, into a
cache keyed by its version). A manager runs as a process with the control plane's admin kubeconfig, with what
its Deployment would get from a cluster made here instead: its own 127.0.0.x for its webhooks, health and
metrics; a self-signed certificate for that address (its own certificate management is off: it would sign for
a Service name nothing resolves), in controller-runtime's default folder under the TMPDIR it is given, so
managers with no setting for it read it too; its webhooks registered by URL on that address, with that
certificate as their caBundle; leader election off. The local kubelet (stopline_local.kubelet) runs the pods.

    with running_jobset(plane, tmp_path) as jobset, running_trainer(plane, tmp_path, jobset):
        cluster_training_runtime(plane)
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(train_job("fit", command, 2)))
        # a TrainJob -> a JobSet -> one Job (replicatedJob "node") -> 2 pods, run by the local kubelet

    with running_training_operator(plane, tmp_path) as operator:
        ...  # PyTorchJobs (kubeflow.org/v1): a master and workers, each a pod
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
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

JOBSET_VERSION = os.environ.get("JOBSET_VERSION", "0.10.1")
TRAINER_VERSION = os.environ.get("TRAINER_VERSION", "2.1.0")
TRAINING_OPERATOR_VERSION = os.environ.get("TRAINING_OPERATOR_VERSION", "1.8.1")
CACHE = Path.home() / ".cache" / "stopline"
JOBSET_HOME = Path(os.environ.get("STOPLINE_JOBSET", CACHE / "jobset" / f"v{JOBSET_VERSION}"))
TRAINER_HOME = Path(os.environ.get("STOPLINE_TRAINER", CACHE / "trainer" / f"v{TRAINER_VERSION}"))
TRAINING_OPERATOR_HOME = Path(
    os.environ.get(
        "STOPLINE_TRAINING_OPERATOR", CACHE / "training-operator" / f"v{TRAINING_OPERATOR_VERSION}"
    )
)
JOBSET_API = "jobset.x-k8s.io/v1alpha2"
TRAINER_API = "trainer.kubeflow.org/v1alpha1"
KUBEFLOW_API = "kubeflow.org/v1"  # the Training Operator's PyTorchJob, TFJob, ...
JOBSET_NAME_LABEL = (
    "jobset.sigs.k8s.io/jobset-name"  # on a JobSet's Jobs and pods; its pod webhooks' selector
)
TORCH_RUNTIME = "stopline-torch"  # cluster_training_runtime's default name
GRACE_S = 15


@dataclass(frozen=True)
class Manager:
    """A running controller manager: where it listens, the TMPDIR it got and where it logs."""

    name: str
    address: str  # 127.0.0.x: webhooks, metrics and health
    webhook_port: int
    health_port: int
    metrics_port: int
    tmpdir: Path
    log: Path

    @property
    def certs(self) -> Path:
        """tls.crt and tls.key: controller-runtime's default folder for them, under the manager's TMPDIR."""
        return self.tmpdir / "k8s-webhook-server" / "serving-certs"

    @property
    def url(self) -> str:
        """Where the apiserver reaches its webhooks (each at its own path under it)."""
        return f"https://{self.address}:{self.webhook_port}"

    def log_tail(self, size: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else "(no log)"


def release_path(home: Path, what: str, *parts: str) -> Path:
    """A file of a release that `make testenv` built into `home`; MissingTestenv names it when it is not."""
    path = home.joinpath(*parts)
    if not path.exists():
        raise MissingTestenv(f"{path} is missing: run `make testenv` (it builds {what} once)")
    return path


def free_port_on(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def self_signed_certificate(folder: Path, address: str) -> bytes:
    """A self-signed certificate for `address` (tls.crt, tls.key in `folder`): the webhooks' caBundle too."""
    folder.mkdir(parents=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
         "-keyout", str(folder / "tls.key"), "-out", str(folder / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return (folder / "tls.crt").read_bytes()


def webhooks_by_url(
    manifest: Path,
    url: str,
    ca_bundle: bytes,
    keep: Callable[[dict[str, Any]], bool] = lambda webhook: True,
    name_prefix: str = "",
) -> list[dict[str, Any]]:
    """A release's webhook configurations (the other documents of `manifest` are left out), each webhook that
    `keep` keeps reached at `url` + its Service's path, with `ca_bundle`; names prefixed as the release's."""
    configurations = []
    for document in yaml.safe_load_all(manifest.read_text()):
        if not document or not document["kind"].endswith("WebhookConfiguration"):
            continue  # the Service a kustomization renders with them
        webhooks = []
        for webhook in document["webhooks"]:
            if keep(webhook):
                path = webhook["clientConfig"]["service"]["path"]
                webhook["clientConfig"] = {
                    "url": url + path,
                    "caBundle": base64.b64encode(ca_bundle).decode(),
                }
                webhooks.append(webhook)
        document["metadata"]["name"] = name_prefix + document["metadata"]["name"]
        configurations.append({**document, "webhooks": webhooks})
    return configurations


def apply_crds(plane: ControlPlane, crds: Sequence[Path], what: str, timeout_s: float = 60) -> None:
    """CRDs from a release, applied server-side (some are too large for the annotation of a client-side
    apply), then waited on until each is Established."""
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

    wait_until(established, timeout_s, f"{what}'s {len(names)} CRDs Established")


@dataclass(frozen=True)
class Release:
    """What `running_manager` starts: a manager binary and the webhook configurations of its release."""

    name: str  # its files in the workdir: <name>.log, <name>-config.yaml, <name>-tmp/
    binary: Path
    webhooks: Path  # the release's webhook configurations (webhook.yaml of its cache)
    keep: Callable[[dict[str, Any]], bool] = lambda webhook: True  # which of them to register
    name_prefix: str = ""  # the release's prefix of their names


@contextmanager
def running_manager(
    plane: ControlPlane,
    workdir: Path,
    release: Release,
    configuration: Callable[[Manager], dict[str, Any]] | None = None,
    flags: Callable[[Manager], list[str]] = lambda manager: [],
    env: Callable[[Manager], Mapping[str, str]] = lambda manager: {},
    webhook_check: dict[str, Any] | None = None,
    timeout_s: float = 120,
) -> Iterator[Manager]:
    """Start a release's manager against `plane` on a 127.0.0.x of its own, register its webhooks there, and
    yield once its /readyz answers and the apiserver reaches its webhooks (a server-side dry run of
    `webhook_check`, an object they see, passes through them). Its CRDs are the caller's to apply first.

    `configuration`, when given, is written to <name>-config.yaml and passed as --config; `flags` come after
    it; `env` is added to the manager's environment, whose TMPDIR is a folder of its own. On exit the
    webhooks go first (they fail closed: with the manager gone, every object they see would be refused),
    then the manager; its CRDs and objects stay."""
    address = f"127.0.0.{random.randint(100, 250)}"
    workdir.mkdir(parents=True, exist_ok=True)
    manager = Manager(
        name=release.name,
        address=address,
        webhook_port=free_port_on(address),
        health_port=free_port_on(address),
        metrics_port=free_port_on(address),
        tmpdir=workdir / f"{release.name}-tmp",
        log=workdir / f"{release.name}.log",
    )
    ca_bundle = self_signed_certificate(manager.certs, address)
    argv = [str(release.binary)]
    if configuration is not None:
        config = workdir / f"{release.name}-config.yaml"
        config.write_text(yaml.safe_dump(configuration(manager)))
        argv.append(f"--config={config}")
    argv += [*flags(manager), f"--kubeconfig={plane.kubeconfig}"]
    with manager.log.open("wb") as log:
        process = subprocess.Popen(
            argv, env={**os.environ, "TMPDIR": str(manager.tmpdir), **env(manager)},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )  # fmt: skip
    webhooks = webhooks_by_url(release.webhooks, manager.url, ca_bundle, release.keep, release.name_prefix)
    names = [f"{document['kind'].lower()}/{document['metadata']['name']}" for document in webhooks]
    try:
        plane.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": webhooks})
        )

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{release.name} exited with {process.returncode}; last log lines:\n{manager.log_tail()}"
                )
            with urllib.request.urlopen(
                f"http://{address}:{manager.health_port}/readyz", timeout=2
            ) as answer:
                return bool(answer.status == 200)

        wait_until(
            ready,
            timeout_s,
            f"the {release.name} manager's /readyz",
            retry_on=(OSError,),
            details=manager.log_tail,
        )
        if webhook_check is not None:
            checked = plane.kubectl(
                "create", "--dry-run=server", "-f", "-", input=json.dumps(webhook_check), check=False
            )
            if checked.returncode != 0:
                raise RuntimeError(
                    f"the apiserver cannot reach {release.name}'s webhooks: {checked.stderr}\n"
                    f"{manager.log_tail()}"
                )
        yield manager
    finally:
        plane.kubectl("delete", "--ignore-not-found", *names, check=False)
        stop_process(process, GRACE_S)


def _webhook_check(manifest: dict[str, Any], namespace: str | None = "default") -> dict[str, Any]:
    """`manifest` as the object of running_manager's dry run (a namespaced one in `default`)."""
    metadata = {"name": "stopline-webhook-check", **({"namespace": namespace} if namespace else {})}
    return {**manifest, "metadata": {**manifest["metadata"], **metadata}}


# JobSet


def jobset(name: str, command: Sequence[str], pods: int = 1, replicas: int = 1) -> dict[str, Any]:
    """A JobSet of one replicatedJob "workers": `replicas` Jobs of `pods` pods each running `command` (indexed
    completions, as JobSet makes them); the local kubelet runs the container named trainer."""
    container = {"name": "trainer", "image": "local-process", "command": list(command)}
    job = {
        "parallelism": pods,
        "completions": pods,
        "backoffLimit": 0,
        "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
    }
    return {
        "apiVersion": JOBSET_API,
        "kind": "JobSet",
        "metadata": {"name": name},
        "spec": {"replicatedJobs": [{"name": "workers", "replicas": replicas, "template": {"spec": job}}]},
    }


@contextmanager
def running_jobset(plane: ControlPlane, workdir: Path, timeout_s: float = 120) -> Iterator[Manager]:
    """Install JobSet's CRD, start its controller, register its webhooks (required: its mutating webhook
    fills in spec.network and more that the controller counts on; its pod webhooks see only the pods of
    JobSets, by the release's objectSelector) and yield once it is ready."""
    what = f"JobSet v{JOBSET_VERSION}"
    apply_crds(plane, sorted(release_path(JOBSET_HOME, what, "crd").glob("*.yaml")), what)
    release = Release(
        name="jobset",
        binary=release_path(JOBSET_HOME, what, "bin", "jobset"),
        webhooks=release_path(JOBSET_HOME, what, "webhook.yaml"),
        name_prefix="jobset-",  # as the release names them
    )

    def configuration(manager: Manager) -> dict[str, Any]:
        return {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"{manager.address}:{manager.health_port}"},
            "metrics": {
                "bindAddress": f"{manager.address}:{manager.metrics_port}",
                "certDir": str(manager.certs),
            },
            "webhook": {"host": manager.address, "port": manager.webhook_port, "certDir": str(manager.certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
        }

    check = _webhook_check(jobset("check", ["true"]))
    with running_manager(
        plane, workdir, release, configuration, webhook_check=check, timeout_s=timeout_s
    ) as manager:
        yield manager


# Kubeflow Trainer v2


def _cluster_training_runtime(name: str) -> dict[str, Any]:
    return {
        "apiVersion": TRAINER_API,
        "kind": "ClusterTrainingRuntime",
        "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {"numProcPerNode": 1}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "template": {
                                "metadata": {
                                    "labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
                                },
                                "spec": {
                                    "template": {
                                        "spec": {
                                            # the torch plugin fills in the container named node: the
                                            # TrainJob's command, PET_* env; the local kubelet ignores images
                                            "containers": [{"name": "node", "image": "local-process"}],
                                            # JobSet's default is OnFailure, a restart in place that the
                                            # local kubelet does not do: a failed process fails its pod
                                            "restartPolicy": "Never",
                                        }
                                    }
                                },
                            },
                        }
                    ]
                }
            },
        },
    }


def cluster_training_runtime(plane: ControlPlane, name: str = TORCH_RUNTIME) -> str:
    """A torch ClusterTrainingRuntime for the local kubelet: one replicatedJob "node" whose container runs
    the TrainJob's trainer.command with torchrun's PET_* env (one process a node unless the TrainJob says;
    PET_MASTER_ADDR <trainjob>-node-0-0.<trainjob>, which the local kubelet resolves to rank 0's IP), its
    pods restartPolicy Never; returns its name, for a TrainJob's runtimeRef."""
    plane.kubectl("apply", "-f", "-", input=json.dumps(_cluster_training_runtime(name)))
    return name


def train_job(
    name: str, command: Sequence[str], num_nodes: int = 1, runtime: str = TORCH_RUNTIME
) -> dict[str, Any]:
    """A TrainJob on the ClusterTrainingRuntime `runtime`: `num_nodes` pods running `command`."""
    return {
        "apiVersion": TRAINER_API,
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": {
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": runtime,
            },
            "trainer": {"command": list(command), "numNodes": num_nodes},
        },
    }


@contextmanager
def running_trainer(
    plane: ControlPlane, workdir: Path, jobset: Manager, timeout_s: float = 120
) -> Iterator[Manager]:
    """Install Trainer's CRDs (TrainJob, TrainingRuntime, ClusterTrainingRuntime), start its controller
    manager, register its webhooks and yield once it is ready. A TrainJob becomes a JobSet: `jobset` is the
    running JobSet controller that it needs. Trainer has no setting for its certificate's folder: it reads
    $TMPDIR/k8s-webhook-server/serving-certs, where running_manager puts it."""
    what = f"Kubeflow Trainer v{TRAINER_VERSION}"
    apply_crds(plane, sorted(release_path(TRAINER_HOME, what, "crd").glob("*.yaml")), what)
    release = Release(
        name="trainer",
        binary=release_path(TRAINER_HOME, what, "bin", "trainer"),
        webhooks=release_path(TRAINER_HOME, what, "webhook.yaml"),
    )

    def configuration(manager: Manager) -> dict[str, Any]:
        return {
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
            "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"{manager.address}:{manager.health_port}"},
            "metrics": {"bindAddress": f"{manager.address}:{manager.metrics_port}", "secureServing": False},
            "webhook": {"host": manager.address, "port": manager.webhook_port},
            "leaderElection": {"leaderElect": False},
            "certManagement": {"enable": False},
        }

    check = _webhook_check(_cluster_training_runtime("check"), namespace=None)
    with running_manager(
        plane, workdir, release, configuration, webhook_check=check, timeout_s=timeout_s
    ) as manager:
        yield manager


# Kubeflow Training Operator v1


def pytorch_job(name: str, command: Sequence[str], workers: int = 1) -> dict[str, Any]:
    """A PyTorchJob of a master and `workers` workers, each pod running `command` (its container must be
    named pytorch); the operator gives each MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK."""

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "Never",
            "template": {
                "spec": {
                    "containers": [{"name": "pytorch", "image": "local-process", "command": list(command)}]
                }
            },
        }

    return {
        "apiVersion": KUBEFLOW_API,
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(workers)}},
    }


@contextmanager
def running_training_operator(
    plane: ControlPlane, workdir: Path, timeout_s: float = 120
) -> Iterator[Manager]:
    """Install the Training Operator's CRDs (PyTorchJob, TFJob, MPIJob, ...), start it, register its
    (validating) webhooks and yield once it is ready. It has no configuration file: flags, two of them
    added by testenv/build.sh (--internal-cert-management=false: its certificate from
    $TMPDIR/k8s-webhook-server/serving-certs; --webhook-host)."""
    what = f"the Kubeflow Training Operator v{TRAINING_OPERATOR_VERSION}"
    apply_crds(plane, sorted(release_path(TRAINING_OPERATOR_HOME, what, "crd").glob("*.yaml")), what)
    release = Release(
        name="training-operator",
        binary=release_path(TRAINING_OPERATOR_HOME, what, "bin", "training-operator"),
        webhooks=release_path(TRAINING_OPERATOR_HOME, what, "webhook.yaml"),
    )

    def flags(manager: Manager) -> list[str]:
        return [
            f"--metrics-bind-address={manager.address}:{manager.metrics_port}",
            f"--health-probe-bind-address={manager.address}:{manager.health_port}",
            f"--webhook-host={manager.address}",
            f"--webhook-server-port={manager.webhook_port}",
            "--leader-elect=false",
            "--internal-cert-management=false",
        ]

    check = _webhook_check(pytorch_job("check", ["true"]))
    with running_manager(
        plane, workdir, release, flags=flags, webhook_check=check, timeout_s=timeout_s
    ) as manager:
        yield manager
