"""What the e2e tests share: the example trainer as a TrainingJob, its pods once ended, and its weights
loaded back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from operatorharness import apply, exists, get, pods, status
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet
from trainer.support import assert_reproduces_outputs, verify_blob

CLAIM = "checkpoints"
METRICS_PORT = 8000
TERMINAL = ("Stopped", "Succeeded", "Failed", "Cancelled")
DEADLINE_S = 90  # generous for a shared 2-core box; every wait returns as soon as its check passes


EXAMPLE = ("python", "trainer-image/examples/train.py")
LONG_RUN = ("--epochs", "50", "--steps-per-epoch", "10", "--sleep-per-step", "0.05")
PATIENCE = {"name": "plateau", "patience": {"patience": 1, "minDelta": 0.0002}}


def training_job(
    name: str, replicas: int = 1, command: tuple[str, ...] = EXAMPLE, args: Sequence[str] = LONG_RUN
) -> dict[str, Any]:
    """A TrainingJob whose trainer is the example: by default long enough (50 epochs) that only a stop
    ends it."""
    trainer = {
        "name": "trainer",
        "image": "ghcr.io/stopline-dev/trainer:test",  # ignored by the local kubelet
        "command": list(command),
        "args": list(args),
        "env": [
            {"name": "OMP_NUM_THREADS", "value": "1"},  # two shared cores: one thread per trainer
            {"name": "GLOO_SOCKET_IFNAME", "value": "lo"},  # the pod IPs live on loopback
        ],
    }
    return {
        "apiVersion": "stopline.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [trainer]}},
            "objective": {"metric": "val_loss", "mode": "min"},
            "metrics": {"port": METRICS_PORT},
            "checkpoint": {"pvc": {"claimName": CLAIM, "path": f"runs/{name}"}},
            "stopPolicy": {"gracePeriod": "60s"},
        },
    }


def apply_claim(plane: ControlPlane, namespace: str) -> None:
    """The checkpoint claim the examples mount (the local kubelet backs it with a folder)."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply(plane, namespace, claim)


def load_weights(manifest: dict[str, Any], folder: Path) -> None:
    """The manifest names a file on the claim; its bytes match it and load into the example's model."""
    weights = Path(manifest["uri"])
    assert weights.parent == folder
    assert_reproduces_outputs(verify_blob(weights.read_bytes(), manifest))


def terminated_pods(plane: ControlPlane, namespace: str, name: str, count: int) -> list[dict[str, Any]]:
    """The Job's pods once all of them ended; returns their terminated container states."""
    found: list[dict[str, Any]] = []

    def all_ended() -> bool:
        listed = pods(plane, namespace, name)
        found[:] = [
            pod["status"]["containerStatuses"][0]["state"]["terminated"]
            for pod in listed
            if pod["status"].get("phase") in ("Succeeded", "Failed")
        ]
        return len(found) == count

    def seen() -> str:
        """Each pod's phase, whether it is being deleted and its container states, for the timeout."""
        lines = [
            f"{pod['metadata']['name']}: phase {pod['status'].get('phase')}, "
            f"deleting {bool(pod['metadata'].get('deletionTimestamp'))}, "
            f"containers {pod['status'].get('containerStatuses')}"
            for pod in pods(plane, namespace, name)
        ]
        return "\n".join(lines) or "no pods"

    wait_until(all_ended, DEADLINE_S, f"{count} pod(s) of {name} to end", details=seen)
    return found


def finish(plane: ControlPlane, kubelet: LocalKubelet, namespace: str, name: str) -> dict[str, Any]:
    """Wait for a terminal phase; the TrainingJob as it ended (the trainer logs are shown on a timeout)."""
    wait_until(
        lambda: status(plane, namespace, name).get("phase") in TERMINAL,
        DEADLINE_S,
        f"{name} to end",
        details=lambda: f"{status(plane, namespace, name)}\n{kubelet.logs()[-4000:]}",
    )
    return dict(get(plane, namespace, "tj", name))


# TrainingJobs that govern a workload (spec.targetRef): what the user adds to the workload's pod template

CHECKPOINT_MOUNT = "/checkpoints"


def trainer_env(governor: str, folder: str, with_token: bool = True) -> list[dict[str, Any]]:
    """What a user adds to their trainer container (docs/targets.md): the contract's variables, the token
    from the Secret `<TrainingJob>-stopline-control` (without it, only a suspend can stop the trainer)."""
    env: list[dict[str, Any]] = [
        {"name": "STOPLINE_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "STOPLINE_CHECKPOINT_URI", "value": f"{CHECKPOINT_MOUNT}/{folder}"},
        {"name": "STOPLINE_OBJECTIVE", "value": "val_loss"},
        {"name": "OMP_NUM_THREADS", "value": "1"},
    ]
    if with_token:
        secret = {"name": f"{governor}-stopline-control", "key": "token"}
        env.append({"name": "STOPLINE_CONTROL_TOKEN", "valueFrom": {"secretKeyRef": secret}})
    return env


def governing(name: str, kind: str, api_version: str, target: str, **spec: Any) -> dict[str, Any]:
    """A TrainingJob that governs an existing workload, read every second."""
    return {
        "apiVersion": "stopline.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {"apiVersion": api_version, "kind": kind, "name": target},
            "objective": {"metric": "val_loss", "mode": "min"},
            "metrics": {"port": METRICS_PORT, "interval": "1s"},
            "checkpoint": {"pvc": {"claimName": CLAIM, "path": f"runs/{target}"}},
            "stopPolicy": {"gracePeriod": "60s"},
            **spec,
        },
    }


def wait_for_secret(plane: ControlPlane, namespace: str, governor: str) -> None:
    """The operator made the token Secret the workload's pods read (create the TrainingJob first)."""
    secret = f"{governor}-stopline-control"
    wait_until(lambda: exists(plane, namespace, "secret", secret), DEADLINE_S, f"Secret {secret}")


def epoch_reached(
    plane: ControlPlane, namespace: str, name: str, epoch: int, kubelet: LocalKubelet | None = None
) -> None:
    """The operator read `epoch` of the job (status.progress); a timeout shows its status and the logs."""
    wait_until(
        lambda: status(plane, namespace, name).get("progress", {}).get("epoch", 0) >= epoch,
        DEADLINE_S,
        f"{name}: epoch {epoch} in status.progress",
        details=lambda: f"{status(plane, namespace, name)}\n{kubelet.logs()[-3000:] if kubelet else ''}",
    )
