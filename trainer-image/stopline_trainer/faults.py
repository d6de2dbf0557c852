"""Test-only fault injection: pause a chosen save midway so a test can SIGKILL or inspect it.

Armed by STOPLINE_FAULT_PAUSE_SAVE="N:DIR" (never set in production): during this process's N-th save,
once the weights are partly written, the saver creates DIR/paused and waits until DIR/resume exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

ENV = "STOPLINE_FAULT_PAUSE_SAVE"
MAX_PAUSE_S = 300.0  # a forgotten pause must not leave a process behind forever


def _noop() -> None:
    return None


def save_pause(save_number: int) -> Callable[[], None]:
    """The hook for this save: a no-op unless the env var arms exactly this save."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return _noop
    number, _, folder = spec.partition(":")
    if int(number) != save_number:
        return _noop
    return lambda: _pause(Path(folder))


def _pause(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "paused").touch()
    deadline = time.monotonic() + MAX_PAUSE_S
    while not (folder / "resume").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ENV}: nobody created {folder / 'resume'} within {MAX_PAUSE_S:.0f}s")
        time.sleep(0.05)
