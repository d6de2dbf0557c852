"""spec.targetRef: each kind's adapter ranks its pods, says when it finished and how it is suspended, and
the registry files a target's pods by the controller uid chain, never by name or label alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stopline import api, controller, sweep, targets
from stopline.registry import Registry
from stopline.targets.base import TargetRead

GOVERNED = {
    "objective": {"metric": "val_loss", "mode": "min"},
    "checkpoint": {"pvc": {"claimName": "ckpt"}},
}


def training_job(kind: str, api_version: str, name: str, uid: str = "tj-uid") -> dict[str, Any]:
    spec = {**GOVERNED, "targetRef": {"apiVersion": api_version, "kind": kind, "name": name}}
    return {"metadata": {"name": "watch", "namespace": "ns", "uid": uid, "generation": 1}, "spec": spec}


def owned(uid: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": uid, "controller": True}]


def pod(
    name: str, owner: str, labels: dict[str, str], phase: str = "Running", **status: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "labels": labels,
            "ownerReferences": owned(owner),
        },
        "spec": {"containers": [{"name": "node"}, {"name": "sidecar"}]},
        "status": {"phase": phase, "podIP": "127.0.0.9", **status},
    }


def job(name: str, uid: str, owner: str | None, parallelism: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid}
    if owner:
        metadata["ownerReferences"] = owned(owner)
    return {"metadata": metadata, "spec": {"parallelism": parallelism}, "status": {}}


def jobset(suspend: bool = False, conditions: list[dict[str, str]] | None = None) -> dict[str, Any]:
    replicated = [
        {"name": "node", "replicas": 2, "template": {"spec": {"parallelism": 2}}},
    ]
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "sweep", "namespace": "ns", "uid": "js-uid", "labels": {"team": "a"}},
        "spec": {"suspend": suspend, "replicatedJobs": replicated},
        "status": {"conditions": conditions or []},
    }


def read_of(
    kind: str, target: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> TargetRead:
    adapter = next(a for a in targets.ADAPTERS.values() if a.kind == kind)
    found = TargetRead(adapter, target, tuple(jobs), ())
    return TargetRead(adapter, target, tuple(jobs), tuple(found.pod_view(p) for p in pods))


def test_every_kind_the_crd_names_has_an_adapter_and_no_other() -> None:
    crd = yaml.safe_load((Path(__file__).parents[2] / "crds" / "trainingjob.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for field in ("targetRef", "targetSelector"):
        assert sorted(spec[field]["properties"]["kind"]["enum"]) == sorted(
            kind for _, kind in targets.ADAPTERS
        )


def test_a_jobset_ranks_pods_by_job_index_and_completion_index() -> None:
    jobs = [job("sweep-node-0", "j0", "js-uid", 2), job("sweep-node-1", "j1", "js-uid", 2)]
    pods = [
        pod(
            "p-1-1",
            "j1",
            {"jobset.sigs.k8s.io/job-global-index": "1", "batch.kubernetes.io/job-completion-index": "1"},
        ),
        pod(
            "p-0-0",
            "j0",
            {"jobset.sigs.k8s.io/job-global-index": "0", "batch.kubernetes.io/job-completion-index": "0"},
        ),
        pod(
            "p-1-0",
            "j1",
            {"jobset.sigs.k8s.io/job-global-index": "1", "batch.kubernetes.io/job-completion-index": "0"},
        ),
    ]
    read = read_of("JobSet", jobset(), jobs, pods)
    assert sorted((p.name, p.rank) for p in read.pods) == [("p-0-0", 0), ("p-1-0", 2), ("p-1-1", 3)]
    summary = read.summary()
    assert summary["spec"] == {"suspend": False, "parallelism": 4}, "2 Jobs x parallelism 2"
    assert summary["status"]["ready"] == 3
    view = read.view()
    assert (view.kind, view.name, view.uid, view.pod_owners) == (
        "JobSet",
        "sweep",
        "js-uid",
        frozenset({"j0", "j1"}),
    )
    assert view.queued is False and read.pods[0].container == "node", "no container named trainer: the first"


def test_each_kind_says_when_it_finished_in_its_own_words() -> None:
    done = jobset(
        conditions=[{"type": "Completed", "status": "True", "reason": "AllJobsCompleted", "message": "ok"}]
    )
    failed = jobset(
        conditions=[{"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "rank died"}]
    )
    assert read_of("JobSet", done, [], []).summary()["status"]["conditions"][0]["type"] == "Complete"
    summary = read_of("JobSet", failed, [], []).summary()
    assert summary["status"]["conditions"] == [
        {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "rank died"}
    ]
    pytorch = {
        "metadata": {"name": "ddp", "uid": "pt-uid"},
        "spec": {
            "runPolicy": {"suspend": True},
            "pytorchReplicaSpecs": {"Master": {"replicas": 1}, "Worker": {"replicas": 3}},
        },
        "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]},
    }
    summary = read_of("PyTorchJob", pytorch, [], []).summary()
    assert summary["spec"] == {"suspend": True, "parallelism": 4}, "runPolicy.suspend; Master + 3 Workers"
    assert summary["status"]["conditions"][0]["type"] == "Complete"


def test_a_pytorchjob_master_is_rank_zero_and_workers_follow() -> None:
    pytorch = {
        "metadata": {"name": "ddp", "uid": "pt-uid"},
        "spec": {"pytorchReplicaSpecs": {"Master": {}, "Worker": {}}},
    }
    labels = "training.kubeflow.org/replica-type", "training.kubeflow.org/replica-index"
    pods = [
        pod("ddp-worker-0", "pt-uid", {labels[0]: "worker", labels[1]: "0"}),
        pod("ddp-master-0", "pt-uid", {labels[0]: "master", labels[1]: "0"}),
    ]
    read = read_of("PyTorchJob", pytorch, [], pods)
    assert sorted((p.name, p.rank) for p in read.pods) == [("ddp-master-0", 0), ("ddp-worker-0", 1)]
    assert read.view().pod_owners == {"pt-uid"}, "its pods are its own: no Job between"


def test_a_targets_pods_are_filed_by_the_uid_chain_and_impostors_are_not() -> None:
    registry = Registry()
    tracked = registry.observe_training_job(training_job("JobSet", "jobset.x-k8s.io/v1alpha2", "sweep"))
    index = {"batch.kubernetes.io/job-completion-index": "0"}
    read = read_of("JobSet", jobset(), [job("sweep-node-0", "j0", "js-uid", 2)], [pod("p0", "j0", index)])
    registry.file_target(tracked, read.view(), read.pods, read.pod_view)
    assert [p.name for p in tracked.pods] == ["p0"] and tracked.rank_zero() is not None
    # a later pod of one of its Jobs is filed by its controller uid; one that only looks alike is not
    assert registry.observe_target_pod(
        pod("p1", "j0", {"batch.kubernetes.io/job-completion-index": "1"})
    ) == ("ns", "watch")
    assert registry.observe_target_pod(pod("fake", "other-uid", index)) is None
    assert [(p.name, p.rank) for p in tracked.pods] == [("p0", 0), ("p1", 1)]
    # a pod the next read no longer lists is gone, its last state kept for the stop protocol
    registry.file_target(tracked, read.view(), read.pods[:1], read.pod_view)
    assert [p.name for p in tracked.pods if p.deleted] == ["p1"]


def test_a_job_view_of_another_kind_or_name_is_not_the_target() -> None:
    registry = Registry()
    tracked = registry.observe_training_job(training_job("JobSet", "jobset.x-k8s.io/v1alpha2", "sweep"))
    other = read_of("Job", {**job("sweep", "j-uid", None, 1), "kind": "Job"}, [], [])
    registry.file_target(tracked, other.view(), (), other.pod_view)
    assert tracked.job is None, "a Job named like the JobSet is not it"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        (
            {"template": {"spec": {"containers": [{"name": "t"}]}}},
            "spec.template: cannot be set with spec.targetRef or spec.targetSelector",
        ),
        ({"replicas": 4}, "spec.replicas: cannot be set with spec.targetRef or spec.targetSelector"),
        (
            {"failurePolicy": {"maxRestarts": 1}},
            "spec.failurePolicy: cannot be set with spec.targetRef or spec.targetSelector",
        ),
        ({"targetRef": {"apiVersion": "batch/v1", "kind": "Job"}}, "spec.targetRef.name: is required"),
    ],
)
def test_target_errors_name_the_field_and_the_fix(changes: dict[str, Any], error: str) -> None:
    spec = {**training_job("Job", "batch/v1", "a")["spec"], **changes}
    with pytest.raises(api.SpecError) as raised:
        api.parse_spec(spec)
    assert str(raised.value).startswith(error), raised.value


def test_neither_template_nor_target_says_to_set_one() -> None:
    with pytest.raises(api.SpecError) as raised:
        api.parse_spec(GOVERNED)
    assert "spec.template: is required: set spec.template" in str(raised.value)
    words = str(raised.value)
    assert "spec.targetRef (an existing workload" in words and "spec.targetSelector" in words


def test_a_kind_stopline_does_not_govern_is_refused_with_the_kinds_it_does() -> None:
    parsed = controller.parse(training_job("RayJob", "ray.io/v1", "r"))
    assert isinstance(parsed, api.SpecError)
    assert str(parsed).startswith(
        "spec.targetRef: RayJob (ray.io/v1) is not a kind stopline governs; use one of"
    )
    assert "JobSet (jobset.x-k8s.io/v1alpha2)" in str(parsed)
    governed = controller.parse(training_job("Job", "batch/v1", "a"))
    assert isinstance(governed, api.TrainingJobSpec) and governed.target == api.TargetRef(
        "batch/v1", "Job", "a"
    )


def test_a_sweep_member_is_the_sweeps_spec_with_a_target_and_its_name_stays_a_name() -> None:
    parent = {
        "metadata": {"name": "lr", "namespace": "ns", "uid": "sweep-uid"},
        "spec": {
            **GOVERNED,
            "targetSelector": {"apiVersion": "batch/v1", "kind": "Job", "matchLabels": {"s": "lr"}},
        },
    }
    made = sweep.member(parent, "lr", api.TargetRef("batch/v1", "Job", "run.7"))
    assert made["metadata"]["name"] == "lr-run-7", "a '.' of a Job's name is no TrainingJob name"
    assert made["metadata"]["labels"] == {"stopline.dev/study": "lr", "stopline.dev/sweep": "lr"}
    assert made["metadata"]["ownerReferences"][0]["uid"] == "sweep-uid"
    assert api.parse_spec(made["spec"]).target == api.TargetRef("batch/v1", "Job", "run.7")
    long = sweep.member_name("a" * 40, "b" * 40)
    assert len(long) == 63 and long != sweep.member_name("a" * 40, "b" * 39 + "c"), "cut, unique by a hash"
    assert (
        sweep.sweep_of(made) == "lr"
        and sweep.sweep_of({"metadata": {"labels": {"stopline.dev/sweep": "x"}}}) is None
    )


def test_a_selector_needs_labels_and_excludes_a_target() -> None:
    def selecting(labels: dict[str, str]) -> dict[str, Any]:
        return {
            **GOVERNED,
            "targetSelector": {"apiVersion": "batch/v1", "kind": "Job", "matchLabels": labels},
        }

    with pytest.raises(api.SpecError, match=r"^spec.targetSelector.matchLabels: must map 1 to 16"):
        api.parse_spec(selecting({}))
    both = {**selecting({"s": "lr"}), "targetRef": {"apiVersion": "batch/v1", "kind": "Job", "name": "a"}}
    with pytest.raises(api.SpecError, match=r"^spec.targetSelector: cannot be set with spec.targetRef"):
        api.parse_spec(both)
