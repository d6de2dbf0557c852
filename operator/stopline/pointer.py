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
MAX_TAIL = 8  # the trainer's TAIL_EPOCHS
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


def last_values(termination_message: str) -> dict[int, float]:
    """The objective of the trainer's last epochs (`tail`: [[epoch, value], ...], at most MAX_TAIL), so
    the epochs of a job that ended between two reads are not lost from status.curve; malformed pairs and
    non-finite values are left out."""
    tail = (_pointer(termination_message) or {}).get("tail")
    found: dict[int, float] = {}
    for pair in tail[-MAX_TAIL:] if isinstance(tail, list) else []:
        if not isinstance(pair, list) or len(pair) != 2:
            continue
        epoch, value = pair
        if type(epoch) is int and 1 <= epoch <= MAX_EPOCH and type(value) in (int, float):
            number = float(value)
            if math.isfinite(number):
                found[epoch] = number
    return found


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
