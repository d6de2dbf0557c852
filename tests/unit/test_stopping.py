"""How a stop concludes from the pods as last seen, and what a restarted operator remembers. Pure code."""

from __future__ import annotations

import json
import math

from specs import spec

from stopline.metrics.exposition import TrainerReport
from stopline.progress import JobMemory, checkpoint_status, gpu_seconds_saved
from stopline.registry import PodView, Registry, pod_view
from stopline.stopping import conclude

RAW_SPEC = {
    "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]}},
    "objective": {"metric": "val_loss", "mode": "min"},
    "checkpoint": {"pvc": {"claimName": "ckpt"}},
}

MANIFEST = json.dumps({"uri": "s3://b/run/step-300.pt", "epoch": 3, "step": 300, "bytes": 9, "sha256": "ab"})
GRACE_S = 60.0


def pod(rank: int = 0, phase: str = "Running", exit_code: int | None = None, message: str = "") -> PodView:
    return PodView(f"p{rank}", rank, "127.0.0.9", phase, exit_code=exit_code, message=message)


def test_rank_zeros_manifest_concludes_stopped_with_the_checkpoint_even_while_other_ranks_exit() -> None:
    ended = conclude([pod(0, "Succeeded", 0, MANIFEST), pod(1)], stop_began=0, grace_period_s=GRACE_S, now=1)
    assert ended is not None and ended.phase == "Stopped"
    assert ended.checkpoint == {
        "uri": "s3://b/run/step-300.pt",
        "epoch": 3,
        "step": 300,
        "bytes": 9,
        "sha256": "ab",
    }


def test_running_pods_are_waited_for_until_the_grace_period_then_killed() -> None:
    assert conclude([pod()], stop_began=0, grace_period_s=GRACE_S, now=59) is None
    late = conclude([pod()], stop_began=0, grace_period_s=GRACE_S, now=60)
    assert late is not None and (late.phase, late.reason, late.escalate) == (
        "Failed",
        "GracePeriodExpired",
        True,
    )
    assert "the weights were not saved" in late.message


def test_a_rank_that_failed_while_stopping_fails_the_job_and_a_clean_exit_without_manifest_warns() -> None:
    failed = conclude([pod(0, "Failed", 137)], stop_began=0, grace_period_s=GRACE_S, now=1)
    assert failed is not None and (failed.phase, failed.reason) == ("Failed", "TrainerFailed")
    assert "137" in failed.message
    bare = conclude([pod(0, "Succeeded", 0, "not json")], stop_began=0, grace_period_s=GRACE_S, now=1)
    assert bare is not None and (bare.phase, bare.reason, bare.warning) == ("Stopped", "NoCheckpoint", True)


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
    assert not memory.record(job, TrainerReport(epoch=2, step=200, metrics={"val_loss": 0.4}))
    assert memory.record(job, TrainerReport(epoch=4, step=400, metrics={"val_loss": math.nan}))
    assert memory.curve == [0.5, 0.4, None, None]  # epoch 3 was never scraped; NaN is not a value
    assert memory.best == {"metric": "val_loss", "value": 0.4, "epoch": 2}


def test_gpu_seconds_saved_needs_max_epochs_and_a_measured_epoch() -> None:
    job = spec(maxEpochs=10)
    assert gpu_seconds_saved(job, epoch=4, epoch_seconds=30.0) == 6 * 30.0 * job.gpus
    assert gpu_seconds_saved(job, epoch=4, epoch_seconds=None) is None
    assert gpu_seconds_saved(spec(), epoch=4, epoch_seconds=30.0) is None


def _pod(name: str, job: str, index: str, **status: object) -> dict[str, object]:
    labels = {"stopline.dev/job": job, "batch.kubernetes.io/job-completion-index": index}
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels}, "status": status}


def test_a_deleted_pod_keeps_its_termination_message_and_rank_zero_is_the_one_scraped() -> None:
    registry = Registry()
    tracked = registry.observe_training_job(
        {"metadata": {"name": "a", "namespace": "ns", "uid": "1", "generation": 1}, "spec": RAW_SPEC}
    )
    terminated = {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": MANIFEST}}}
    registry.observe_pod(_pod("a-1", "a", "1", phase="Running", podIP="127.0.0.3"))
    registry.observe_pod(_pod("a-0", "a", "0", phase="Running", podIP="127.0.0.2"))
    rank_zero = tracked.rank_zero()
    assert rank_zero is not None and rank_zero.ip == "127.0.0.2"
    registry.observe_pod(
        _pod("a-0", "a", "0", phase="Succeeded", containerStatuses=[terminated]), deleted=True
    )
    assert tracked.rank_zero() is None
    assert tracked.pods["a-0"].message == MANIFEST and not tracked.pods["a-0"].active
    assert pod_view(_pod("x", "a", "7")).rank == 7


def test_the_cohort_is_the_other_jobs_of_the_study_in_the_namespace_with_their_curves() -> None:
    registry = Registry()

    def job(name: str, study: str, curve: list[float | None], phase: str = "Running") -> None:
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


def test_a_pod_terminating_after_sigterm_is_waited_for_its_manifest_not_signalled_again() -> None:
    """Suspending the Job marks the pods for deletion; the trainer is saving: no conclusion until it exits."""
    terminating = pod_view(
        {
            "metadata": {"name": "a-0", "namespace": "ns", "deletionTimestamp": "2026-11-23T12:00:00Z"},
            "status": {"phase": "Running", "podIP": "127.0.0.2"},
        }
    )
    assert terminating.active and not terminating.reachable
    assert conclude([terminating], stop_began=0, grace_period_s=GRACE_S, now=1) is None
