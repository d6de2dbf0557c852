"""The stop protocol of DESIGN.md, operator side: signal every rank, then conclude from how the pods ended.

1. Signal: POST /stop with the job's bearer token to every running trainer pod. When no pod acknowledges
   (a trainer without stopline answers 404; one still starting does not answer, and is asked again until
   stopPolicy.ackTimeout), the caller suspends the Job, so the kubelet sends SIGTERM, which the trainer
   treats as a stop request too.
2. Conclude (`conclude`, pure): rank 0's termination message is the checkpoint manifest -> Stopped with
   status.checkpoint. Pods gone without one -> Stopped without a checkpoint (exit 0) or Failed (a rank
   exited non-zero). Still running when gracePeriod (counted from stopReason.at) ends -> escalate: delete
   the pods, Failed, with a message that says the weights were not saved.

Every step is safe to repeat: a second POST /stop is acknowledged and changes nothing, so an operator
restarted mid-stop signals again and concludes once (the phase moves only from Stopping).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from stopline.lifecycle import FAILED, STOPPED
from stopline.progress import checkpoint_status
from stopline.registry import PodView

ACCEPTED = 202


@dataclass(frozen=True)
class Conclusion:
    """How a stop ended: the phase, the Finished condition's reason and message, what to patch."""

    phase: str
    reason: str
    message: str
    checkpoint: dict[str, Any] | None = None
    escalate: bool = False  # delete the pods first (grace period over)
    warning: bool = False


@dataclass(frozen=True)
class Signalled:
    """What one round of POST /stop got: acknowledgements, and pods not reached at all (no endpoint yet:
    the trainer may still be starting); the others answered with a refusal (no stopline endpoint)."""

    acknowledged: int
    unreachable: int


async def post_stop(
    session: aiohttp.ClientSession, url: str, token: str, reason: str, timeout_s: float
) -> bool | None:
    """One POST /stop: True when the trainer acknowledged it (HTTP 202), False when it answered anything
    else, None when nothing answered (connection refused, timeout)."""
    try:
        async with session.post(
            url,
            data=json.dumps({"reason": reason}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            return response.status == ACCEPTED
    except (aiohttp.ClientError, TimeoutError):
        return None


async def signal(
    session: aiohttp.ClientSession,
    pods: Sequence[PodView],
    port: int,
    token: str | None,
    reason: str,
    timeout_s: float,
) -> Signalled:
    """POST /stop to every reachable pod at once. Without a token nobody can be asked (all refused); with
    no reachable pod yet, the round counts as unreachable."""
    if not token:
        return Signalled(0, 0)
    urls = [f"http://{pod.ip}:{port}/stop" for pod in pods if pod.reachable]
    if not urls:
        return Signalled(0, 1)
    answers = await asyncio.gather(*(post_stop(session, url, token, reason, timeout_s) for url in urls))
    return Signalled(sum(1 for a in answers if a), sum(1 for a in answers if a is None))


def conclude(
    pods: Sequence[PodView], stop_began: float, grace_period_s: float, now: float
) -> Conclusion | None:
    """How the stop ended as of `now`, from the pods as last seen; None while it is still under way."""
    for pod in pods:
        if pod.rank == 0 and pod.exit_code == 0 and (checkpoint := checkpoint_status(pod.message)):
            where = f"epoch {checkpoint['epoch']}, step {checkpoint['step']}"
            message = f"weights saved at {where}: {checkpoint['uri']}"
            return Conclusion(STOPPED, "CheckpointSaved", message, checkpoint=checkpoint)
    if any(pod.active for pod in pods):
        if now - stop_began < grace_period_s:
            return None
        message = (
            f"the trainer did not exit within gracePeriod ({grace_period_s:g}s) after the stop signal; "
            "its pods were deleted and the weights were not saved"
        )
        return Conclusion(FAILED, "GracePeriodExpired", message, escalate=True, warning=True)
    failed = sorted({pod.exit_code for pod in pods if pod.exit_code not in (None, 0)}, key=str)
    if failed:
        message = f"a rank exited with code {failed[0]} while stopping; the weights were not saved"
        return Conclusion(FAILED, "TrainerFailed", message, warning=True)
    message = (
        "the trainer pods ended without reporting a checkpoint (no manifest in rank 0's termination message)"
    )
    return Conclusion(STOPPED, "NoCheckpoint", message, warning=True)
