"""The stop protocol of DESIGN.md, operator side: a pure state machine and the short driver that runs it.

`next_step(view, now)` looks at one Stopping (or cancelled) TrainingJob as last seen and says the one thing
to do next; `StopDriver` does it and asks again, until the answer is to wait or the stop concludes. The rules:

1. Cancel: read the Job and its pods, suspend the Job and delete its pods at once, then Cancelled (nothing
   is saved).
2. Rank 0 exited 0 with its checkpoint manifest: Stopped with status.checkpoint, once nothing of the Job
   can run again: every rank ended cleanly (the Job completes by itself), or the Job is suspended or
   finished (a rank that failed, or one still running past gracePeriod, gets the Job suspended).
3. Signal: POST /stop with the job's bearer token to every reachable trainer pod. A trainer still starting
   does not answer; it is asked again every RETRY_S until stopPolicy.ackTimeout. When none acknowledges
   (a trainer without stopline answers 404; the timeout passed; there are no pods at all), the Job is
   suspended, so the kubelet sends SIGTERM, which the trainer treats as a stop request too.
4. Conclude without a manifest only from the truth: the Job suspended or finished, and the Job and pods
   read from the apiserver by this process (a watch that has not delivered them yet is not "none"). Pods still
   running past gracePeriod (from stopReason.at) are deleted: Failed, "the weights were not saved".

Every step is safe to repeat: a second POST /stop is acknowledged and changes nothing, a second suspend
is a no-op, and the phase moves only from Stopping, so an operator restarted mid-stop signals again and
concludes once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from stopline import fence, kueue, monitoring
from stopline.kube import Kube
from stopline.lifecycle import Condition, StatusChange, checkpoint_place
from stopline.registry import JobView, PodView, Tracked, job_view, pod_view, saved_checkpoint
from stopline.status import StatusWriter
from stopline.verify import verify_checkpoint
from stopline.vocabulary import (
    CANCELLED,
    CANCELLED_REASON,
    CHECKPOINT_SAVED,
    FAILED,
    FINISHED,
    GRACE_PERIOD_EXPIRED,
    JOB_LABEL,
    NO_CHECKPOINT,
    PENDING,
    RUNNING_CONDITION,
    STOP_NOT_ACKNOWLEDGED,
    STOP_PATH_ENDPOINT,
    STOP_PATH_KILLED,
    STOP_PATH_SUSPEND,
    STOPPED,
    STOPPING,
    TERMINAL_PHASES,
    TRAINER_FAILED,
)

log = logging.getLogger(__name__)

ACCEPTED = 202
RETRY_S = 1.0  # how often a trainer that did not answer yet is asked again
MAX_STEPS = 8  # steps one drive may take; a stop needs at most 5 (signal, suspend, read, kill, conclude)


@dataclass(frozen=True)
class Signalled:
    """What one round of POST /stop got: acknowledgements, and pods that did not answer at all (the
    trainer may still be starting); the others answered with a refusal (no stopline endpoint)."""

    acknowledged: int
    unreachable: int
    at: float


@dataclass
class StopState:
    """What this process did for one stop; a restarted operator starts from nothing and repeats safely."""

    signalled: Signalled | None = None
    suspended: bool = False  # our suspend of this Job went through, or it had nothing left to suspend
    killed: bool = False
    children_read: bool = False  # the Job and pods were read from the apiserver, not only from watch events


@dataclass(frozen=True)
class StopView:
    """One stop as last seen: the TrainingJob's wishes, its Job and pods, and what was done so far."""

    cancel: bool
    began_at: float  # stopReason.at
    ack_timeout_s: float
    grace_period_s: float
    job: JobView | None  # None: none seen (never created, gone, or its watch event not here yet)
    pods: Sequence[PodView]
    state: StopState = field(default_factory=StopState)
    kept: Mapping[str, Any] | None = None  # status.checkpoint: saved before a queue preempted the job

    @property
    def job_at_rest(self) -> bool:
        """The Job starts no pod again: suspended (by us or anyone), finished, or read and not there."""
        job = self.job
        if job is None:
            return self.state.children_read or self.state.suspended
        return job.suspended or job.finished or self.state.suspended

    @property
    def active(self) -> list[PodView]:
        return [pod for pod in self.pods if pod.active]


@dataclass(frozen=True)
class Conclusion:
    """How a stop ended: the phase, the Finished condition's reason and message, the checkpoint if any."""

    phase: str
    reason: str
    message: str
    checkpoint: dict[str, Any] | None = None
    warning: bool = False
    path: str | None = None  # status.stopPath: how the trainers were asked


@dataclass(frozen=True)
class Signal:
    """POST /stop to every reachable trainer pod."""


@dataclass(frozen=True)
class Suspend:
    """spec.suspend on the Job: the kubelet sends SIGTERM, and no pod starts again."""

    unacknowledged: bool  # nobody took the stop: tell the user why their trainers get SIGTERM


@dataclass(frozen=True)
class ReadChildren:
    """Read the Job and its pods from the apiserver: "none seen" is not "none" until this process asked
    (after a restart the watch may not have delivered them yet)."""


@dataclass(frozen=True)
class Kill:
    """Suspend the Job and delete its pods without grace (cancel, or the grace period is over)."""


@dataclass(frozen=True)
class Wait:
    """Nothing to do until a pod changes or the next poll."""


@dataclass(frozen=True)
class Conclude:
    conclusion: Conclusion


Action = Signal | Suspend | ReadChildren | Kill | Wait | Conclude


def next_step(view: StopView, now: float) -> Action:
    """The one thing to do next for this stop, as of `now`. Pure: the driver does it and asks again."""
    state = view.state
    if view.cancel:
        if not state.children_read:
            return ReadChildren()  # after a restart the watch may not have shown the pods to delete yet
        if not state.killed:
            return Kill()
        return Conclude(Conclusion(CANCELLED, CANCELLED_REASON, "cancelled; nothing was saved"))
    saved = _saved_checkpoint(view.pods, view.began_at)
    if saved is not None:
        if view.job_at_rest:
            return Conclude(saved)
        if view.active and now - view.began_at < view.grace_period_s:
            return Wait()  # the other ranks stopped at the same step and are exiting (or saving shards)
        if view.active or any(pod.exit_code not in (None, 0) for pod in view.pods):
            return Suspend(unacknowledged=False)  # a failed rank would be started again by the Job
        return Conclude(saved)  # every rank exited 0: the Job completes by itself
    if state.killed:  # even when the deleted pods are already gone from the view: they never saved
        message = (
            f"the trainer did not exit within gracePeriod ({view.grace_period_s:g}s) after the stop signal; "
            f"its pods were deleted and the weights were not saved at the stop{_last_saved(view.kept)}"
        )
        return Conclude(Conclusion(FAILED, GRACE_PERIOD_EXPIRED, message, warning=True))
    if view.active and now - view.began_at >= view.grace_period_s:
        return Kill()  # gracePeriod bounds the whole stop, asking included: a frozen trainer never answers
    if state.signalled is None or _ask_again(view, now):
        if any(pod.reachable for pod in view.pods):
            if state.signalled is None or now - state.signalled.at >= RETRY_S:
                return Signal()
            return Wait()
        if not view.pods and not state.children_read:
            return ReadChildren()
        if view.active and now - view.began_at < view.ack_timeout_s:
            return Wait()  # pods that are not serving yet: a SIGTERM before the trainer handles it kills it
    if not view.job_at_rest and (state.signalled is None or state.signalled.acknowledged == 0):
        return Suspend(unacknowledged=True)
    if view.active:
        return Wait()
    if not state.children_read:
        return ReadChildren()
    if not view.job_at_rest:
        return Suspend(unacknowledged=False)
    failed = sorted({pod.exit_code for pod in view.pods if pod.exit_code not in (None, 0)}, key=str)
    if failed:
        message = f"a rank exited with code {failed[0]} while stopping; the weights were not saved"
        return Conclude(Conclusion(FAILED, TRAINER_FAILED, message, warning=True))
    if view.kept is not None and not view.pods:
        return Conclude(_kept_checkpoint(view.kept))
    message = (
        "the trainer pods ended without reporting a checkpoint (no manifest in rank 0's termination message)"
        if view.pods
        else "no trainer pod ran; the Job was suspended before any started"
    )
    return Conclude(Conclusion(STOPPED, NO_CHECKPOINT, message, warning=True))


def _last_saved(kept: Mapping[str, Any] | None) -> str:
    """Where the last weights the trainer saved before the stop are (status.checkpoint), if it saved any."""
    if kept is None:
        return ""
    return f"; the last weights saved before it are at {checkpoint_place(kept)} (status.checkpoint)"


def _ask_again(view: StopView, now: float) -> bool:
    """Nobody acknowledged and some pod did not answer at all, within ackTimeout: it may be starting."""
    signalled = view.state.signalled
    return (
        signalled is not None
        and signalled.acknowledged == 0
        and signalled.unreachable > 0
        and now - view.began_at < view.ack_timeout_s
    )


def _saved_checkpoint(pods: Sequence[PodView], began_at: float) -> Conclusion | None:
    saved = saved_checkpoint(pods, since=began_at)
    if saved is None:
        return None
    checkpoint = saved[1]
    message = f"weights saved at {checkpoint_place(checkpoint)}"
    return Conclusion(STOPPED, CHECKPOINT_SAVED, message, checkpoint=checkpoint)


def _kept_checkpoint(kept: Mapping[str, Any]) -> Conclusion:
    """No pod runs (a queue holds the job, or a failed rank restarts it): the last weights it saved."""
    message = f"stopped while no pod ran; the last weights saved are at {checkpoint_place(kept)}"
    return Conclusion(STOPPED, CHECKPOINT_SAVED, message, checkpoint=dict(kept))


def stop_path(state: StopState) -> str | None:
    """How this stop asked the trainers: POST /stop that one acknowledged, else the workload's suspend
    (SIGTERM from the kubelet); None when this process asked nobody (the trainers had already stopped)."""
    if state.signalled is not None and state.signalled.acknowledged:
        return STOP_PATH_ENDPOINT
    if state.killed:
        return STOP_PATH_KILLED
    return STOP_PATH_SUSPEND if state.suspended else None


def conclusion_change(conclusion: Conclusion) -> StatusChange:
    """The status a conclusion writes: the phase, Running false, Finished with the reason, the checkpoint,
    and the path the stop took (status.stopPath)."""
    fields: dict[str, Any] = {"checkpoint": conclusion.checkpoint} if conclusion.checkpoint else {}
    if conclusion.path is not None:
        fields["stopPath"] = conclusion.path
    ended = "the pods were deleted" if conclusion.phase == CANCELLED else "the stop ended"
    return StatusChange(
        fields=fields,
        conditions=(
            Condition(RUNNING_CONDITION, False, conclusion.reason, ended),
            Condition(FINISHED, True, conclusion.reason, conclusion.message),
        ),
        phase=conclusion.phase,
    )


async def post_stop(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    reason: str,
    timeout_s: float,
    cause: Mapping[str, str] | None = None,
) -> bool | None:
    """One POST /stop: True when the trainer acknowledged it (HTTP 202), False when it answered anything
    else, None when nothing answered (connection refused, timeout). `cause` (the decision's type and
    criterion) comes back in the trainer's termination message, so a restart cannot lose why it stopped."""
    try:
        async with session.post(
            url,
            data=json.dumps({"reason": reason, **(cause or {})}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as response:
            return response.status == ACCEPTED
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def signal(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    token: str | None,
    reason: str,
    timeout_s: float,
    now: float,
    cause: Mapping[str, str] | None = None,
) -> Signalled:
    """POST /stop to every URL at once. Without a token nobody can be asked (all refused)."""
    if not token:
        return Signalled(0, 0, now)
    fence.ensure_acting("POST /stop")
    answers = await asyncio.gather(
        *(post_stop(session, url, token, reason, timeout_s, cause) for url in urls)
    )
    return Signalled(sum(1 for a in answers if a), sum(1 for a in answers if a is None), now)


TokenSource = Callable[[Tracked], Any]  # async: the job's stop token, or None
TargetReader = Callable[[Tracked], Awaitable[object]]  # read a target, its Jobs and pods, and file them
UrlOf = Callable[[PodView, int], str | None]  # the /stop URL of a pod on a port; None: no usable address


class StopDriver:
    """Runs the state machine's actions for every stop of this process, and keeps each stop's state."""

    def __init__(
        self,
        kube: Kube,
        session: aiohttp.ClientSession,
        writer: StatusWriter,
        clock: Callable[[], float],
        token: TokenSource,
        stop_url: UrlOf,
        post_timeout_s: float,
        read_target: TargetReader,
    ) -> None:
        self.kube, self.session, self.writer, self.clock = kube, session, writer, clock
        self._token, self._stop_url, self._post_timeout_s = token, stop_url, post_timeout_s
        self._read_target = read_target
        self._states: dict[str, StopState] = {}  # by TrainingJob uid

    def forget(self, uids: set[str]) -> None:
        """Drop the state of stops whose TrainingJob is no longer watched."""
        for uid in set(self._states) - uids:
            del self._states[uid]

    def view(self, tracked: Tracked, began_at: float, cancel: bool = False) -> StopView:
        spec = tracked.spec
        assert spec is not None
        return StopView(
            cancel=cancel,
            began_at=began_at,
            ack_timeout_s=spec.stop_policy.ack_timeout.seconds,
            grace_period_s=spec.stop_policy.grace_period.seconds,
            job=tracked.job,
            pods=tracked.pods,
            state=self._states.setdefault(tracked.uid, StopState()),
            kept=kept if isinstance(kept := tracked.status.get("checkpoint"), Mapping) else None,
        )

    async def signal_first(self, tracked: Tracked, reason: str, cause: Mapping[str, str]) -> None:
        """POST /stop before the Stopping write: the trainers stop a status write sooner. Recorded as the
        stop's first signal, so the drive that follows does not ask again."""
        view = self.view(tracked, self.clock())
        if any(pod.reachable for pod in view.pods):
            await self._act(tracked, view, Signal(), reason, cause)

    async def drive(
        self,
        tracked: Tracked,
        began_at: float,
        reason: str,
        cause: Mapping[str, str] | None = None,
        cancel: StatusChange | None = None,
    ) -> Conclusion | None:
        """Take steps until the stop waits or concludes; the conclusion when this call wrote it.

        `cause`: the decision's type and criterion, sent with POST /stop; `cancel`: this is a cancel, and
        what its Cancelled write carries besides the conclusion.
        """
        for _ in range(MAX_STEPS):
            view = self.view(tracked, began_at, cancel is not None)
            action = next_step(view, self.clock())
            if isinstance(action, Wait):
                return None
            if isinstance(action, Conclude):
                conclusion = replace(action.conclusion, path=stop_path(view.state))
                if cancel is not None:
                    conclusion = replace(conclusion, message=f"cancelled: {reason}; nothing was saved")
                return await self._conclude(tracked, conclusion, cancel)
            await self._act(tracked, view, action, reason, cause)
        return None

    async def _act(
        self,
        tracked: Tracked,
        view: StopView,
        action: Action,
        reason: str,
        cause: Mapping[str, str] | None = None,
    ) -> None:
        state, (namespace, name) = view.state, tracked.key
        if isinstance(action, Signal):
            spec = tracked.spec
            assert spec is not None
            port = spec.metrics.port
            urls = [url for pod in view.pods if pod.reachable and (url := self._stop_url(pod, port))]
            timeout = min(view.ack_timeout_s, self._post_timeout_s)
            token = await self._token(tracked)
            state.signalled = await signal(self.session, urls, token, reason, timeout, self.clock(), cause)
        elif isinstance(action, ReadChildren):
            if tracked.target is not None:
                await self._read_target(tracked)
            else:
                await self._read_job(tracked)
                selector = f"{JOB_LABEL}={name}"
                tracked.filed_pods.update(_listed(await self.kube.list_pods(namespace, selector)))
            state.children_read = True
        elif isinstance(action, Suspend | Kill):
            await self._suspend(tracked, view)
            if isinstance(action, Suspend) and action.unacknowledged:
                what = view.job.describe() if view.job is not None else "the Job"
                message = (
                    f"no trainer pod acknowledged POST /stop; suspended {what}, so each pod gets SIGTERM"
                    if view.pods
                    else f"no trainer pod is running; suspended {what}, so none starts"
                )
                await self.kube.post_event(tracked.training_job, STOP_NOT_ACKNOWLEDGED, message, True)
            if isinstance(action, Kill):
                for pod in view.active:
                    await self.kube.delete_pod(namespace, pod.name, pod.uid, grace_period_s=0)
                state.killed = True

    async def _read_job(self, tracked: Tracked) -> None:
        """File the Job of the TrainingJob's name as the apiserver has it now; Tracked.job trusts it only
        when the TrainingJob controls it, so a foreign Job of that name is never touched."""
        found = await self.kube.read_job(*tracked.key)
        if found is not None:
            tracked.file_job(job_view(found))

    async def _suspend(self, tracked: Tracked, view: StopView) -> None:
        """Suspend the TrainingJob's own Job, or its target (by uid); one not seen yet is read first."""
        if view.job is None:
            await (self._read_target(tracked) if tracked.target is not None else self._read_job(tracked))
        job = tracked.job
        if job is not None:
            await kueue.hold(self.kube, tracked.key[0], job)
        view.state.suspended = True

    async def _conclude(
        self, tracked: Tracked, conclusion: Conclusion, cancel: StatusChange | None
    ) -> Conclusion | None:
        """Write the conclusion once: from Stopping (or, for a cancel, from any phase not final yet),
        judged on a fresh read, since the watched body may not show Stopping yet."""
        change = conclusion_change(conclusion)
        verified = None
        if conclusion.checkpoint and tracked.spec is not None:
            verified = await verify_checkpoint(self.kube, tracked.key[0], tracked.spec, conclusion.checkpoint)
        if verified is not None:
            change = StatusChange(change.fields, (*change.conditions, verified), change.phase)
        if cancel is not None:  # no weights: not even those saved before, which a run gone wrong made
            change = StatusChange(
                fields={**cancel.fields, **change.fields, "checkpoint": None},
                conditions=(*cancel.conditions, *change.conditions),
                phase=change.phase,
            )

        def compose(body: Mapping[str, Any]) -> StatusChange | None:
            phase = (body.get("status") or {}).get("phase") or PENDING
            allowed = phase not in TERMINAL_PHASES if cancel is not None else phase == STOPPING
            return change if allowed else None

        written = await self.writer.write(*tracked.key, compose)
        self._states.pop(tracked.uid, None)
        await kueue.release(self.kube, tracked)
        if written is None:
            return None
        monitoring.count_conclusion(tracked.key[0], conclusion.reason)
        await self.kube.post_event(
            written.training_job, conclusion.reason, conclusion.message, conclusion.warning
        )
        if verified is not None and not verified.status:
            await self.kube.post_event(written.training_job, verified.reason, verified.message, True)
        return conclusion


def every_rank_exited(pods: Sequence[PodView], replicas: int) -> bool:
    """Each rank's trainer exited and none runs: the Job (restartPolicy Never, backoffLimit 0) starts no
    pod again and completes or fails by itself. The kubelet reports a container's exit before it moves the
    pod to a terminal phase; suspended in between, the Job would have those pods deleted, logs and all."""
    exited = {pod.rank for pod in pods if pod.exit_code is not None}
    return len(exited) >= replicas and not any(pod.active for pod in pods)


def _listed(pods: Sequence[dict[str, Any]]) -> dict[str, PodView]:
    return {pod["metadata"]["name"]: pod_view(pod) for pod in pods}
