"""The stop flag: HTTP /stop, SIGTERM/SIGINT and peer ranks all set it; the loop reads it between steps."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

MAX_REASON = 256
DEFAULT_REASON = "stop requested"
_CAUSE_TYPE = re.compile(r"[A-Za-z]{1,32}")
_CAUSE_CRITERION = re.compile(r"[A-Za-z0-9._/-]{1,63}")


def clean_cause(stop_type: object, criterion: object) -> dict[str, str] | None:
    """The operator's decision sent with POST /stop (its type and criterion), or None when it is not
    one: it goes back in the termination message, so an operator that restarted between sending the stop
    and recording it still learns why the trainer stopped."""
    well_formed = (
        isinstance(stop_type, str)
        and isinstance(criterion, str)
        and _CAUSE_TYPE.fullmatch(stop_type)
        and _CAUSE_CRITERION.fullmatch(criterion)
    )
    return {"type": str(stop_type), "criterion": str(criterion)} if well_formed else None


def clean_reason(reason: str) -> str:
    """One printable line of at most MAX_REASON characters.

    The reason is logged, kept in the manifest and shown in status: a newline or an escape sequence must
    not forge log lines, and a client must not choose its size.
    """
    cut = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "\u2026"
    line = "".join(c if c.isprintable() else " " for c in cut).strip()
    return line or DEFAULT_REASON


class StopFlag:
    """Set-once flag with the first reason kept, cleaned by clean_reason.

    No lock: request() runs inside signal handlers, which execute on the main thread between bytecodes
    and would deadlock on a lock the interrupted code holds. A race between two first requests only
    decides which reason wins.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reason = ""
        self._cause: dict[str, str] | None = None

    def request(self, reason: str, cause: dict[str, str] | None = None) -> bool:
        """Set the flag; True when this call was the first request. `cause`: the operator's decision."""
        first = not self._event.is_set()
        if first:
            self._reason, self._cause = clean_reason(reason), cause
        self._event.set()
        return first

    @property
    def cause(self) -> dict[str, str] | None:
        return self._cause

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return self._reason


def install_signal_handlers(
    flag: StopFlag, signums: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
) -> Callable[[], None]:
    """Make each signal a stop request and return a function that restores the previous handlers.

    The handler only sets the flag and never raises, so a second SIGTERM (or Ctrl-C) arriving while a
    checkpoint is being written cannot interrupt the write; only SIGKILL can, and saves survive that.
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        flag.request(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in signums}

    def restore() -> None:
        for s, old in previous.items():
            signal.signal(s, old)

    return restore
