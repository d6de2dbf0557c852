"""Rank 0's termination message: the trainer's compact pointer to its last checkpoint. A total parser.

`{uri, epoch, step, bytes, sha256, savedAt}`, and `stop` (the operator's decision, type and criterion)
when the save followed a POST /stop. It is the trainer's text, read like any remote answer: anything
that is not a pointer is None, never an exception, and every value kept has the type and bounds the CRD
gives status.checkpoint, so the status patch that carries it is never refused (a refused patch would
leave the job Stopping or Running for good).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from stopline.criteria.decision import REASON_TYPES
from stopline.lifecycle import seconds

MAX_EPOCH = 10_000  # status.curve's length
MAX_TAIL = 8  # the trainer's TAIL_EPOCHS
CHECKPOINT_KEYS = ("uri", "epoch", "step", "bytes", "sha256", "savedAt")  # status.checkpoint's fields
MAX_COUNT = 2**53  # an epoch, step or size JSON numbers hold exactly
MAX_URI = 1024  # the trainer keeps the pointer under 1 KiB
_DIGITS = re.compile(r"[0-9]{1,16}")
_DIGEST = re.compile(r"[0-9a-fA-F]{1,128}")  # sha256 in hex; the CRD asks only for a string


def _pointer(termination_message: str) -> dict[str, Any] | None:
    try:
        pointer = json.loads(termination_message)
    except (ValueError, RecursionError):
        return None
    return pointer if isinstance(pointer, dict) else None


def _count(value: object) -> int | None:
    return value if type(value) is int and 0 <= value < MAX_COUNT else None


def _uri(value: object) -> str | None:
    """A location: printable text without control characters, at most MAX_URI characters."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URI or not value.isprintable():
        return None
    return value


def checkpoint_status(termination_message: str) -> dict[str, Any] | None:
    """status.checkpoint from rank 0's termination message; None if it is not a pointer: uri, epoch and
    step of the right types are needed; a bytes, sha256 or savedAt that is not one is left out."""
    pointer = _pointer(termination_message)
    return _checked(pointer) if pointer is not None else None


def _checked(pointer: Mapping[str, object]) -> dict[str, Any] | None:
    uri, epoch, step = _uri(pointer.get("uri")), _count(pointer.get("epoch")), _count(pointer.get("step"))
    if uri is None or epoch is None or step is None:
        return None
    checkpoint: dict[str, Any] = {"uri": uri, "epoch": epoch, "step": step}
    if (size := _count(pointer.get("bytes"))) is not None:
        checkpoint["bytes"] = size
    if isinstance(digest := pointer.get("sha256"), str) and _DIGEST.fullmatch(digest):
        checkpoint["sha256"] = digest
    if isinstance(saved_at := pointer.get("savedAt"), str) and len(saved_at) <= 64 and seconds(saved_at):
        checkpoint["savedAt"] = saved_at
    return checkpoint


def exported_checkpoint(labels: Mapping[str, str] | None) -> dict[str, Any] | None:
    """status.checkpoint from the labels of rank 0's stopline_checkpoint_info series (the last checkpoint
    it saved, as it runs), checked as the termination message is; None when they name no checkpoint."""
    if not labels:
        return None
    pointer: dict[str, object] = {"uri": labels.get("uri"), "sha256": labels.get("sha256")}
    pointer["savedAt"] = labels.get("saved_at")
    for key in ("epoch", "step", "bytes"):  # label values are text
        if _DIGITS.fullmatch(text := labels.get(key, "")):
            pointer[key] = int(text)
    return _checked(pointer)


def newer(checkpoint: Mapping[str, Any], than: Mapping[str, Any] | None) -> bool:
    """`checkpoint` is past `than` (status.checkpoint as shown; None or without a step: any is newer)."""
    step, shown = checkpoint.get("step"), (than or {}).get("step")
    return not isinstance(shown, int) or (isinstance(step, int) and step > shown)


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
