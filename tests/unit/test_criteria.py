"""Every reason type the engine produces, and the explicit policies (NaN, EMA, warm-up, minDelta, repeats)."""

from __future__ import annotations

import json
import math

import pytest

from stopline.api import parse_duration
from stopline.criteria import REASON_TYPES, CohortCurve, Observation, Request, evaluate, live
from unit.specs import run_curve, spec

LOSS = [1.0, 0.8, 0.7, 0.69, 0.695, 0.70, 0.71, 0.72, 0.73]


def test_reason_types_are_the_crds_enum() -> None:
    assert REASON_TYPES == (
        "Patience", "Threshold", "Divergence", "NonFinite", "Plateau", "Budget",
        "Cohort", "Rungs", "Forecast", "GPUIdle", "PromQL", "Stale", "Manual", "Cancelled",
    )  # fmt: skip


def test_patience_stops_after_patience_epochs_without_improvement_and_says_why() -> None:
    job = spec({"name": "plateau", "patience": {"patience": 3, "minDelta": 0.001}})
    result, _ = run_curve(job, LOSS)
    decision = result.decision
    assert decision is not None
    assert (decision.type, decision.criterion, decision.epoch, decision.value) == (
        "Patience",
        "plateau",
        7,
        0.71,
    )
    assert (
        decision.message == "val_loss 0.71 has not improved on 0.69 (epoch 4) by more than 0.001 for 3 epochs"
    )


def test_patience_min_delta_is_strict_absolute_or_relative() -> None:
    # 0.95 improves on 1.0 by exactly 0.05: not "more than" 0.05, so it does not count.
    absolute = spec({"name": "p", "patience": {"patience": 1, "minDelta": 0.05}})
    assert run_curve(absolute, [1.0, 0.95])[0].decision is not None
    assert run_curve(absolute, [1.0, 0.94])[0].decision is None
    relative = spec({"name": "p", "patience": {"patience": 1, "minDelta": 0.1, "minDeltaMode": "relative"}})
    assert run_curve(relative, [10.0, 9.5])[0].decision is not None  # 5% < 10%
    assert run_curve(relative, [10.0, 8.9])[0].decision is None


def test_warmup_epochs_take_no_decision() -> None:
    job = spec({"name": "p", "patience": {"patience": 1, "warmupEpochs": 3}})
    result, calls = run_curve(job, [1.0, 2.0, 3.0, 4.0, 5.0])
    # Epochs 1..3 are ignored; epoch 4 sets the best, epoch 5 is the first that can stop.
    assert result.decision is not None and result.decision.epoch == 5
    assert len(calls) == 5


def test_smoothing_is_an_ema_of_the_newest_value() -> None:
    noisy = [1.0, 0.85, 0.88, 0.7, 0.73, 0.55, 0.58, 0.4]
    raw = spec({"name": "p", "patience": {"patience": 1}})
    smooth = spec({"name": "p", "patience": {"patience": 1, "smoothing": 0.5}})
    assert run_curve(raw, noisy)[0].decision is not None  # the raw curve zig-zags
    assert run_curve(smooth, noisy)[0].decision is None  # its EMA keeps improving
    threshold = spec({"name": "t", "threshold": {"value": 0.6, "smoothing": 0.5}})
    decision = run_curve(threshold, [1.0, 0.2, 0.2])[0].decision
    assert decision is not None and decision.epoch == 3 and decision.value == pytest.approx(0.4)
    assert decision.message.startswith("smoothed val_loss 0.4 is below the target 0.6")


def test_threshold_stops_once_strictly_better() -> None:
    job = spec({"name": "good", "threshold": {"metric": "val_acc", "mode": "max", "value": 0.9}})
    assert run_curve(job, [0.5, 0.9, 0.9], metric="val_acc")[0].decision is None
    decision = run_curve(job, [0.5, 0.9, 0.91], metric="val_acc")[0].decision
    assert decision is not None and (decision.type, decision.epoch, decision.metric) == (
        "Threshold",
        3,
        "val_acc",
    )


def test_divergence_stops_when_strictly_worse() -> None:
    job = spec({"name": "diverged", "divergence": {"value": 10.0}})
    decision = run_curve(job, [3.0, 10.0, 10.5])[0].decision
    assert decision is not None and (decision.type, decision.epoch, decision.value) == ("Divergence", 3, 10.5)
    assert "above the divergence bound 10" in decision.message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_stops_with_reason_non_finite(bad: float) -> None:
    job = spec({"name": "diverged", "divergence": {}})
    result, _ = run_curve(job, [3.0, bad])
    decision = result.decision
    assert decision is not None and (decision.type, decision.epoch, decision.value) == ("NonFinite", 2, None)
    json.dumps(result.states, allow_nan=False)  # the state and decision stay valid JSON for the status


def test_other_criteria_skip_non_finite_values_and_say_so() -> None:
    job = spec({"name": "p", "patience": {"patience": 2}})
    result, _ = run_curve(job, [1.0, math.nan, 0.9, math.inf, 0.8])
    assert result.decision is None
    (status, _stale) = result.criteria
    assert status.state["nonFinite"] == 2 and status.state["lastNonFinite"] == 4
    assert "skipped 2 non-finite value(s), last at epoch 4" in status.message


def test_plateau_stops_when_the_window_barely_moves() -> None:
    job = spec({"name": "converged", "plateau": {"window": 3, "maxRelativeChange": 0.01}})
    decision = run_curve(job, [1.0, 0.5, 0.3, 0.299, 0.298, 0.2975])[0].decision
    assert decision is not None and (decision.type, decision.epoch) == ("Plateau", 5)
    assert "over the last 3 epochs" in decision.message


@pytest.mark.parametrize(
    ("budget", "epoch", "text"),
    [
        ({"maxEpochs": 4}, 4, "ran 4 epochs, the budget is maxEpochs 4"),
        ({"maxDuration": "2m30s"}, 3, "the budget is maxDuration 2m30s"),
        ({"maxGPUHours": 0.05}, 3, "the budget is maxGPUHours 0.05"),
    ],
)
def test_budget_stops_on_epochs_duration_or_gpu_hours(
    budget: dict[str, object], epoch: int, text: str
) -> None:
    job = spec({"name": "budget", "budget": budget})
    decision = run_curve(job, [1.0] * 10, seconds_per_epoch=60.0)[0].decision  # 1 GPU, one minute per epoch
    assert decision is not None and (decision.type, decision.epoch) == ("Budget", epoch)
    assert text in decision.message


def test_gpu_hours_count_every_gpu_of_every_replica() -> None:
    job = spec({"name": "budget", "budget": {"maxGPUHours": 0.1}}, replicas=2)
    job = type(job)(**{**job.__dict__, "template": {"spec": {"containers": [
        {"name": "t", "resources": {"limits": {"nvidia.com/gpu": 3}}}]}}})  # fmt: skip
    assert job.gpus == 6
    observation = Observation(now=61.0, samples={1: {"val_loss": 1.0}}, started_at=0.0, gpus=job.gpus)
    decision = evaluate(job, {}, observation).decision
    assert decision is not None and decision.type == "Budget" and "6 GPUs" in decision.message


def cohort_of(*curves: list[float], stopped: bool = False) -> tuple[CohortCurve, ...]:
    return tuple(
        CohortCurve(f"j{i}", "val_loss", dict(enumerate(curve, start=1)), stopped)
        for i, curve in enumerate(curves)
    )


def test_cohort_stops_a_job_worse_than_the_median_of_running_averages() -> None:
    others = cohort_of([1.0, 0.6, 0.5], [1.0, 0.7, 0.6], [1.2, 0.8, 0.7])
    job = spec({"name": "median", "cohort": {"minJobs": 3, "warmupEpochs": 1}})
    decision = run_curve(job, [1.1, 0.95, 0.9], cohort=others)[0].decision
    # At epoch 2 the running averages are 0.8, 0.85, 1.0: median 0.85; best so far 0.95 is worse.
    assert decision is not None and (decision.type, decision.epoch, decision.value) == ("Cohort", 2, 0.95)
    assert "the 50th percentile of the running averages of 3 other jobs" in decision.message
    assert run_curve(job, [1.1, 0.8, 0.5], cohort=others)[0].decision is None


def test_cohort_judges_an_epoch_again_when_peers_running_behind_reach_it() -> None:
    """A sweep runs side by side: at this job's epoch 2 one peer is still at epoch 1. When it gets there,
    the same sample (no new epoch) is judged again and the stop comes without waiting for epoch 3."""
    job = spec({"name": "median", "cohort": {"minJobs": 2, "warmupEpochs": 1}})
    behind = cohort_of([1.0, 0.5], [1.0])
    first = evaluate(job, {}, Observation(now=1, samples={1: {"val_loss": 2.0}}, cohort=behind))
    second = evaluate(job, first.states, Observation(now=2, samples={2: {"val_loss": 2.0}}, cohort=behind))
    assert second.decision is None
    caught_up = cohort_of([1.0, 0.5], [1.0, 0.6])
    third = evaluate(job, second.states, Observation(now=3, samples={2: {"val_loss": 2.0}}, cohort=caught_up))
    assert third.decision is not None and (third.decision.type, third.decision.epoch) == ("Cohort", 2)


def test_cohort_needs_min_jobs_that_reached_the_epoch_and_can_leave_out_stopped_jobs() -> None:
    job = spec({"name": "median", "cohort": {"minJobs": 2, "includeStopped": False}})
    result, _ = run_curve(
        job, [9.0, 9.0], cohort=cohort_of([1.0, 1.0]) + cohort_of([1.0], [1.0], stopped=True)
    )
    assert result.decision is None
    assert "1 other jobs reached epoch 2; 2 needed to compare" in result.criteria[0].message


def test_cohort_percentile_counts_from_the_best_end_for_max_metrics() -> None:
    others = tuple(CohortCurve(f"j{v}", "acc", {1: v}) for v in (0.1, 0.2, 0.3, 0.4, 0.5))
    job = spec(
        {"name": "top", "cohort": {"percentile": 25, "minJobs": 5, "reference": "value"}},
        metric="acc",
        mode="max",
    )
    assert run_curve(job, [0.39], metric="acc", cohort=others)[0].decision is not None  # cut is 0.4
    assert run_curve(job, [0.41], metric="acc", cohort=others)[0].decision is None


def test_gpu_idle_needs_low_utilisation_and_no_progress_for_the_whole_period() -> None:
    job = spec(
        {"name": "idle", "gpuIdle": {"utilizationBelow": 5, "for": "10m"}},
        metrics={"prometheus": {"url": "http://prometheus:9090"}, "staleAfter": "1h"},
    )
    states: dict[str, object] = {}
    decisions = []
    for minute, (utilization, step) in enumerate(
        [(1, 10), (1, 11), (1, 11), (50, 11), (2, 11), (2, 11), (2, 11)]
    ):
        observation = Observation(now=minute * 300.0, started_at=0.0, step=step, gpu_utilization=utilization)
        evaluation = evaluate(job, states, observation)  # type: ignore[arg-type]
        states = evaluation.states  # type: ignore[assignment]
        decisions.append(evaluation.decision)
    # step advanced at 5 min, busy at 15 min, idle again from 20 min: fires at 30 min only.
    assert decisions[:6] == [None] * 6
    assert (
        decisions[6] is not None and decisions[6].type == "GPUIdle" and "for 10 min" in decisions[6].message
    )


def test_promql_fires_when_the_query_kept_returning_for_the_period() -> None:
    job = spec(
        {"name": "custom", "promql": {"query": "my_metric > 3", "for": "5m"}},
        metrics={"prometheus": {"url": "http://prometheus:9090"}},
    )
    first = evaluate(job, {}, Observation(now=0.0, promql={"custom": True}))
    failed = evaluate(job, first.states, Observation(now=200.0))
    assert failed.decision is None and "no query result" in failed.criteria[0].message
    fired = evaluate(job, failed.states, Observation(now=300.0, promql={"custom": True}))
    assert (
        fired.decision is not None
        and fired.decision.type == "PromQL"
        and "my_metric > 3" in fired.decision.message
    )
    reset = evaluate(job, first.states, Observation(now=300.0, promql={"custom": False}))
    assert reset.decision is None


def test_stale_when_no_new_step_for_stale_after() -> None:
    job = spec(metrics={"staleAfter": "10m"})
    first = evaluate(job, {}, Observation(now=100.0, started_at=0.0, step=50))
    quiet = evaluate(job, first.states, Observation(now=600.0, step=50))
    assert quiet.decision is None
    stale = evaluate(job, quiet.states, Observation(now=700.0, step=50))
    assert (
        stale.decision is not None
        and stale.decision.type == "Stale"
        and stale.decision.criterion == "staleAfter"
    )
    assert "no new step for 10 min" in stale.decision.message


def test_a_monitoring_outage_is_not_counted_as_a_hung_trainer() -> None:
    """Stale counts only time in which the source answered: an hour without answers is no stop, and
    the quiet time before and after it adds up only from answers."""
    job = spec(metrics={"staleAfter": "10m"})
    first = evaluate(job, {}, Observation(now=0.0, started_at=0.0, step=50))
    before = evaluate(job, first.states, Observation(now=240.0, step=50))
    outage = evaluate(job, before.states, Observation(now=3840.0, answered=False))
    assert outage.decision is None and "not answering" in outage.criteria[-1].message
    back = evaluate(job, outage.states, Observation(now=3900.0, step=50))
    still = evaluate(job, back.states, Observation(now=4200.0, step=50))
    assert still.decision is None  # 240 s before + 300 s after: 9 min of answers without a new step
    stale = evaluate(job, still.states, Observation(now=4260.0, step=50))
    assert stale.decision is not None and stale.decision.type == "Stale"


def test_a_trainer_that_stops_answering_while_its_pod_runs_is_stale_within_stale_after() -> None:
    """Frozen after its last answer at t=60 (SIGSTOP, a hung collective, a cut network, a lost node): the
    apiserver says the pod runs, so the silence counts, and the message says since when."""
    job = spec(metrics={"staleAfter": "10m"})
    first = evaluate(job, {}, Observation(now=0.0, started_at=0.0, step=50))
    last = evaluate(job, first.states, Observation(now=60.0, step=51))
    silent = evaluate(job, last.states, Observation(now=600.0, answered=False, trainer_silent=True))
    assert silent.decision is None and "not answered for 9 min (counted)" in silent.criteria[-1].message
    stale = evaluate(job, silent.states, Observation(now=660.0, answered=False, trainer_silent=True))
    assert stale.decision is not None and stale.decision.type == "Stale"
    assert "stopped answering at 1970-01-01T00:01:00Z while its pod runs" in stale.decision.message
    # a trainer that never answered (still importing torch, a wrong port) is not hung: it is not counted
    never = evaluate(job, {}, Observation(now=0.0, answered=False, trainer_silent=True))
    later = evaluate(job, never.states, Observation(now=3600.0, answered=False, trainer_silent=True))
    assert later.decision is None
    # and an answer ends the silence: only time without a new step counts after it
    back = evaluate(job, silent.states, Observation(now=620.0, step=52))
    assert evaluate(job, back.states, Observation(now=1200.0, step=52)).decision is None


def test_manual_stop_and_cancel_come_from_the_annotations_cancel_first() -> None:
    job = spec({"name": "p", "patience": {"patience": 1}})
    stop = Request("stopline.dev/stop", "enough for today")
    manual = evaluate(job, {}, Observation(now=1.0, samples={3: {"val_loss": 1.0}}, stop=stop))
    assert manual.decision is not None
    assert (manual.decision.type, manual.decision.message, manual.decision.epoch) == (
        "Manual",
        "enough for today",
        3,
    )
    assert manual.decision.criterion == "stopline.dev/stop"
    cancel = Request("stopline.dev/cancel", "wrong data")
    both = evaluate(job, {}, Observation(now=1.0, stop=stop, cancel=cancel))
    assert both.decision is not None and (both.decision.type, both.decision.message) == (
        "Cancelled",
        "wrong data",
    )


def test_missing_metric_takes_no_decision_and_says_so() -> None:
    job = spec({"name": "good", "threshold": {"metric": "val_acc", "mode": "max", "value": 0.5}})
    result = evaluate(job, {}, Observation(now=1.0, samples={1: {"val_loss": 0.3}}))
    assert result.decision is None
    assert "val_acc not reported at epoch 1 (reported: val_loss)" in result.criteria[0].message


def test_repeated_duplicate_and_late_samples_are_never_double_counted() -> None:
    job = spec({"name": "p", "patience": {"patience": 2}})
    samples = {1: {"val_loss": 1.0}, 2: {"val_loss": 1.0}}
    once = evaluate(job, {}, Observation(now=1.0, samples=samples))
    again = evaluate(job, once.states, Observation(now=2.0, samples=samples))
    assert once.decision is None and again.decision is None
    assert again.states["p"] == once.states["p"]  # the same samples again change nothing
    late = evaluate(job, again.states, Observation(now=3.0, samples={1: {"val_loss": 5.0}}))
    assert late.states["p"] == once.states["p"]
    impatient = spec({"name": "p", "patience": {"patience": 1}})
    unordered = evaluate(
        impatient, {}, Observation(now=1.0, samples={3: {"val_loss": 1.0}, 1: {"val_loss": 1.0}})
    )
    assert unordered.decision is not None and unordered.decision.epoch == 3


def test_a_decision_sticks_and_survives_a_json_round_trip_of_the_states() -> None:
    job = spec({"name": "p", "patience": {"patience": 1}}, metrics={"staleAfter": "1h"})
    result, _ = run_curve(job, [1.0, 2.0])
    stored = json.loads(json.dumps(result.states, allow_nan=False))
    again = evaluate(job, stored, Observation(now=500.0, samples={3: {"val_loss": 0.1}}))
    assert again.decision == result.decision


def test_earliest_epoch_wins_when_several_epochs_arrive_at_once() -> None:
    job = spec(
        {"name": "late", "threshold": {"value": 0.5}},
        {"name": "early", "divergence": {"value": 2.0}},
    )
    samples = {1: {"val_loss": 1.0}, 2: {"val_loss": 3.0}, 3: {"val_loss": 0.1}}
    decision = evaluate(job, {}, Observation(now=1.0, samples=samples)).decision
    assert decision is not None and (decision.criterion, decision.epoch) == ("early", 2)


def test_state_of_another_kind_is_not_reused_after_a_spec_edit() -> None:
    before = spec({"name": "c", "patience": {"patience": 1}})
    result, _ = run_curve(before, [1.0, 2.0])
    after = spec({"name": "c", "threshold": {"value": 0.0}})
    assert (
        evaluate(after, result.states, Observation(now=1.0, samples={3: {"val_loss": 1.0}})).decision is None
    )


def test_time_a_queue_holds_the_job_counts_for_no_clock() -> None:
    """Preempted for an hour: Stale, GPUIdle and PromQL start afresh when the pods run again."""
    stale_after = parse_duration("10m")
    answered = live.evaluate_stale(stale_after, Observation(now=0.0, step=5), None)
    paused = live.evaluate_stale(stale_after, Observation(now=60.0, paused=True), answered.state)
    resumed = live.evaluate_stale(stale_after, Observation(now=3660.0, step=5), paused.state)
    assert resumed.decision is None
    unpaused = live.evaluate_stale(stale_after, Observation(now=3660.0, step=5), answered.state)
    assert unpaused.decision is not None and unpaused.decision.type == "Stale"
