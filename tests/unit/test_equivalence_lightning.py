"""patience, threshold and divergence take Lightning EarlyStopping's decisions, checked with Lightning's code.

Curves are random walks on a grid of multiples of 1/8, so ties with min_delta and thresholds happen often
and every sum is exact in float32 (Lightning compares torch tensors).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from unit.specs import run_curve, spec

CURVES = 1500


def random_curve(rng: random.Random, non_finite: bool = False) -> list[float]:
    value = rng.randrange(0, 64) / 8
    curve = []
    for _ in range(rng.randrange(1, 40)):
        value += rng.choice([-0.5, -0.25, -0.125, 0.0, 0.0, 0.125, 0.25])
        curve.append(math.nan if non_finite and rng.random() < 0.03 else value)
    return curve


def lightning_stop_epoch(callback: EarlyStopping, curve: list[float]) -> int | None:
    for epoch, value in enumerate(curve, start=1):
        should_stop, _ = callback._evaluate_stopping_criteria(torch.tensor(value))
        if should_stop:
            return epoch
    return None


def our_stop_epoch(criterion: dict[str, object], curve: list[float], mode: str) -> int | None:
    decision = run_curve(spec(criterion, mode=mode), curve)[0].decision
    return decision.epoch if decision is not None else None


@pytest.mark.parametrize("mode", ["min", "max"])
def test_patience_stops_where_early_stopping_does(mode: str) -> None:
    rng, stops = random.Random(f"patience-{mode}"), 0
    for _ in range(CURVES):
        curve = random_curve(rng)
        patience, min_delta = rng.randrange(1, 6), rng.choice([0.0, 0.125, 0.25, 0.5])
        callback = EarlyStopping("m", min_delta=min_delta, patience=patience, mode=mode, check_finite=False)
        ours = our_stop_epoch(
            {"name": "p", "patience": {"patience": patience, "minDelta": min_delta}}, curve, mode
        )
        assert ours == lightning_stop_epoch(callback, curve), (curve, patience, min_delta)
        stops += ours is not None
    assert stops > CURVES // 4  # many stops were compared, not only "never stops"


@pytest.mark.parametrize("mode", ["min", "max"])
def test_threshold_stops_where_stopping_threshold_does(mode: str) -> None:
    rng, stops = random.Random(f"threshold-{mode}"), 0
    for _ in range(CURVES // 2):
        curve, target = random_curve(rng), rng.randrange(-16, 80) / 8
        callback = EarlyStopping(
            "m", patience=10**9, mode=mode, check_finite=False, stopping_threshold=target
        )
        ours = our_stop_epoch({"name": "t", "threshold": {"value": target}}, curve, mode)
        assert ours == lightning_stop_epoch(callback, curve), (curve, target)
        stops += ours is not None
    assert stops > CURVES // 8


@pytest.mark.parametrize("mode", ["min", "max"])
def test_divergence_stops_where_divergence_threshold_and_check_finite_do(mode: str) -> None:
    rng, stops = random.Random(f"divergence-{mode}"), 0
    for _ in range(CURVES // 2):
        curve, bound = random_curve(rng, non_finite=True), rng.randrange(-16, 80) / 8
        callback = EarlyStopping(
            "m", patience=10**9, mode=mode, check_finite=True, divergence_threshold=bound
        )
        ours = our_stop_epoch({"name": "d", "divergence": {"value": bound}}, curve, mode)
        assert ours == lightning_stop_epoch(callback, curve), (curve, bound)
        stops += ours is not None
    assert stops > CURVES // 8
