"""The stop protocol's rules, one by one, on the pure state machine with an injected clock."""

from __future__ import annotations

import json
from dataclasses import replace

from stopline.registry import JobView, PodView
from stopline.stopping import (
    Conclude,
    Kill,
    ReadChildren,
    Signal,
    Signalled,
    StopState,
    StopView,
    Suspend,
    Wait,
    next_step,
)

MANIFEST = json.dumps({"uri": "s3://b/run/step-300.pt", "epoch": 3, "step": 300, "bytes": 9, "sha256": "ab"})
ACK_S, GRACE_S = 30.0, 600.0
RUNNING_JOB = JobView("a", "job-uid", "tj-uid", suspended=False, finished=False)
SUSPENDED_JOB = replace(RUNNING_JOB, suspended=True)


def pod(rank: int = 0, phase: str = "Running", exit_code: int | None = None, message: str = "") -> PodView:
    ip = "127.0.0.9" if phase == "Running" else None
    return PodView(f"p{rank}", rank, ip, phase, uid=f"u{rank}", exit_code=exit_code, message=message)


def view(
    pods: list[PodView], job: JobView | None = RUNNING_JOB, cancel: bool = False, **state: object
) -> StopView:
    return StopView(cancel, 0.0, ACK_S, GRACE_S, job, pods, StopState(**state))  # type: ignore[arg-type]


def concluded(action: object) -> tuple[str, str]:
    assert isinstance(action, Conclude), action
    return action.conclusion.phase, action.conclusion.reason


def test_a_running_trainer_is_signalled_once_and_then_waited_for() -> None:
    assert isinstance(next_step(view([pod()]), now=1), Signal)
    acked = Signalled(acknowledged=1, unreachable=0, at=1)
    assert isinstance(next_step(view([pod()], signalled=acked), now=2), Wait)


def test_rank_zeros_manifest_concludes_stopped_with_the_checkpoint() -> None:
    saved = [pod(0, "Succeeded", 0, MANIFEST)]
    action = next_step(view(saved, job=SUSPENDED_JOB), now=1)
    assert concluded(action) == ("Stopped", "CheckpointSaved")
    assert isinstance(action, Conclude) and action.conclusion.checkpoint is not None
    assert action.conclusion.checkpoint["uri"] == "s3://b/run/step-300.pt"
    # every pod ended cleanly: the Job completes by itself, nothing to suspend
    assert concluded(next_step(view(saved), now=1)) == ("Stopped", "CheckpointSaved")


def test_a_saved_checkpoint_waits_for_the_other_ranks_and_never_leaves_a_pod_to_run_again() -> None:
    """A Stopped TrainingJob's pods never run again: the other ranks are waited for (they stopped at the
    same step), and a rank still running past gracePeriod, or one that failed, gets the Job suspended."""
    pods = [pod(0, "Succeeded", 0, MANIFEST), pod(1)]
    acked = Signalled(2, 0, 1)
    assert isinstance(next_step(view(pods, signalled=acked), now=2), Wait)
    late = next_step(view(pods, signalled=acked), now=GRACE_S)
    assert isinstance(late, Suspend) and not late.unacknowledged
    assert concluded(next_step(view(pods, suspended=True), now=GRACE_S)) == ("Stopped", "CheckpointSaved")
    failed = [pod(0, "Succeeded", 0, MANIFEST), pod(1, "Failed", 1)]
    assert isinstance(next_step(view(failed, signalled=acked), now=2), Suspend)


def test_a_stop_with_no_pod_seen_lists_the_pods_suspends_the_job_and_only_then_concludes() -> None:
    """A Pending job, a queued one, or an operator restarted before the pod events: no pod seen is not
    "no pod"; the Job is suspended so none starts, and the stop concludes without a checkpoint."""
    assert isinstance(next_step(view([]), now=0), ReadChildren)
    action = next_step(view([], children_read=True), now=0)
    assert isinstance(action, Suspend) and action.unacknowledged
    after = view([], children_read=True, suspended=True, signalled=None)
    assert concluded(next_step(after, now=0)) == ("Stopped", "NoCheckpoint")
    # no Job at all (never created): nothing to suspend, nothing ran
    assert concluded(next_step(view([], job=None, children_read=True), now=0)) == ("Stopped", "NoCheckpoint")


def test_a_job_not_seen_yet_is_read_before_it_counts_as_absent() -> None:
    """After a restart the Job's watch event may come late: its pods are not trusted until the Job is
    known, so the machine reads the Job and pods first; never Stopped/NoCheckpoint from "nothing seen"."""
    acked = Signalled(1, 0, 0)
    assert isinstance(next_step(view([], job=None, signalled=acked), now=5), ReadChildren)
    saved = [pod(0, "Succeeded", 0, MANIFEST)]  # what the read finds
    assert concluded(next_step(view(saved, job=None, children_read=True), now=5)) == (
        "Stopped",
        "CheckpointSaved",
    )


def test_a_pod_the_list_finds_running_is_signalled_not_concluded() -> None:
    assert isinstance(next_step(view([pod()], children_read=True), now=0), Signal)


def test_a_trainer_not_serving_yet_is_asked_again_until_ack_timeout_then_suspended() -> None:
    nobody = Signalled(acknowledged=0, unreachable=1, at=1)
    assert isinstance(next_step(view([pod()], signalled=nobody), now=1.5), Wait)  # asked 0.5 s ago
    assert isinstance(next_step(view([pod()], signalled=nobody), now=2.5), Signal)
    late = next_step(view([pod()], signalled=replace(nobody, at=ACK_S)), now=ACK_S + 1)
    assert isinstance(late, Suspend) and late.unacknowledged


def test_a_pod_still_starting_is_waited_for_until_ack_timeout() -> None:
    starting = [pod(0, "Pending")]
    assert isinstance(next_step(view(starting), now=ACK_S - 1), Wait)
    action = next_step(view(starting), now=ACK_S)
    assert isinstance(action, Suspend) and action.unacknowledged


def test_a_refusal_suspends_at_once() -> None:
    refused = Signalled(acknowledged=0, unreachable=0, at=1)  # 404: no stopline endpoint
    action = next_step(view([pod()], signalled=refused), now=1)
    assert isinstance(action, Suspend) and action.unacknowledged
    assert isinstance(next_step(view([pod()], signalled=refused, suspended=True), now=2), Wait)


def test_running_pods_are_waited_for_until_the_grace_period_then_killed_and_failed() -> None:
    acked = Signalled(1, 0, 0)
    assert isinstance(next_step(view([pod()], signalled=acked), now=GRACE_S - 1), Wait)
    assert isinstance(next_step(view([pod()], signalled=acked), now=GRACE_S), Kill)
    action = next_step(view([pod()], signalled=acked, killed=True), now=GRACE_S)
    assert concluded(action) == ("Failed", "GracePeriodExpired")
    assert isinstance(action, Conclude) and "the weights were not saved" in action.conclusion.message


def test_grace_period_bounds_the_stop_even_while_a_silent_trainer_is_still_being_asked() -> None:
    """A frozen trainer never answers POST /stop; with an ackTimeout longer than gracePeriod the asking
    must not keep its GPUs past gracePeriod. The kill names the last weights it saved before the stop."""
    silent = Signalled(acknowledged=0, unreachable=1, at=GRACE_S - 1)
    asking = StopView(False, 0.0, GRACE_S * 2, GRACE_S, RUNNING_JOB, [pod()], StopState(signalled=silent))
    assert isinstance(next_step(asking, now=GRACE_S - 0.5), Wait)
    assert isinstance(next_step(asking, now=GRACE_S), Kill)
    kept = {"uri": "/c/e2.pt", "epoch": 2, "step": 20}
    killed = replace(asking, state=StopState(signalled=silent, killed=True, suspended=True), kept=kept)
    action = next_step(killed, now=GRACE_S)
    assert concluded(action) == ("Failed", "GracePeriodExpired")
    assert (
        isinstance(action, Conclude)
        and "the last weights saved before it are at epoch 2" in action.conclusion.message
    )


def test_killed_pods_already_gone_from_the_view_still_fail_for_the_grace_period() -> None:
    """The pod's DELETED event can land while the driver awaits the delete: the pods are gone, but they
    were killed, not ended without a checkpoint (seen as "Stopped, no trainer pod ran" in a CI run)."""
    acked = Signalled(1, 0, 0)
    gone = view([], job=SUSPENDED_JOB, signalled=acked, killed=True, suspended=True, children_read=True)
    assert concluded(next_step(gone, now=GRACE_S)) == ("Failed", "GracePeriodExpired")


def test_pods_that_ended_without_a_manifest_conclude_only_once_listed_and_the_job_at_rest() -> None:
    ended = [pod(0, "Succeeded", 0, "not json")]
    acked = Signalled(1, 0, 0)
    assert isinstance(next_step(view(ended, signalled=acked), now=5), ReadChildren)
    action = next_step(view(ended, signalled=acked, children_read=True), now=5)
    assert isinstance(action, Suspend) and not action.unacknowledged
    final = view(ended, job=SUSPENDED_JOB, signalled=acked, children_read=True)
    assert concluded(next_step(final, now=5)) == ("Stopped", "NoCheckpoint")
    crashed = view([pod(0, "Failed", 137)], job=SUSPENDED_JOB, signalled=acked, children_read=True)
    action = next_step(crashed, now=5)
    assert concluded(action) == ("Failed", "TrainerFailed")
    assert isinstance(action, Conclude) and "137" in action.conclusion.message


def test_a_pod_terminating_after_sigterm_is_waited_for_its_manifest_not_signalled_again() -> None:
    terminating = replace(pod(), terminating=True)
    assert terminating.active and not terminating.reachable
    suspended = view([terminating], signalled=Signalled(0, 0, 0), suspended=True)
    assert isinstance(next_step(suspended, now=1), Wait)


def test_cancel_reads_the_pods_kills_then_concludes_cancelled_whatever_the_pods_do() -> None:
    # after a restart the watch may not have delivered the pods: "none seen" is read before it is believed,
    # else the cancel would suspend the Job, delete nothing and say Cancelled while the trainers save
    assert isinstance(next_step(view([], cancel=True), now=0), ReadChildren)
    assert isinstance(next_step(view([pod()], cancel=True, children_read=True), now=0), Kill)
    assert isinstance(next_step(view([], cancel=True, children_read=True), now=0), Kill)
    done = view([pod()], cancel=True, children_read=True, killed=True)
    assert concluded(next_step(done, now=0)) == ("Cancelled", "Cancelled")


def test_a_stop_while_a_queue_holds_the_job_ends_with_the_weights_saved_at_preemption() -> None:
    """Preempted: no pod runs, the Job is suspended by the queue; the stop needs no signal and ends
    Stopped with status.checkpoint (saved on SIGTERM at the preemption), or NoCheckpoint if never saved."""
    kept = json.loads(MANIFEST)
    held = view([], job=SUSPENDED_JOB)
    assert isinstance(next_step(held, now=1), ReadChildren)
    read = replace(held, state=StopState(children_read=True), kept=kept)
    action = next_step(read, now=1)
    assert concluded(action) == ("Stopped", "CheckpointSaved")
    assert isinstance(action, Conclude) and action.conclusion.checkpoint == kept
    assert "no pod ran; the last weights saved are at epoch 3" in action.conclusion.message
    never_ran = replace(held, state=StopState(children_read=True))
    assert concluded(next_step(never_ran, now=1)) == ("Stopped", "NoCheckpoint")


def test_rank_zero_that_saved_since_the_stop_began_counts_whatever_its_exit_code() -> None:
    """torchrun exits 1 after its workers saved on the suspend's SIGTERM: the weights saved since the stop
    began are the stop's; a pointer from before it, on a failed exit, is not (the rank crashed)."""
    after = json.loads(MANIFEST) | {"savedAt": "1970-01-01T00:00:05Z"}  # the stop began at 0.0
    before = after | {"savedAt": "1969-12-31T23:59:00Z"}
    torchrun = [pod(0, "Failed", 1, json.dumps(after)), pod(1, "Failed", 1)]
    assert concluded(next_step(view(torchrun, job=SUSPENDED_JOB, suspended=True), now=10)) == (
        "Stopped",
        "CheckpointSaved",
    )
    crashed = [pod(0, "Failed", 1, json.dumps(before)), pod(1, "Failed", 1)]
    assert concluded(
        next_step(view(crashed, job=SUSPENDED_JOB, suspended=True, children_read=True), now=10)
    ) == (
        "Failed",
        "TrainerFailed",
    )
