"""What a restarted operator remembers, and how the registry files and trusts pods and Jobs. Pure code."""

from __future__ import annotations

import json
import math

from stopline.pointer import checkpoint_status
from stopline.progress import JobMemory, gpu_seconds_saved, shown_metrics
from stopline.registry import MAX_DELETED_PODS, Registry, pod_view, saved_checkpoint
from stopline.stopping import Conclude, Signal, StopState, StopView, next_step
from unit.specs import spec

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


def _at(seconds: int) -> str:
    """An RFC 3339 time, `seconds` after a fixed instant, to the second as the apiserver writes it."""
    return f"2026-12-07T10:{seconds // 60:02d}:{seconds % 60:02d}Z"


def _admitted_pod(name: str, created: int, **status: object) -> dict[str, object]:
    pod = _pod(name, "a", "0", JOB_UID, **status)
    pod["metadata"]["creationTimestamp"] = _at(created)  # type: ignore[index]
    return pod


def _started_job(started: int | None, suspend: bool = False) -> dict[str, object]:
    job = _job(suspend=suspend)
    job["status"] = {"startTime": _at(started)} if started is not None else {}
    return job


def _exited(code: int, message: str = "") -> list[dict[str, object]]:
    return [{"name": "trainer", "state": {"terminated": {"exitCode": code, "message": message}}}]


def test_after_a_readmission_only_the_new_admissions_pods_speak_for_the_job() -> None:
    """Kueue preempts the Job and admits it again: same Job, same uid, new pods. The pod the preemption
    ended (exit 0, with its pointer) is not the job's any more: a stop now signals the new rank 0, and a
    crash of the new rank 0 fails the stop however well the earlier admission saved."""
    registry = Registry()
    tracked = registry.observe_training_job(
        {"metadata": {"name": "a", "namespace": "ns", "uid": "1", "generation": 1}, "spec": RAW_SPEC}
    )
    registry.observe_job(_started_job(0))
    registry.observe_pod(_admitted_pod("a-old", 1, phase="Running", podIP="127.0.0.2"))
    registry.observe_job(_started_job(None, suspend=True))  # preempted: the Job controller clears startTime
    preempted = _admitted_pod("a-old", 1, phase="Failed", containerStatuses=_exited(0, MANIFEST))
    registry.observe_pod(preempted, deleted=True)
    assert [pod.name for pod in tracked.pods] == ["a-old"]  # its checkpoint is the preemption's

    registry.observe_job(_started_job(60))  # admitted again
    registry.observe_pod(_admitted_pod("a-new", 61, phase="Running", podIP="127.0.0.3"))
    assert [pod.name for pod in tracked.pods] == ["a-new"]
    assert "a-old" not in tracked.filed_pods  # and forgotten: memory follows the admissions
    rank_zero = tracked.rank_zero()
    assert rank_zero is not None and rank_zero.name == "a-new"
    stop = StopView(False, 0.0, 30.0, 600.0, tracked.job, tracked.pods)
    assert isinstance(next_step(stop, now=1), Signal)  # not a Wait on the old pointer

    registry.observe_job(_started_job(None, suspend=True))  # the stop suspended it
    crashed = _admitted_pod("a-new", 61, phase="Failed", containerStatuses=_exited(1))
    registry.observe_pod(crashed, deleted=True)
    after = StopView(False, 0.0, 30.0, 600.0, tracked.job, tracked.pods, StopState(children_read=True))
    action = next_step(after, now=5)
    assert isinstance(action, Conclude), action
    assert (action.conclusion.phase, action.conclusion.reason) == ("Failed", "TrainerFailed")
    assert "code 1" in action.conclusion.message


def test_of_two_saved_checkpoints_of_rank_zero_the_newer_by_step_is_the_one_shown() -> None:
    later = json.dumps({"uri": "/c/e9.pt", "epoch": 9, "step": 900, "savedAt": "2026-12-07T10:00:09Z"})
    earlier = json.dumps({"uri": "/c/e5.pt", "epoch": 5, "step": 500, "savedAt": "2026-12-07T10:00:05Z"})
    for names in (("job-aaaaa", "job-zzzzz"), ("job-zzzzz", "job-aaaaa")):  # whatever the names' order
        pods = [
            pod_view(_pod(name, "job", "0", phase="Succeeded", containerStatuses=_exited(0, message)))
            for name, message in zip(names, (later, earlier), strict=True)
        ]
        found = saved_checkpoint(sorted(pods, key=lambda pod: pod.name))  # rank order, then name order
        assert found is not None and found[1]["epoch"] == 9


def test_pods_churned_under_a_jobs_name_keep_the_operators_memory_bounded() -> None:
    """Created and deleted 5,000 times under an existing job's name: impostors are dropped when they go,
    and of the Job's own deleted pods at most MAX_DELETED_PODS are kept."""
    registry = Registry()
    tracked = registry.observe_training_job(
        {"metadata": {"name": "a", "namespace": "ns", "uid": "1", "generation": 1}, "spec": RAW_SPEC}
    )
    registry.observe_job(_job())
    for index in range(2_500):
        for owner in (JOB_UID, "not-the-job"):
            pod = _pod(f"a-{owner}-{index}", "a", "0", owner=owner, phase="Running")
            registry.observe_pod(pod)
            registry.observe_pod(pod, deleted=True)
    assert len(tracked.filed_pods) == MAX_DELETED_PODS
    assert all(pod.controller_uid == JOB_UID for pod in tracked.filed_pods.values())


def test_a_pointer_whose_values_the_crd_would_refuse_is_no_checkpoint_or_loses_only_that_field() -> None:
    """A status patch with `epoch: "nine"` is refused by the apiserver, and a job whose conclusion can never
    be written stays Stopping: such values never reach status.checkpoint."""
    base: dict[str, object] = {"uri": "/c/e3.pt", "epoch": 3, "step": 300}
    wrong: list[dict[str, object]] = [{"epoch": "nine"}, {"step": 1e400}, {"step": -1}, {"epoch": True}]
    wrong += [{"uri": 7}, {"uri": "a\nb"}]
    for bad in wrong:
        assert checkpoint_status(json.dumps(base | bad)) is None, bad
    extras = {"bytes": "9", "sha256": "not hex", "savedAt": "yesterday"}
    assert checkpoint_status(json.dumps(base | extras)) == base
    good = {"bytes": 9, "sha256": "ab" * 32, "savedAt": "2026-12-07T10:00:00.123Z"}
    assert checkpoint_status(json.dumps(base | good)) == base | good
