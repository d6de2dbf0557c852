"""Percentiles with numpy's default ("linear") method, in pure Python so the operator needs no numpy."""

from __future__ import annotations

import math
from collections.abc import Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) of values, bit-for-bit what `numpy.percentile(values, q)` returns.

    numpy's linear method: virtual index (n - 1) * q / 100 between two order statistics, interpolated with
    numpy's `_lerp`, which computes from the upper neighbour when the fraction is >= 0.5.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    index = (len(ordered) - 1) * (q / 100)
    lower = math.floor(index)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = index - lower
    low, high = ordered[lower], ordered[upper]
    difference = high - low
    if fraction >= 0.5:
        return high - difference * (1 - fraction)
    return low + difference * fraction
