"""Our pure-Python percentile is numpy's default (linear) percentile, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stopline.criteria.percentile import percentile

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=400, deadline=None)
@given(st.lists(finite, min_size=1, max_size=30), st.floats(min_value=0, max_value=100))
def test_equals_numpy_percentile(values: list[float], q: float) -> None:
    assert percentile(values, q) == float(np.percentile(np.array(values, dtype=float), q))


def test_median_of_even_count_interpolates() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5


def test_refuses_empty_input_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)
