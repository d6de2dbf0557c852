"""Whether this process may act now: with leader election, only while it holds the Lease.

A leader that was stalled (SIGSTOP, CPU starvation, a long GC) past its renew deadline may wake up with
work in flight before its renewal task notices the loss and exits the process. Every write to the
apiserver (`stopline.kube`) and every POST /stop (`stopline.stopping`) asks `acting()` first, so such a
leader does nothing in between: the fencing client-go leaves to the Lease's timings. Without leader
election (one replica) the process always acts.
"""

from __future__ import annotations

from collections.abc import Callable

_check: Callable[[], bool] = lambda: True  # noqa: E731 - one replica: always acting


class Fenced(RuntimeError):
    """This process no longer holds the Lease: it must not write or signal."""


def guard(check: Callable[[], bool]) -> None:
    """From now on this process acts only while `check()` (the elector's is_leader) is true."""
    global _check
    _check = check


def acting() -> bool:
    return _check()


def ensure_acting(what: str) -> None:
    """Raise Fenced instead of doing `what` when this process no longer leads."""
    if not _check():
        raise Fenced(f"not the leader any more: {what} not done")
