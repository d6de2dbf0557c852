"""The epochs the operator missed between two reads, from the trainer's window (GET /epochs?after=N).

A read every spec.metrics.interval sees only the latest epoch; epochs shorter than that would reach the
criteria as gaps, and patience would count reads. The trainer keeps its recent epochs; when a read finds
the epoch jumped, the operator asks for the ones in between, so every epoch reaches the engine once.
The answer is hostile input like any other: read whole under a cap, parsed by a total parser.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import aiohttp

from stopline.metrics.exposition import MAX_COUNT
from stopline.metrics.http import SCRAPE_MAX_BYTES, FetchError, fetch_ok, message

MAX_PAGES = 8  # answers of up to 256 epochs each: 2,048 missed epochs at most per read
_NON_FINITE = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}

Epochs = dict[int, dict[str, float]]


class EpochsError(RuntimeError):
    """The trainer's window could not be read; the message names the URL and why."""


def parse_epochs(body: bytes, after: int) -> tuple[Epochs, int | None]:
    """The well-formed epoch records after `after` ({epoch: {metric: value}}) and the oldest epoch the
    window still holds; a record that is not one is skipped, an answer that is not one is an EpochsError."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise EpochsError("not JSON") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("epochs"), list):
        raise EpochsError('not an epochs window: no "epochs" list')
    oldest = document.get("oldest")
    found: Epochs = {}
    for record in document["epochs"]:
        if not isinstance(record, Mapping):
            continue
        epoch, metrics = record.get("epoch"), record.get("metrics")
        if type(epoch) is not int or not after < epoch < MAX_COUNT or not isinstance(metrics, Mapping):
            continue
        values = ((name, _value(raw)) for name, raw in metrics.items() if isinstance(name, str))
        found[epoch] = {name: number for name, number in values if number is not None}
    return found, oldest if type(oldest) is int else None


def _value(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    return _NON_FINITE.get(raw) if isinstance(raw, str) else None


async def missed_epochs(
    session: aiohttp.ClientSession, epochs_url: str, after: int, before: int, timeout_s: float
) -> Epochs:
    """The epochs after `after` and before `before` from the window at `epochs_url` (the pod's /epochs),
    page by page; raises EpochsError when it cannot be read or no longer holds the oldest of them."""
    found: Epochs = {}
    position = after
    for _ in range(MAX_PAGES):
        url = f"{epochs_url}?after={position}"
        try:
            body = await fetch_ok(session, url, limit=SCRAPE_MAX_BYTES, timeout_s=timeout_s)
        except FetchError as error:
            raise EpochsError(str(error)) from None
        try:
            page, oldest = parse_epochs(body, position)
        except EpochsError as error:
            raise EpochsError(message(f"GET {url}", str(error))) from None
        if oldest is not None and oldest > after + 1 and not found:
            raise EpochsError(message(f"GET {url}", f"the trainer's window starts at epoch {oldest}"))
        found |= {epoch: values for epoch, values in page.items() if epoch < before}
        if not page or max(page) >= before - 1:
            break
        position = max(page)
    return found
