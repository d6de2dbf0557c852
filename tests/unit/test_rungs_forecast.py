"""The rungs (ASHA) and forecast criteria: the decisions a user sees, and the words that explain them."""

from __future__ import annotations

import pytest

from stopline import api
from stopline.criteria import CohortCurve, Observation, evaluate
from stopline.criteria.forecast import ForecastCriterion
from stopline.criteria.rungs import RungsCriterion
from unit.specs import run_curve, spec


def peers(*curves: list[float], completed: bool = True, metric: str = "val_loss") -> tuple[CohortCurve, ...]:
    return tuple(
        CohortCurve(f"p{i}", metric, dict(enumerate(curve, start=1)), completed=completed)
        for i, curve in enumerate(curves)
    )


def test_rungs_judge_only_at_rung_epochs_and_keep_the_best_third() -> None:
    # Rungs at 1, 3, 9 (r 1, eta 3). Five peers; this job is 4th of 6 at epoch 1 and 2, and 5th at epoch 3.
    others = peers(*[[1.0 + i, 0.9 + i, 0.8 + i] for i in range(5)])
    job = spec({"name": "asha", "rungs": {"reductionFactor": 3, "minJobs": 5, "compare": "current"}})
    # At rung 1 the cut of [1, 2, 3, 4, 5] at the best third (33.3th percentile) is 2.33: 1.5 goes on.
    result, calls = run_curve(job, [1.5, 9.0, 4.0], cohort=others)
    decision = result.decision
    assert decision is not None and (decision.type, decision.epoch, decision.value) == ("Rungs", 3, 4.0)
    assert calls[1].decision is None  # epoch 2 is no rung, however bad
    assert "is not in the best 1/3 of the 5 other jobs that reached it" in decision.message
    assert run_curve(job, [1.5, 9.0, 1.5], cohort=others)[0].decision is None


def test_rungs_wait_for_min_jobs_at_a_rung_and_judge_it_when_they_arrive() -> None:
    job = spec({"name": "asha", "rungs": {"minEpochs": 2, "reductionFactor": 2, "minJobs": 2}})
    behind = peers([1.0, 1.0], [1.0])
    first = evaluate(job, {}, Observation(now=1, samples={1: {"val_loss": 5.0}}, cohort=behind))
    second = evaluate(job, first.states, Observation(now=2, samples={2: {"val_loss": 5.0}}, cohort=behind))
    assert second.decision is None
    assert (
        "1 other jobs reached rung 2; 2 needed to compare; next rung at epoch 4" in second.criteria[0].message
    )
    caught_up = peers([1.0, 1.0], [1.0, 1.0])
    third = evaluate(job, second.states, Observation(now=3, samples={2: {"val_loss": 5.0}}, cohort=caught_up))
    assert third.decision is not None and (third.decision.type, third.decision.epoch) == ("Rungs", 2)


def test_rungs_compare_the_best_so_far_by_default_and_count_from_the_best_end_for_max() -> None:
    others = peers(*[[0.1 * i, 0.1 * i, 0.1 * i] for i in range(1, 6)], metric="acc")
    job = spec({"name": "asha", "rungs": {}}, metric="acc", mode="max")  # eta 3: keep the best third
    # Epoch 3 is a rung; the best so far 0.45 (epoch 1) is above the cut, 0.4 + 0.1 x 2/3 = 0.467? no:
    # the 66.7th numeric percentile of 0.1..0.5 is 0.367, so 0.45 goes on though its value at 3 is 0.0.
    assert run_curve(job, [0.45, 0.0, 0.0], metric="acc", cohort=others)[0].decision is None
    stopped = run_curve(job, [0.3, 0.3, 0.3], metric="acc", cohort=others)[0].decision
    assert stopped is not None and stopped.epoch == 1


def test_rungs_rank_cut_keeps_only_the_best_floor_n_over_eta_counting_this_job() -> None:
    # Rung 1, eta 4, three peers at 1, 2 and 3. The quantile cut (25th percentile of the others) is 1.5,
    # so 1.2 goes on; ranked with the others, 1.2 is 2nd of 4 and only floor(4/4) = 1 is kept.
    others = peers([1.0], [2.0], [3.0])
    rungs = {"reductionFactor": 4, "minJobs": 1, "compare": "current"}
    quantile = spec({"name": "asha", "rungs": rungs})
    assert run_curve(quantile, [1.2], cohort=others)[0].decision is None
    rank = spec({"name": "asha", "rungs": {**rungs, "cut": "rank"}})
    stopped = run_curve(rank, [1.2], cohort=others)[0].decision
    assert stopped is not None and (stopped.type, stopped.epoch) == ("Rungs", 1)
    assert "is not among the best 1 of the 4 jobs that reached it, this one counted (the cut is 1)" in (
        stopped.message
    )
    assert run_curve(rank, [0.9], cohort=others)[0].decision is None  # the best goes on
    # Eight peers: 9 jobs, floor(9/4) = 2 kept: the second best goes on, the third stops.
    eight = peers(*[[1.0 + i] for i in range(8)])
    assert run_curve(rank, [1.5], cohort=eight)[0].decision is None
    assert run_curve(rank, [2.5], cohort=eight)[0].decision is not None


def line(start: float, end: float, epochs: int = 10) -> list[float]:
    return [start + (end - start) * (e - 1) / (epochs - 1) for e in range(1, epochs + 1)]


# 20 finished jobs that went down by 0.85 to 1.15 from 2.0, 2.05, ..., 2.95; one more from 1.0 to 0.5.
SWEEP = peers(*[line(2.0 + 0.05 * i, 0.85 + 0.05 * i + 0.1 * (i % 4)) for i in range(20)], line(1.0, 0.5))


def test_forecast_stops_a_job_whose_like_never_beat_the_best_and_says_so_in_words() -> None:
    # At epoch 1 the jobs within 1 x the spread (IQR 0.5) of 2.0 are the 11 that started at 2.0..2.5; they
    # went down by 0.85 to 1.15, so this job would end near 0.95, nowhere near the best, 0.5.
    job = spec({"name": "fc", "forecast": {"similarity": 1}})
    decision = run_curve(job, [2.0, 1.9, 1.8], cohort=SWEEP)[0].decision
    assert decision is not None and (decision.type, decision.epoch, decision.value) == ("Forecast", 1, 2.0)
    assert decision.message == (
        "forecast: val_loss would end near 0.95 (80% of 11 finished jobs that were like it imply 0.85 to "
        "1.15); the chance it beats 0.5 (the best final value of 21 ended jobs) is under 0.1%, below the "
        "1.0% bound"
    )


def test_forecast_keeps_a_job_that_may_still_beat_the_reference() -> None:
    job = spec({"name": "fc", "forecast": {"similarity": 1, "reference": "target", "target": 0.9}})
    result, _ = run_curve(job, [2.0], cohort=SWEEP)
    assert result.decision is None
    assert result.criteria[0].message == (
        "forecast 0.95 at the end (80%: 0.85 to 1.15, from 11 finished jobs like this one by epoch 1); "
        "chance to beat 0.9 (the target): 30.0%, bound 1.0%"
    )
    # Late bloomers: jobs as flat as this one by epoch 3 (3.0 to 3.19) dropped late to the best values.
    bloomers = [[3.0 + 0.01 * i] * 3 + [1.0, 0.2 + 0.01 * i] for i in range(20)]
    steady = [[1.0, 0.9, 0.8, 0.75, 0.7] for _ in range(5)]
    job = spec({"name": "fc", "forecast": {"similarity": 1}})
    result, _ = run_curve(job, [2.95, 2.95, 2.95], cohort=peers(*bloomers, *steady))
    assert result.decision is None
    assert "chance to beat 0.2 (the best final value of 25 ended jobs): 100.0%" in result.criteria[0].message


def test_forecast_says_nothing_of_a_job_like_no_finished_one() -> None:
    result, _ = run_curve(spec({"name": "fc", "forecast": {}}), [9.0, 9.0], cohort=SWEEP)
    assert result.decision is None
    assert (
        "fewer than 5 finished jobs were like this one by epoch 2: no forecast" in result.criteria[0].message
    )


def test_forecast_learns_only_from_finished_jobs() -> None:
    stopped = tuple(
        CohortCurve(f"s{i}", "val_loss", {1: 2.0 + i, 2: 2.0 + i, 3: 2.0 + i}, stopped=True)
        for i in range(30)
    )
    result, _ = run_curve(
        spec({"name": "fc", "forecast": {}}), [2.0, 2.0], cohort=stopped + peers([1, 0.5, 0.4])
    )
    assert result.decision is None
    assert "fewer than 5 finished jobs were like this one" in result.criteria[0].message


def test_forecast_reference_can_be_a_target_or_a_percentile() -> None:
    job = spec({"name": "fc", "forecast": {"reference": "target", "target": 1.5, "similarity": 1}})
    assert run_curve(job, [2.0], cohort=SWEEP)[0].decision is None  # its like all ended at 0.85..1.15
    job = spec({"name": "fc", "forecast": {"reference": "target", "target": 0.6, "similarity": 1}})
    decision = run_curve(job, [2.0], cohort=SWEEP)[0].decision
    assert decision is not None and "beats 0.6 (the target)" in decision.message
    job = spec({"name": "fc", "forecast": {"reference": "percentile", "percentile": 10}})
    message = run_curve(job, [2.0], cohort=SWEEP)[0].criteria[0].message
    assert "the 10th percentile of the final values of 21 finished jobs" in message


def test_forecast_waits_for_a_job_of_the_study_to_end() -> None:
    result, _ = run_curve(spec({"name": "fc", "forecast": {}}), [5.0, 5.0])
    assert result.decision is None
    assert "no job of the study has ended yet: nothing to beat" in result.criteria[0].message


def test_forecast_is_the_same_when_called_again_without_a_new_epoch() -> None:
    job = spec({"name": "fc", "forecast": {"reference": "target", "target": 0.9}})  # a 30% chance: no stop
    once = evaluate(job, {}, Observation(now=1, samples={1: {"val_loss": 2.0}}, cohort=SWEEP))
    again = evaluate(job, once.states, Observation(now=2, samples={1: {"val_loss": 2.0}}, cohort=SWEEP))
    assert once.states["fc"] == again.states["fc"] and again.decision is None


def test_the_new_kinds_parse_with_the_crds_defaults() -> None:
    job = spec({"name": "r", "rungs": None}, {"name": "f", "forecast": {}})
    assert job.criteria == (
        RungsCriterion("r", "val_loss", "min", None, 1, 3, 5, "best", "quantile", True),
        ForecastCriterion("f", "val_loss", "min", None, 0.01, "best", 10.0, None, 2.0, 20, 5, 0),
    )


@pytest.mark.parametrize(
    ("criterion", "error"),
    [
        (
            {"rungs": {"reductionFactor": 1}},
            "spec.criteria[0].rungs.reductionFactor: must be an integer within 2..100",
        ),
        (
            {"rungs": {"minEpochs": 0}},
            "spec.criteria[0].rungs.minEpochs: must be an integer within 1..1000000",
        ),
        ({"rungs": {"eta": 3}}, "spec.criteria[0].rungs.eta: unknown field"),
        ({"rungs": {"cut": "median"}}, "spec.criteria[0].rungs.cut: must be one of quantile, rank"),
        (
            {"forecast": {"probability": 0}},
            "spec.criteria[0].forecast.probability: must be a number > 0 and <= 0.5",
        ),
        (
            {"forecast": {"probability": 0.6}},
            "spec.criteria[0].forecast.probability: must be a number > 0 and <= 0.5",
        ),
        (
            {"forecast": {"neighbours": 1001}},
            "spec.criteria[0].forecast.neighbours: must be an integer within 1..1000",
        ),
        (
            {"forecast": {"reference": "median"}},
            "spec.criteria[0].forecast.reference: must be one of best, percentile, target",
        ),
        (
            {"forecast": {"reference": "target"}},
            "spec.criteria[0].forecast.target: is required with reference target",
        ),
        (
            {"forecast": {"percentile": 101}},
            "spec.criteria[0].forecast.percentile: must be a number >= 0 and <= 100",
        ),
        (
            {"forecast": {"similarity": 0}},
            "spec.criteria[0].forecast.similarity: must be a number > 0 and <= 100",
        ),
    ],
)
def test_errors_name_the_field(criterion: dict[str, object], error: str) -> None:
    with pytest.raises(api.SpecError) as raised:
        spec({"name": "x", **criterion})
    assert str(raised.value).startswith(error)


def test_forecast_learns_from_earlier_studies_it_names_but_judges_against_this_study_s_best() -> None:
    """A small sweep: one job of its own finished; three of an earlier study (history) are like this one
    and end behind this study's best, so it is stopped before minJobs of its own jobs finished."""
    own = peers(line(1.0, 0.3))
    earlier = {"lr-v1": peers(line(1.0, 0.6), line(1.05, 0.62), line(0.95, 0.58), line(2.0, 0.1))}
    job = spec({"name": "f", "forecast": {"minJobs": 3, "history": ["lr-v1"]}})
    decision = run_curve(job, line(1.0, 0.6), cohort=own, history=earlier)[0].decision
    assert decision is not None and decision.type == "Forecast"
    assert "the best final value of 1 ended jobs" in decision.message  # the reference is this study's
    without = spec({"name": "f", "forecast": {"minJobs": 3}})
    assert run_curve(without, line(1.0, 0.6), cohort=own, history=earlier)[0].decision is None
    unnamed = spec({"name": "f", "forecast": {"minJobs": 3, "history": ["lr-v0"]}})
    assert run_curve(unnamed, line(1.0, 0.6), cohort=own, history=earlier)[0].decision is None
    stopped_only = {"lr-v1": peers(line(1.0, 0.6), line(1.05, 0.62), line(0.95, 0.58), completed=False)}
    assert run_curve(job, line(1.0, 0.6), cohort=own, history=stopped_only)[0].decision is None


@pytest.mark.parametrize(
    ("history", "error"),
    [
        ("lr-v1", "spec.criteria[0].forecast.history: must be a list of at most 16 names"),
        (["lr-v1", "lr-v1"], "spec.criteria[0].forecast.history[1]: names 'lr-v1' twice"),
        (["-bad"], "spec.criteria[0].forecast.history[0]: must be a name of at most 63 characters"),
    ],
)
def test_forecast_history_names_studies(history: object, error: str) -> None:
    with pytest.raises(api.SpecError) as raised:
        spec({"name": "f", "forecast": {"history": history}})
    assert str(raised.value).startswith(error)
