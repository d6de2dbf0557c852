"""The registry: every kind of criterion, in the order the CRD and the error messages list them."""

from __future__ import annotations

from typing import Any

from stopline.criteria import budget, cohort, divergence, forecast, live, patience, plateau, rungs, threshold
from stopline.criteria.kind import Kind

KINDS: tuple[Kind[Any], ...] = (
    patience.KIND,
    threshold.KIND,
    divergence.KIND,
    plateau.KIND,
    budget.KIND,
    cohort.KIND,
    rungs.KIND,
    forecast.KIND,
    live.GPU_IDLE,
    live.PROMQL,
)
# What spec.criteria[] holds: one of the kinds' specs (a union, so mypy checks what each one has).
Criterion = (
    patience.PatienceCriterion
    | threshold.ThresholdCriterion
    | divergence.DivergenceCriterion
    | plateau.PlateauCriterion
    | budget.BudgetCriterion
    | cohort.CohortCriterion
    | rungs.RungsCriterion
    | forecast.ForecastCriterion
    | live.GPUIdleCriterion
    | live.PromQLCriterion
)
BY_KEY: dict[str, Kind[Any]] = {kind.key: kind for kind in KINDS}
BY_SPEC: dict[type, Kind[Any]] = {kind.spec: kind for kind in KINDS}
