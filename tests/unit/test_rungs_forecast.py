"""The rungs (ASHA) and forecast criteria: the decisions a user sees, and the words that explain them."""

from __future__ import annotations

import pytest
from specs import run_curve, spec

from stopline import api
from stopline.criteria import CohortCurve, Observation, evaluate


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
    assert "1 other jobs reached rung 2; 2 needed to compare; next rung at epoch 4" in second.criteria[0].message
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


def finished(count: int, start: float, end: float, epochs: int = 10) -> list[list[float]]:
    """`count` finished jobs that go from `start` to `end` in a straight line (tiny spread among them)."""
    return [
        [start + (end - start) * (e - 1) / (epochs - 1) + 0.001 * i for e in range(1, epochs + 1)]
        for i in range(count)
    ]


def test_forecast_stops_a_job_whose_peers_at_its_level_never_beat_the_best_and_says_so() -> None:
    # 20 finished jobs went from 2.0 to 1.0; one from 1.0 to 0.5 holds the best final value, 0.5.
    others = peers(*finished(20, 2.0, 1.0), [1.0 - 0.5 * e / 9 for e in range(10)])
    job = spec({"name": "fc", "forecast": {"warmupEpochs": 1}})
    result, _ = run_curve(job, [2.0, 1.9, 1.8], cohort=others)
    decision = result.decision
    assert decision is not None and (decision.type, decision.epoch, decision.value) == ("Forecast", 2, 1.9)
    message = decision.message
    assert message.startswith("forecast: val_loss would end near 1.0")
    assert "(80% of 20 similar finished jobs imply" in message
    assert "the chance it beats 0.5 (the best final value of 21 ended jobs) is 4.5%, under the 5.0% bound" in message


def test_forecast_keeps_a_job_whose_peers_at_its_level_went_on_to_beat_the_best() -> None:
    # Late bloomers: jobs about as bad as this one by epoch 3 went on to the best final values, 0.2 to 0.39;
    # this job is a little better than they were, so 5 of the 20 predictions beat 0.2: (5 + 1) / 22.
    bloomers = [[3.0, 3.0, 3.0, 1.0, 0.2 + 0.01 * i] for i in range(20)]
    steady = [[1.0, 0.9, 0.8, 0.75, 0.7] for _ in range(5)]
    job = spec({"name": "fc", "forecast": {}})
    result, _ = run_curve(job, [2.95, 2.95, 2.95], cohort=peers(*bloomers, *steady))
    assert result.decision is None
    assert result.criteria[0].message == (
        "forecast 0.245 at the end (80%: 0.169 to 0.321, 20 similar finished jobs); chance to beat 0.2 "
        "(the best final value of 25 ended jobs): 27.3%, bound 5.0%"
    )


def test_forecast_learns_only_from_completed_jobs_and_needs_min_jobs_of_them() -> None:
    stopped = tuple(
        CohortCurve(f"s{i}", "val_loss", {1: 2.0, 2: 2.0, 3: 2.0}, stopped=True) for i in range(30)
    )
    job = spec({"name": "fc", "forecast": {"minJobs": 5}})
    result, _ = run_curve(job, [2.0, 2.0], cohort=stopped + peers([1.0, 0.5, 0.4]))
    assert result.decision is None
    assert "fewer than 5 finished jobs went past epoch 2: no forecast yet" in result.criteria[0].message


def test_forecast_reference_can_be_a_target_or_a_percentile() -> None:
    others = peers(*finished(20, 2.0, 1.0))
    job = spec({"name": "fc", "forecast": {"reference": "target", "target": 1.5}})
    assert run_curve(job, [2.0, 1.9], cohort=others)[0].decision is None  # they all ended below 1.5
    job = spec({"name": "fc", "forecast": {"reference": "target", "target": 0.9}})
    decision = run_curve(job, [2.0, 1.9], cohort=others)[0].decision
    assert decision is not None and "beats 0.9 (the target)" in decision.message
    job = spec({"name": "fc", "forecast": {"reference": "percentile", "percentile": 10}})
    assert "the 10th percentile of the final values of 20 ended jobs" in run_curve(job, [2.0], cohort=others)[
        0
    ].criteria[0].message


def test_forecast_waits_for_a_job_of_the_study_to_end() -> None:
    job = spec({"name": "fc", "forecast": {}})
    result, _ = run_curve(job, [5.0, 5.0])
    assert result.decision is None
    assert "no job of the study has ended yet: nothing to beat" in result.criteria[0].message


def test_forecast_is_the_same_when_called_again_without_a_new_epoch() -> None:
    others = peers(*finished(20, 2.0, 1.0), [1.0 - 0.5 * e / 9 for e in range(10)])
    job = spec({"name": "fc", "forecast": {"probability": 0.01}})
    once = evaluate(job, {}, Observation(now=1, samples={1: {"val_loss": 2.0}}, cohort=others))
    again = evaluate(job, once.states, Observation(now=2, samples={1: {"val_loss": 2.0}}, cohort=others))
    assert once.states["fc"] == again.states["fc"] and again.decision is None


def test_the_new_kinds_parse_with_the_crds_defaults() -> None:
    job = spec({"name": "r", "rungs": None}, {"name": "f", "forecast": {}})
    assert job.criteria == (
        api.RungsCriterion("r", "val_loss", "min", None, 1, 3, 5, "best", True),
        api.ForecastCriterion("f", "val_loss", "min", None, 0.05, "best", 10.0, None, 20, 5, 0),
    )


@pytest.mark.parametrize(
    ("criterion", "error"),
    [
        ({"rungs": {"reductionFactor": 1}}, "spec.criteria[0].rungs.reductionFactor: must be an integer within 2..100"),
        ({"rungs": {"minEpochs": 0}}, "spec.criteria[0].rungs.minEpochs: must be an integer within 1..1000000"),
        ({"rungs": {"eta": 3}}, "spec.criteria[0].rungs.eta: unknown field"),
        ({"forecast": {"probability": 0}}, "spec.criteria[0].forecast.probability: must be a number > 0 and <= 0.5"),
        ({"forecast": {"probability": 0.6}}, "spec.criteria[0].forecast.probability: must be a number > 0 and <= 0.5"),
        ({"forecast": {"neighbours": 1001}}, "spec.criteria[0].forecast.neighbours: must be an integer within 1..1000"),
        ({"forecast": {"reference": "median"}}, "spec.criteria[0].forecast.reference: must be one of best, percentile, target"),
        ({"forecast": {"reference": "target"}}, "spec.criteria[0].forecast.target: is required with reference target"),
        ({"forecast": {"percentile": 101}}, "spec.criteria[0].forecast.percentile: must be a number >= 0 and <= 100"),
    ],
)
def test_errors_name_the_field(criterion: dict[str, object], error: str) -> None:
    with pytest.raises(api.SpecError) as raised:
        spec({"name": "x", **criterion})
    assert str(raised.value).startswith(error)
