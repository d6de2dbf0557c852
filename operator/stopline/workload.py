"""Pure builders of the child objects a TrainingJob owns: the control-token Secret, the headless Service
(replicas > 1) and the batch Job that runs the trainer pods with the environment of the trainer contract.

No I/O: the caller passes the owner's identity and the token, and applies what comes back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from stopline import GROUP, KIND, VERSION
from stopline.api import ObjectStoreTarget, PVCTarget, TrainingJobSpec
from stopline.vocabulary import COMPLETION_INDEX_LABEL, JOB_LABEL, QUEUE_LABEL, STUDY_LABEL, TRAINER_CONTAINER

TOKEN_KEY = "token"
MASTER_PORT = 29500
CHECKPOINT_VOLUME = "stopline-checkpoints"
CHECKPOINT_MOUNT = "/stopline/checkpoints"
COMPLETION_INDEX = f"metadata.annotations['{COMPLETION_INDEX_LABEL}']"  # the env's fieldRef: the rank

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The TrainingJob the children belong to; deleting it deletes them (owner references)."""

    name: str
    namespace: str
    uid: str
    study: str | None = None
    queue: tuple[tuple[str, str], ...] = ()  # Kueue's labels on the TrainingJob (QUEUE_LABELS), for its Job

    @property
    def queued(self) -> bool:
        """A queue admits the Job: it is created suspended, and only the queue unsuspends it."""
        return any(key == QUEUE_LABEL for key, _ in self.queue)

    @property
    def labels(self) -> dict[str, str]:
        labels = {JOB_LABEL: self.name, "app.kubernetes.io/managed-by": "stopline"}
        if self.study:
            labels[STUDY_LABEL] = self.study
        return labels

    def metadata(self, name: str) -> Manifest:
        reference = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels,
            "ownerReferences": [reference],
        }


def token_secret_name(owner: Owner) -> str:
    return f"{owner.name}-stopline-control"


def build_token_secret(owner: Owner, token: str) -> Manifest:
    """The bearer token that guards the trainers' POST /stop; only the operator and the pods read it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": owner.metadata(token_secret_name(owner)),
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token},
    }


def build_service(owner: Owner) -> Manifest:
    """A headless Service, so rank k resolves as `<job>-k.<job>` and rank 0 is MASTER_ADDR."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(owner.name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: owner.name},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def checkpoint_uri(owner: Owner, spec: TrainingJobSpec) -> str:
    """Where the trainer writes: a folder on the mounted claim, or the s3:// prefix.

    An empty pvc.path means a folder of this TrainingJob's own, `<namespace>/<name>-<uid prefix>`: jobs
    sharing a claim then never overwrite, collect or resume each other's checkpoints, and a TrainingJob
    deleted and created again under the same name starts in a new folder.
    """
    target = spec.checkpoint.target
    if isinstance(target, PVCTarget):
        folder = target.path or default_checkpoint_path(owner)
        return f"{CHECKPOINT_MOUNT}/{folder}".rstrip("/")
    return target.uri


def default_checkpoint_path(owner: Owner) -> str:
    return f"{owner.namespace}/{owner.name}-{owner.uid[:8]}"


def build_job(owner: Owner, spec: TrainingJobSpec) -> Manifest:
    """The batch Job: spec.template with the trainer contract added; Indexed when there are several ranks."""
    replicas = spec.replicas
    assert spec.template is not None, "a TrainingJob with spec.targetRef has no Job of its own"
    template: Manifest = copy.deepcopy(dict(spec.template))
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**metadata.get("labels", {}), **owner.labels}
    pod = template["spec"]
    pod["restartPolicy"] = "Never"
    pod["terminationGracePeriodSeconds"] = math.ceil(spec.stop_policy.grace_period.seconds)
    if replicas > 1:
        pod["subdomain"] = owner.name
    trainer = _trainer_container(pod["containers"])
    trainer["env"] = _with_defaults(trainer.get("env", []), _contract_env(owner, spec))
    trainer.setdefault("ports", []).append(
        {"name": "stopline", "containerPort": spec.metrics.port, "protocol": "TCP"}
    )
    target = spec.checkpoint.target
    if isinstance(target, PVCTarget):
        pod.setdefault("volumes", []).append(
            {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": target.claim_name}}
        )
        trainer.setdefault("volumeMounts", []).append(
            {"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT}
        )
    job_spec: Manifest = {
        "completions": replicas,
        "parallelism": replicas,
        "backoffLimit": 0,
        "template": template,
    }
    if replicas > 1:
        job_spec["completionMode"] = "Indexed"
    job_metadata = owner.metadata(owner.name)
    if owner.queued:
        job_metadata["labels"] |= dict(owner.queue)
        job_spec["suspend"] = True  # no pod before the queue admits it
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_metadata, "spec": job_spec}


def _trainer_container(containers: list[Manifest]) -> Manifest:
    """The container named `trainer`, else the first: it gets the contract, sidecars are left alone."""
    return next((c for c in containers if c.get("name") == TRAINER_CONTAINER), containers[0])


def _contract_env(owner: Owner, spec: TrainingJobSpec) -> list[Manifest]:
    """The environment of DESIGN.md's trainer contract."""
    replicas = spec.replicas
    rank: Manifest = (
        {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}}
        if replicas > 1
        else {"name": "RANK", "value": "0"}
    )
    env: list[Manifest] = [
        {"name": "STOPLINE_JOB", "value": owner.name},
        {"name": "STOPLINE_NAMESPACE", "value": owner.namespace},
        {"name": "STOPLINE_METRICS_PORT", "value": str(spec.metrics.port)},
        {"name": "STOPLINE_CHECKPOINT_URI", "value": checkpoint_uri(owner, spec)},
        {"name": "STOPLINE_OBJECTIVE", "value": spec.objective.metric},
        {"name": "STOPLINE_OBJECTIVE_MODE", "value": spec.objective.mode},
        {"name": "STOPLINE_KEEP_BEST", "value": str(spec.checkpoint.keep_best).lower()},
        {"name": "STOPLINE_RESUME", "value": str(spec.checkpoint.resume).lower()},
        {
            "name": "STOPLINE_CONTROL_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": token_secret_name(owner), "key": TOKEN_KEY}},
        },
        rank,
        {"name": "WORLD_SIZE", "value": str(replicas)},
        {"name": "MASTER_ADDR", "value": f"{owner.name}-0.{owner.name}" if replicas > 1 else "127.0.0.1"},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
    ]
    target = spec.checkpoint.target
    if isinstance(target, ObjectStoreTarget):
        env += _object_store_env(target)
    return env


def _object_store_env(target: ObjectStoreTarget) -> list[Manifest]:
    env: list[Manifest] = []
    if target.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": target.endpoint})
    if target.region:
        env.append({"name": "AWS_REGION", "value": target.region})
    if target.credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append(
                {"name": key, "valueFrom": {"secretKeyRef": {"name": target.credentials_secret, "key": key}}}
            )
    return env


def _with_defaults(user_env: list[Manifest], contract: list[Manifest]) -> list[Manifest]:
    """The user's variables win: a contract variable is added only when the template does not set it."""
    named = {variable["name"] for variable in user_env}
    return [*user_env, *(variable for variable in contract if variable["name"] not in named)]
