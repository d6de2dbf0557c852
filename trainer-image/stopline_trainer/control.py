"""The stop flag: HTTP /stop, SIGTERM/SIGINT and peer ranks all set it; the loop reads it between steps."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType

MAX_REASON = 256
DEFAULT_REASON = "stop requested"


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

    def request(self, reason: str) -> bool:
        """Set the flag; True when this call was the first request."""
        first = not self._event.is_set()
        if first:
            self._reason = clean_reason(reason)
        self._event.set()
        return first

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
