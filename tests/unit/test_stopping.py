"""What a restarted operator remembers, and how the registry files and trusts pods and Jobs. Pure code."""

from __future__ import annotations

import json
import math

from specs import spec

from stopline.pointer import checkpoint_status
from stopline.progress import JobMemory, gpu_seconds_saved, shown_metrics
from stopline.registry import Registry, pod_view

RAW_SPEC = {
    "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
    "objective": {"metric": "val_loss", "mode": "min"},
    "checkpoint": {"pvc": {"claimName": "ckpt"}},
}

MANIFEST = json.dumps({"uri": "s3://b/run/step-300.pt", "epoch": 3, "step": 300, "bytes": 9, "sha256": "ab"})


def test_checkpoint_status_takes_the_manifest_fields_of_the_crd_and_refuses_other_text() -> None:
    assert checkpoint_status("rank 1 exited") is None
    assert checkpoint_status(json.dumps({"rank": 1, "epoch": 3})) is None
    assert set(checkpoint_status(MANIFEST) or {}) == {"uri", "epoch", "step", "bytes", "sha256"}


def test_memory_seeded_from_status_goes_on_from_the_last_epoch_written() -> None:
    job = spec()
    memory = JobMemory.seed(
        {
            "progress": {"epoch": 2},
            "curve": [0.5, 0.4],
            "best": {"metric": "val_loss", "value": 0.4, "epoch": 2},
            "criteria": [{"name": "plateau", "state": {"kind": "patience", "epoch": 2}}],
        }
    )
    assert memory.states == {"plateau": {"kind": "patience", "epoch": 2}}
    assert not memory.record(job, {2: {"val_loss": 0.4}})
    assert memory.record(job, {4: {"val_loss": math.nan}})
    assert memory.curve == [0.5, 0.4, None, None]  # epoch 3 was never read; NaN is not a value
    assert memory.fed_epoch == 4
    assert memory.best == {"metric": "val_loss", "value": 0.4, "epoch": 2}


def test_progress_shows_the_specs_metrics_first_and_a_bounded_number_of_well_formed_others() -> None:
    job = spec({"name": "good", "threshold": {"metric": "val_acc", "mode": "max", "value": 0.9}})
    reported = {f"zz_{index:03d}": 1.0 for index in range(100)}
    reported |= {"bad name\n\x1b[31m": 1.0, "val_acc": 0.5, "val_loss": math.nan}
    shown = shown_metrics(job, reported)
    assert list(shown)[:2] == ["val_acc", "val_loss"] and shown["val_loss"] is None
    assert len(shown) == 32 and not any(" " in name for name in shown)


def test_gpu_seconds_saved_needs_max_epochs_and_a_measured_epoch() -> None:
    job = spec(maxEpochs=10)
    assert gpu_seconds_saved(job, epoch=4, epoch_seconds=30.0) == 6 * 30.0 * job.gpus
    assert gpu_seconds_saved(job, epoch=4, epoch_seconds=None) is None
    assert gpu_seconds_saved(spec(), epoch=4, epoch_seconds=30.0) is None


JOB_UID = "job-uid-a"


def _pod(name: str, job: str, index: str, owner: str = JOB_UID, **status: object) -> dict[str, object]:
    labels = {"stopline.dev/job": job, "batch.kubernetes.io/job-completion-index": index}
    references = [{"kind": "Job", "name": job, "uid": owner, "controller": True}]
    metadata = {"name": name, "namespace": "ns", "labels": labels, "ownerReferences": references}
    return {"metadata": metadata, "uid": f"uid-{name}", "status": status}


def _job(name: str = "a", uid: str = JOB_UID, owner: str = "1", **spec: object) -> dict[str, object]:
    references = [{"kind": "TrainingJob", "name": name, "uid": owner, "controller": True}]
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "ownerReferences": references},
        "spec": spec,
    }


def test_a_deleted_pod_keeps_its_termination_message_and_rank_zero_is_the_one_scraped() -> None:
    registry = Registry()
    tracked = registry.observe_training_job(
        {"metadata": {"name": "a", "namespace": "ns", "uid": "1", "generation": 1}, "spec": RAW_SPEC}
    )
    registry.observe_job(_job())
    terminated = {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": MANIFEST}}}
    registry.observe_pod(_pod("a-1", "a", "1", phase="Running", podIP="127.0.0.3"))
    registry.observe_pod(_pod("a-0", "a", "0", phase="Running", podIP="127.0.0.2"))
    rank_zero = tracked.rank_zero()
    assert rank_zero is not None and rank_zero.ip == "127.0.0.2"
    registry.observe_pod(
        _pod("a-0", "a", "0", phase="Succeeded", containerStatuses=[terminated]), deleted=True
    )
    assert tracked.rank_zero() is None
    [rank_0] = [pod for pod in tracked.pods if pod.name == "a-0"]
    assert rank_0.message == MANIFEST and not rank_0.active
    assert pod_view(_pod("x", "a", "7")).rank == 7


def study_member(
    registry: Registry, name: str, study: str, curve: list[float | None], phase: str = "Running"
) -> None:
    """A TrainingJob of the study, as its watch event delivers it."""
    registry.observe_training_job(
        {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": name,
                "labels": {"stopline.dev/study": study},
            },
            "spec": RAW_SPEC,
            "status": {"phase": phase, "curve": curve},
        }
    )


def test_the_cohort_is_the_other_jobs_of_the_study_in_the_namespace_with_their_curves() -> None:
    registry = Registry()

    def job(name: str, study: str, curve: list[float | None], phase: str = "Running") -> None:
        study_member(registry, name, study, curve, phase)

    job("me", "s", [1.0])
    job("peer", "s", [0.5, None, 0.3])
    job("pruned", "s", [2.0], phase="Stopped")
    job("other-study", "t", [0.1])
    me = registry.get(("ns", "me"))
    assert me is not None
    cohort = {curve.job: curve for curve in registry.cohort(me)}
    assert set(cohort) == {"peer", "pruned"}
    assert dict(cohort["peer"].values) == {1: 0.5, 3: 0.3}
    assert cohort["pruned"].stopped and not cohort["peer"].stopped

    job("peer", "t", [0.5, None, 0.3])  # relabelled into another study
    registry.forget_training_job("ns", "pruned")
    job("newcomer", "s", [0.9, 0.8])
    assert {curve.job for curve in registry.cohort(me)} == {"newcomer"}
    assert dict(registry.cohort(me)[0].values) == {1: 0.9, 2: 0.8}
    job("newcomer", "s", [0.9, 0.8, 0.7])  # a newer status: its curve is read again
    assert dict(registry.cohort(me)[0].values) == {1: 0.9, 2: 0.8, 3: 0.7}


def test_pods_labelled_for_no_training_job_are_forgotten_when_they_go() -> None:
    registry = Registry()
    for index in range(100):
        pod = _pod(f"spam-{index}", f"nobody-{index}", "0", phase="Running")
        registry.observe_pod(pod)
        registry.observe_pod(pod, deleted=True)
    assert registry._pods == {}


def test_a_pod_or_job_that_only_carries_the_label_is_never_trusted() -> None:
    """An impostor pod labelled with the job's name (not controlled by its Job) is never scraped or
    signalled, and a Job of the same name that another object controls is not this job's Job."""
    registry = Registry()
    tracked = registry.observe_training_job(
        {"metadata": {"name": "a", "namespace": "ns", "uid": "1", "generation": 1}, "spec": RAW_SPEC}
    )
    registry.observe_pod(_pod("a-0", "a", "0", phase="Running", podIP="127.0.0.2"))
    assert tracked.job is None and tracked.pods == [] and tracked.rank_zero() is None  # Job not known yet
    registry.observe_job(_job(owner="someone-else"))
    assert tracked.job is None and tracked.pods == []
    registry.observe_job(_job())
    impostor = _pod("aaa-impostor", "a", "0", owner="not-the-job", phase="Running", podIP="127.0.0.66")
    registry.observe_pod(impostor)
    assert [pod.name for pod in tracked.pods] == ["a-0"]
    rank_zero = tracked.rank_zero()
    assert rank_zero is not None and rank_zero.ip == "127.0.0.2"
    registry.observe_job(_job(), deleted=True)
    assert tracked.job is None and tracked.pods == []


def test_cohort_study_names_the_peers_whatever_the_jobs_own_label() -> None:
    registry = Registry()
    for name, study in (("a", "sweep-1"), ("b", "sweep-2"), ("c", "sweep-2")):
        study_member(registry, name, study, [1.0])
    me = registry.get(("ns", "a"))
    assert me is not None
    assert [peer.job for peer in registry.cohort(me)] == []
    assert sorted(peer.job for peer in registry.cohort(me, "sweep-2")) == ["b", "c"]
