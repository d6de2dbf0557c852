"""The resume rule (stopline.criteria.resume): which stopped jobs of a sweep come back, and why."""

from __future__ import annotations

import pytest

from stopline.criteria.resume import ResumeSettings, SweepJob, plan


def curve(
    early: float, final: float, epochs: int = 10, turn: int = 6, jitter: float = 0.0
) -> dict[int, float]:
    """Flat at `early` (plus jitter) until epoch `turn`, then straight down (or up) to `final`."""
    values = {}
    for epoch in range(1, epochs + 1):
        if epoch < turn:
            values[epoch] = early + jitter - 0.01 * epoch
        else:
            share = (epoch - turn + 1) / (epochs - turn + 1)
            values[epoch] = early + jitter + share * (final - early)
    return values


def finished(name: str, early: float, final: float, budget: int | None = 10, jitter: float = 0.0) -> SweepJob:
    return SweepJob(name, "finished", curve(early, final, jitter=jitter), budget=budget)


def stopped(name: str, early: float, at: int, budget: int | None = 10, **kw: object) -> SweepJob:
    values = {e: v for e, v in curve(early, early).items() if e <= at}
    return SweepJob(name, "stopped", values, budget=budget, **kw)  # type: ignore[arg-type]


LEADERS = [finished(f"lead{i}", 0.9, 0.8 + 0.01 * i, jitter=0.01 * i) for i in range(5)]
DUDS = [finished(f"dud{i}", 2.0, 1.9 + 0.01 * i, jitter=0.01 * i) for i in range(5)]
BLOOMERS = [finished(f"bloom{i}", 2.0, 0.5 + 0.01 * i, jitter=0.01 * i) for i in range(5)]
SETTINGS = ResumeSettings("min", probability=0.01, max_resumes=2)


def test_a_stopped_job_like_finished_jobs_that_all_ended_badly_stays_stopped_with_its_numbers() -> None:
    late = stopped("late", 2.0, at=4)
    result = plan([*LEADERS, *DUDS, late], SETTINGS, now=100.0)
    assert result.resume == () and result.waiting == ()
    (judged,) = result.judged
    assert judged.job == "late" and judged.epoch == 4 and not judged.resume
    assert judged.probability is not None and judged.probability < 0.01
    assert judged.peers >= 5 and judged.predicted is not None and judged.predicted > 1.8
    assert result.reference == pytest.approx(0.8)
    assert "below the 1.0% bound: stays stopped from epoch 4" in judged.message
    assert result.now == 100.0


def test_a_late_bloomer_is_brought_back_once_finished_jobs_like_it_ended_best() -> None:
    late = stopped("late", 2.0, at=4)
    result = plan([*LEADERS, *DUDS, *BLOOMERS, late], SETTINGS, now=200.0)
    (back,) = result.resume
    assert back.job == "late" and back.epoch == 4 and back.resume
    assert back.probability is not None and back.probability >= 0.01
    assert back.low is not None and back.low < 0.6  # some of its neighbours ended near 0.5
    assert result.reference == pytest.approx(0.5)
    assert back.message.startswith(f"P(beat best)={back.probability:.1%}, at or above the 1.0% bound: resume")
    assert back.as_status()["epoch"] == 4


def test_a_job_like_no_finished_one_is_resumed_unless_unseen_jobs_are_kept() -> None:
    odd = stopped("odd", 5.0, at=3)  # far worse than every finished job: none is like it
    result = plan([*LEADERS, odd], SETTINGS, now=0.0)
    (back,) = result.resume
    assert back.probability is None and back.peers == 0
    assert "fewer than 5 finished jobs of its budget were like it by epoch 3" in back.message
    keep = ResumeSettings("min", unseen="keep")
    kept = plan([*LEADERS, odd], keep, now=0.0)
    assert kept.resume == () and kept.judged[0].probability is None and not kept.judged[0].resume


def test_unseen_evidence_keeps_a_forecast_stop_and_takes_back_a_stop_with_no_chance_behind_it() -> None:
    by_forecast = stopped("by-forecast", 5.0, at=3, stop_chance=0.004)
    by_rungs = stopped("by-rungs", 5.0, at=3)
    result = plan([*LEADERS, by_forecast, by_rungs], ResumeSettings("min", unseen="evidence"), now=0.0)
    assert [j.job for j in result.resume] == ["by-rungs"]
    kept = next(j for j in result.judged if j.job == "by-forecast")
    assert not kept.resume and kept.probability is None
    assert kept.message.startswith("stays stopped on the chance it was stopped on (0.4%); nothing new says")


def test_neighbours_share_a_budget_so_a_longer_run_is_not_judged_by_shorter_ones() -> None:
    short = stopped("short", 2.0, at=4, budget=10)
    longer = stopped("longer", 2.0, at=4, budget=100)
    result = plan([*LEADERS, *DUDS, short, longer], SETTINGS, now=0.0)
    assert [j.job for j in result.resume] == ["longer"]
    assert result.resume[0].probability is None  # no finished job of maxEpochs 100
    labelled = stopped("labelled", 2.0, at=4, budget=10, schedule="cosine")
    assert [j.job for j in plan([*LEADERS, *DUDS, labelled], SETTINGS, 0.0).resume] == ["labelled"]


def test_at_most_k_at_a_time_most_promising_first_and_a_running_resumed_job_holds_a_slot() -> None:
    jobs = [
        *LEADERS,
        *DUDS,
        *BLOOMERS,
        stopped("odd", 5.0, at=3),  # unseen: after every job with a chance
        stopped("late", 2.0, at=4),
        stopped("later", 2.05, at=4),  # a little worse: a little less likely
    ]
    result = plan(jobs, SETTINGS, now=0.0)
    assert [j.job for j in result.resume] == ["late", "later"]
    assert [j.job for j in result.waiting] == ["odd"]
    chances = [j.probability for j in result.resume]
    assert chances[0] is not None and chances[1] is not None and chances[0] > chances[1]
    busy = SweepJob("again", "running", curve(2.0, 2.0), budget=10, resumed=True)
    assert [j.job for j in plan([*jobs, busy], SETTINGS, now=0.0).resume] == ["late"]
    fresh = SweepJob("fresh", "running", curve(2.0, 2.0), budget=10)  # not resumed: holds no slot
    assert len(plan([*jobs, fresh], SETTINGS, now=0.0).resume) == 2


def test_what_cannot_be_resumed_is_not_judged() -> None:
    by_hand = stopped("by-hand", 5.0, at=3, resumable=False)
    done = SweepJob("done", "stopped", curve(5.0, 5.0), budget=10)  # stopped at its last epoch
    diverged = SweepJob("diverged", "stopped", {1: 5.0, 2: float("nan")}, budget=10)
    result = plan([*LEADERS, by_hand, done, diverged], SETTINGS, now=0.0)
    assert result.judged == ()
    lone = plan([stopped("first", 2.0, at=2)], SETTINGS, now=0.0)  # the only ended job: nothing else ran
    assert [j.job for j in lone.resume] == ["first"] and lone.resume[0].probability is None


def test_accuracy_counts_from_the_top() -> None:
    flip = ResumeSettings("max", probability=0.01)

    def acc(job: SweepJob) -> SweepJob:
        return SweepJob(job.name, job.phase, {e: 1 - v / 3 for e, v in job.values.items()}, budget=job.budget)

    late = acc(stopped("late", 2.0, at=4))
    assert plan([*map(acc, LEADERS), *map(acc, DUDS), late], flip, 0.0).resume == ()
    result = plan([*map(acc, LEADERS), *map(acc, DUDS), *map(acc, BLOOMERS), late], flip, 0.0)
    assert [j.job for j in result.resume] == ["late"]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        ResumeSettings("min", probability=0.0)
    with pytest.raises(ValueError):
        ResumeSettings("min", max_resumes=0)
