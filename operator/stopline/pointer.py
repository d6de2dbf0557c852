"""Rank 0's termination message: the trainer's compact pointer to its last checkpoint. A total parser.

`{uri, epoch, step, bytes, sha256, savedAt}`, and `stop` (the operator's decision, type and criterion)
when the save followed a POST /stop. It is the trainer's text, read like any remote answer: anything
that is not a pointer is None, never an exception.
"""

from __future__ import annotations

import json
import math
from typing import Any

from stopline.criteria.decision import REASON_TYPES

MAX_EPOCH = 10_000  # status.curve's length
CHECKPOINT_KEYS = ("uri", "epoch", "step", "bytes", "sha256", "savedAt")  # status.checkpoint's fields


def _pointer(termination_message: str) -> dict[str, Any] | None:
    try:
        pointer = json.loads(termination_message)
    except (ValueError, RecursionError):
        return None
    return pointer if isinstance(pointer, dict) else None


def checkpoint_status(termination_message: str) -> dict[str, Any] | None:
    """status.checkpoint from rank 0's termination message; None if it is not a pointer."""
    pointer = _pointer(termination_message)
    if pointer is None or not {"uri", "epoch", "step"} <= pointer.keys():
        return None
    return {key: pointer[key] for key in CHECKPOINT_KEYS if pointer.get(key) is not None}


def last_value(termination_message: str) -> tuple[int, float] | None:
    """The epoch of the pointer and the objective as reported in it (`value`), when the trainer gave it:
    the last epoch of a job that ended between two reads is not lost from status.curve."""
    pointer = _pointer(termination_message) or {}
    epoch, value = pointer.get("epoch"), pointer.get("value")
    if type(epoch) is not int or not 1 <= epoch <= MAX_EPOCH or type(value) not in (int, float):
        return None
    number = float(value)  # type: ignore[arg-type]  # an int or a float, checked above
    return (epoch, number) if math.isfinite(number) else None


def stop_cause(termination_message: str) -> dict[str, str] | None:
    """The operator's decision a trainer stopped on (`stop`: type and criterion, sent with POST /stop);
    None when it is not there or not one."""
    stop = (_pointer(termination_message) or {}).get("stop")
    if not isinstance(stop, dict):
        return None
    stop_type, criterion = stop.get("type"), stop.get("criterion")
    if stop_type not in REASON_TYPES or not isinstance(criterion, str) or not 0 < len(criterion) <= 63:
        return None
    return {"type": str(stop_type), "criterion": criterion}
