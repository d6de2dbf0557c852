"""A TrainingJob with spec.targetSelector governs a sweep: every workload of a kind in its namespace whose
labels match (the jobs an HPO tool makes by the hundred) gets a TrainingJob of its own, a member.

A member is the sweep's spec with a targetRef to one workload instead of the selector; the sweep controls
it (ownerReference: deleting the sweep deletes the members, never the workloads), and labels it with the
sweep's study, so the cohort, rungs and forecast criteria judge the members as one cohort while each has
its own status (`kubectl get tj -l stopline.dev/sweep=<sweep>`). One stop token serves the whole sweep:
the sweep's Secret, which every workload's pod template mounts, since the tool that makes the workloads
cannot know the members' names. Pure but for `enlist`.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from stopline import GROUP, KIND, VERSION, targets
from stopline.api import TargetRef, TargetSelector
from stopline.kube import Kube, Manifest
from stopline.lifecycle import Condition, StatusChange
from stopline.registry import controller_uid
from stopline.vocabulary import CREATED, RUNNING, STUDY_LABEL, SWEEP_LABEL, TARGET_FOUND

MAX_NAME = 63  # a TrainingJob's name is a DNS-1035 label
_NOT_IN_NAME = re.compile(r"[^a-z0-9-]")


def member_name(sweep: str, target: str) -> str:
    """`<sweep>-<target>`, a valid TrainingJob name; when too long, cut and made unique by a hash."""
    name = f"{sweep}-{_NOT_IN_NAME.sub('-', target.lower())}".strip("-")
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(f"{sweep}/{target}".encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def sweep_of(training_job: Mapping[str, Any]) -> str | None:
    """The sweep that controls this TrainingJob (by its controller ownerReference), if any: its token is
    the sweep's. The stopline.dev/sweep label alone is never believed."""
    for reference in training_job["metadata"].get("ownerReferences") or []:
        if (
            isinstance(reference, Mapping)
            and reference.get("controller") is True
            and reference.get("kind") == KIND
            and reference.get("apiVersion") == f"{GROUP}/{VERSION}"
        ):
            name = reference.get("name")
            return name if isinstance(name, str) else None
    return None


def member(sweep: Mapping[str, Any], study: str, ref: TargetRef) -> Manifest:
    """The member TrainingJob of one workload: the sweep's spec, a targetRef instead of the selector."""
    metadata = sweep["metadata"]
    spec = {key: copy.deepcopy(value) for key, value in sweep["spec"].items() if key != "targetSelector"}
    spec["targetRef"] = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": member_name(metadata["name"], ref.name),
            "namespace": metadata["namespace"],
            "labels": {STUDY_LABEL: study, SWEEP_LABEL: metadata["name"]},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


async def enlist(kube: Kube, sweep: Mapping[str, Any], selector: TargetSelector) -> int:
    """Make the member of every matching workload that has none yet; how many workloads match (none where
    the kind is not served). Idempotent: a member that exists is kept as it is."""
    adapter = targets.adapter_for(TargetRef(selector.api_version, selector.kind, ""))
    assert adapter is not None, "controller.parse refuses a kind without an adapter"
    metadata = sweep["metadata"]
    namespace = metadata["namespace"]
    listed = await kube.list_objects(adapter.api_version, adapter.plural, namespace, selector.label_selector)
    study = str((metadata.get("labels") or {}).get(STUDY_LABEL) or metadata["name"])
    for workload in listed:
        ref = TargetRef(adapter.api_version, adapter.kind, str(workload["metadata"]["name"]))
        made, _ = await kube.create_or_read(member(sweep, study, ref))
        if controller_uid(made["metadata"]) != metadata.get("uid"):
            continue  # a TrainingJob of that name that is not this sweep's: left alone
    return len(listed)


def sweep_status(selector: TargetSelector, matched: int) -> StatusChange:
    """The sweep's own status: Running while it governs, how many workloads it found (status.members)."""
    message = f"governs {matched} {selector.describe()}, one member TrainingJob each"
    return StatusChange(
        fields={"members": matched},
        conditions=(Condition(CREATED, True, TARGET_FOUND, message),),
        phase=RUNNING,
    )
