"""The PromQL path's parsing: one query's samples become one report per job, from its rank-0 pod. Pure."""

from __future__ import annotations

import math

from stopline.metrics.prometheus import Sample, from_rank_zero, reports, trainer_query

POD = "a-7xk2p"  # job a's rank-0 pod, as the registry trusts it (its Job controls it)


def sample(
    series: str, value: float, job: str = "a", pod: str = POD, rank: str | None = "0", **labels: str
) -> Sample:
    """A series as Prometheus answers it; `rank` None: no rank label (a pod without a completion index)."""
    ranked = {"rank": rank} if rank is not None else {}
    return Sample(
        {"__name__": series, "namespace": "ns", "stopline_job": job, "pod": pod, **ranked, **labels}, value
    )


def test_one_query_selects_each_jobs_rank_zero_pod_and_escapes_their_names() -> None:
    """Regex escapes inside a PromQL string are doubled: a bare \\- is a syntax error (HTTP 400)."""
    pods = {("ns", "resnet-lr3e-4"): "resnet-lr3e-4-0-x7k2p", ("ns", "vit.b16"): "vit.b16-abcde"}
    query = trainer_query(pods, {"val_loss", "top1.acc"})
    assert r'stopline_job=~"resnet\\-lr3e\\-4|vit\\.b16"' in query
    assert r'pod=~"resnet\\-lr3e\\-4\\-0\\-x7k2p|vit\\.b16\\-abcde"' in query
    assert 'namespace=~"ns"' in query


def test_the_query_asks_only_for_the_watched_metrics_one_series_each_whatever_else_a_trainer_exports() -> (
    None
):
    """N3: a trainer exporting 30,000 stopline_metric names, or one name under 30,000 other labels, would
    fill the answer every job of its namespace shares; the query leaves them in Prometheus."""
    query = trainer_query({("ns", "a"): POD}, {"val_loss", "train_loss"})
    assert 'name=~"train_loss|val_loss|"' in query  # the empty alternative: stopline_epoch has no name
    assert query.startswith("max by (namespace, stopline_job, pod, rank, __name__, name) ({")


def test_samples_become_one_report_per_job_from_its_rank_zero_pod() -> None:
    found = reports(
        from_rank_zero(
            [
                sample("stopline_epoch", 3),
                sample("stopline_step", 300),
                sample("stopline_metric", 0.25, name="val_loss"),
                sample("stopline_epoch_duration_seconds", math.nan),
                sample("stopline_epoch", 2, rank="1", pod="a-1-k3j4h"),  # a lagging rank: not the progress
                sample("stopline_epoch", 1, job="b", pod="b-9f8g7"),  # no step yet: not a report
            ],
            {("ns", "a"): POD, ("ns", "b"): "b-9f8g7"},
        )
    )
    assert set(found) == {("ns", "a")}
    report = found[("ns", "a")]
    assert (report.epoch, report.step, report.metrics, report.epoch_seconds) == (
        3,
        300,
        {"val_loss": 0.25},
        None,
    )


def test_a_pod_that_only_carries_the_jobs_label_speaks_for_no_job() -> None:
    """M1: anyone who may create pods in the namespace labels one stopline.dev/job=a (the PodMonitor makes
    it stopline_job="a") without a completion index, so without rank: its series are not job a's, and
    neither is a series of a job whose rank-0 pod the operator does not know. Rank 0's own series without
    a rank label are: the chart's PodMonitor sets none for a single-rank job."""
    impostor = "a-impostor"
    samples = [
        sample("stopline_epoch", 9, pod=impostor, rank=None),
        sample("stopline_step", 900, pod=impostor, rank=None),
        sample("stopline_metric", math.nan, pod=impostor, rank=None, name="val_loss"),
        sample("stopline_epoch", 9, pod=impostor),
        Sample({"__name__": "stopline_epoch", "namespace": "ns", "stopline_job": "a", "rank": "0"}, 9),
        sample("stopline_epoch", 2, rank=None),
        sample("stopline_step", 200, rank=None),
        sample("stopline_metric", 0.5, name="val_loss"),
        sample("stopline_epoch", 4, job="c", pod="c-1a2b3"),
        sample("stopline_step", 400, job="c", pod="c-1a2b3"),
    ]
    found = reports(from_rank_zero(samples, {("ns", "a"): POD}))
    assert set(found) == {("ns", "a")}
    assert (found[("ns", "a")].epoch, found[("ns", "a")].metrics) == (2, {"val_loss": 0.5})


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
