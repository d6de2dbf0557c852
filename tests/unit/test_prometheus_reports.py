"""The PromQL path's parsing: one query's samples become one report per job, from rank 0. Pure code."""

from __future__ import annotations

import math

from stopline.metrics.prometheus import Sample, reports, trainer_query


def sample(series: str, value: float, job: str = "a", rank: str = "0", **labels: str) -> Sample:
    return Sample({"__name__": series, "namespace": "ns", "stopline_job": job, "rank": rank, **labels}, value)


def test_one_query_selects_every_job_and_escapes_their_names() -> None:
    """Regex escapes inside a PromQL string are doubled: a bare \\- is a syntax error (HTTP 400)."""
    query = trainer_query([("ns", "resnet-lr3e-4"), ("team", "vit.b16")])
    assert r'stopline_job=~"resnet\\-lr3e\\-4|vit\\.b16"' in query
    assert 'namespace=~"ns|team"' in query


def test_samples_become_one_report_per_job_from_rank_zero() -> None:
    found = reports(
        [
            sample("stopline_epoch", 3),
            sample("stopline_step", 300),
            sample("stopline_metric", 0.25, name="val_loss"),
            sample("stopline_epoch_duration_seconds", math.nan),
            sample("stopline_epoch", 2, rank="1"),  # a lagging rank is not the job's progress
            sample("stopline_epoch", 1, job="b"),  # no step yet: not a report
        ]
    )
    assert set(found) == {("ns", "a")}
    report = found[("ns", "a")]
    assert (report.epoch, report.step, report.metrics, report.epoch_seconds) == (
        3,
        300,
        {"val_loss": 0.25},
        None,
    )


def test_a_job_whose_epoch_or_step_is_no_position_has_no_report_and_the_others_do() -> None:
    """One trainer exporting NaN (or Inf, 1e300, -1, 1.5) must not blind the other jobs on that server."""
    bad = {"nan": math.nan, "inf": math.inf, "huge": 1e300, "negative": -1.0, "half": 1.5}
    samples = [sample("stopline_epoch", 4, job="good"), sample("stopline_step", 40, job="good")]
    for job, value in bad.items():
        samples += [sample("stopline_epoch", value, job=job), sample("stopline_step", 10, job=job)]
    samples += [sample("stopline_epoch", 2, job="badstep"), sample("stopline_step", math.nan, job="badstep")]
    found = reports(samples)
    assert set(found) == {("ns", "good")}
    assert (found[("ns", "good")].epoch, found[("ns", "good")].step) == (4, 40)
