"""Read trainer metrics through Prometheus: one instant query per interval for the jobs of one namespace.

The trainer series must carry the labels `namespace`, `stopline_job` (the TrainingJob's name) and `pod`;
the chart's PodMonitor relabels the pod label stopline.dev/job to stopline_job and Prometheus adds
namespace and pod, and the e2e harness's file_sd targets set all three. Labels say only where a series
was scraped: any pod may carry a job's label. A series counts for a job only when its `pod` is the job's
rank-0 pod as the operator trusts it (controlled by the job's Job, by uid) and its `rank`, if any, is 0.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL

from stopline.metrics.exposition import (
    EPOCH,
    EPOCH_SECONDS,
    METRIC,
    METRIC_EPOCH,
    STEP,
    TrainerReport,
    count,
    metric_epochs_of,
)
from stopline.metrics.http import QUERY_MAX_BYTES, FetchError, excerpt, fetch, message

JOB_LABEL = "stopline_job"
AGGREGATED_BY = ("namespace", JOB_LABEL, "pod", "rank", "__name__", "name")  # what tells trainer series apart
# json.loads spends up to ~120 bytes a value (an empty dict per 3 bytes made 8 MiB cost 227 MiB); real
# series take ~15 values in ~300 bytes, so QUERY_MAX_BYTES of them stays under this.
MAX_JSON_VALUES = 500_000
Key = tuple[str, str]  # (namespace, TrainingJob name)


class PrometheusError(RuntimeError):
    """The query failed; the message names the server and the reason."""


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


def query_url(base_url: str) -> URL:
    """The instant-query endpoint under `base_url`'s path (`http://h/prom` -> `http://h/prom/api/v1/query`);
    a query or fragment of `base_url` is dropped, never joined into the path. Raises ValueError for text
    yarl cannot parse."""
    base = URL(base_url)
    return base.with_path(base.raw_path.rstrip("/") + "/api/v1/query", encoded=True)


async def instant_query(
    session: aiohttp.ClientSession, base_url: str, promql: str, timeout_s: float
) -> list[Sample]:
    """The samples of one instant query. A series that is not a Prometheus sample (no value, a label or
    value of the wrong type) is left out; an answer that is not a Prometheus success is a PrometheusError."""
    try:
        url = query_url(base_url)
        answer = await fetch(
            session, url, limit=QUERY_MAX_BYTES, timeout_s=timeout_s, params={"query": promql}
        )
    except ValueError:
        raise PrometheusError(message(base_url, "not a URL")) from None
    except FetchError as error:
        raise PrometheusError(str(error)) from None
    where = f"GET {url}"
    if _json_values(answer.body) > MAX_JSON_VALUES:
        raise PrometheusError(message(where, f"answer of over {MAX_JSON_VALUES} JSON values refused"))
    try:
        body = json.loads(answer.body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
        raise PrometheusError(message(where, f"HTTP {answer.status}, not a Prometheus API answer")) from None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise PrometheusError(message(where, _failure(answer.status, body, promql)))
    samples = _samples(body.get("data"))
    if samples is None:
        raise PrometheusError(message(where, f"HTTP {answer.status}, no data.result in the answer"))
    return samples


def _json_values(body: bytes) -> int:
    """At least the number of values and members in the JSON text `body`: each follows a `[`, `{` or `,`."""
    return body.count(b"[") + body.count(b"{") + body.count(b",") + 1


def _failure(status: int, body: object, promql: str) -> str:
    """What a failed answer says, as an excerpt: Prometheus' `error` text, if the answer has one."""
    fields = body if isinstance(body, dict) else {}
    error, kind = fields.get("error"), fields.get("errorType")
    if not isinstance(error, str):
        return f"HTTP {status}, not a Prometheus API answer"
    what = f"HTTP {status} {excerpt(kind, 20)}" if isinstance(kind, str) else f"HTTP {status}"
    return f"query {excerpt(promql, 60)!r} failed ({what}): {excerpt(error)}"


def _value(pair: object) -> float | None:
    """The number of a `[time, "value"]` pair, as the API writes it; None for anything else."""
    if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], str):
        return None
    try:
        return float(pair[1])
    except ValueError:
        return None


def _sample(item: object) -> Sample | None:
    if not isinstance(item, dict):
        return None
    labels, value = item.get("metric"), _value(item.get("value"))
    if value is None or not isinstance(labels, dict):
        return None
    if not all(isinstance(key, str) and isinstance(text, str) for key, text in labels.items()):
        return None
    return Sample(labels, value)


def _samples(data: object) -> list[Sample] | None:
    """A vector's good samples, a scalar as one sample without labels, [] for other result types; None
    when `data` is not a query result at all."""
    if not isinstance(data, dict):
        return None
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        value = _value(result)
        return None if value is None else [Sample({}, value)]
    if kind != "vector":
        return []
    if not isinstance(result, list):
        return None
    return [sample for item in result if (sample := _sample(item)) is not None]


def _literal(text: str) -> str:
    """`text` as a regular expression matching only itself, inside a PromQL double-quoted string, whose
    escapes are Go's: `resnet\\-lr3e\\-4`, since a bare `\\-` is a PromQL syntax error."""
    return re.escape(text).replace("\\", "\\\\")


def trainer_query(pods: Mapping[Key, str], metrics: Iterable[str]) -> str:
    """One query for the trainer series of each job's rank-0 pod (`pods`: job -> that pod's name), with
    only the `metrics` a spec watches, and one series per pod, series and metric name whatever other labels
    a trainer adds: a trainer exporting thousands of series puts at most a few dozen in the answer."""
    names = "|".join(sorted({_literal(name) for _, name in pods}))
    namespaces = "|".join(sorted({_literal(namespace) for namespace, _ in pods}))
    pod_names = "|".join(sorted({_literal(pod) for pod in pods.values()}))
    watched = "".join(f"{_literal(metric)}|" for metric in sorted(set(metrics)))  # "|": series with no name
    series = "|".join((EPOCH, STEP, METRIC, METRIC_EPOCH, EPOCH_SECONDS))
    selector = (
        f'{{__name__=~"{series}",{JOB_LABEL}=~"{names}",namespace=~"{namespaces}",pod=~"{pod_names}",'
        f'name=~"{watched}"}}'
    )
    return f"max by ({', '.join(AGGREGATED_BY)}) ({selector})"


def from_rank_zero(samples: Iterable[Sample], pods: Mapping[Key, str]) -> list[Sample]:
    """The samples scraped from each job's own rank-0 pod (`pods`: job -> that pod's name): the answer is
    remote input, and neither a pod that only carries a job's label nor another rank speaks for the job.
    A series without `rank` is rank 0's: the chart's PodMonitor sets none for a single-rank job."""
    return [sample for sample in samples if _scraped_from(sample.labels, pods)]


def _scraped_from(labels: Mapping[str, str], pods: Mapping[Key, str]) -> bool:
    pod = pods.get((labels.get("namespace", ""), labels.get(JOB_LABEL, "")))
    return pod is not None and labels.get("pod") == pod and labels.get("rank", "0") == "0"


def reports(samples: Sequence[Sample]) -> dict[Key, TrainerReport]:
    """The samples of one trainer query, already narrowed to rank 0 (`from_rank_zero`), as one report
    per job."""
    by_job: dict[Key, dict[str, dict[str, float]]] = {}
    for sample in samples:
        labels = sample.labels
        if JOB_LABEL not in labels or "namespace" not in labels:
            continue
        values = by_job.setdefault(
            (labels["namespace"], labels[JOB_LABEL]), {"series": {}, "metrics": {}, "epochs": {}}
        )
        if labels.get("__name__") == METRIC and "name" in labels:
            values["metrics"][labels["name"]] = sample.value
        elif labels.get("__name__") == METRIC_EPOCH and "name" in labels:
            values["epochs"][labels["name"]] = sample.value
        else:
            values["series"][labels.get("__name__", "")] = sample.value
    found = {}
    for key, values in by_job.items():
        series = values["series"]
        epoch, step = count(series.get(EPOCH, math.nan)), count(series.get(STEP, math.nan))
        if epoch is not None and step is not None:  # missing, or no position (NaN, -1, 1.5): no report
            seconds = series.get(EPOCH_SECONDS)
            found[key] = TrainerReport(
                epoch=epoch,
                step=step,
                metrics=values["metrics"],
                epoch_seconds=seconds if seconds is not None and math.isfinite(seconds) else None,
                metric_epochs=metric_epochs_of(values["metrics"], values["epochs"]),
            )
    return found


def gpu_utilization_query(namespace: str, job: str) -> str:
    """The busiest GPU of the job's pods in percent: DCGM's utilisation, or on MIG slices (which lack
    it) the graphics engine's active ratio."""
    pods = f'namespace="{namespace}",pod=~"{_literal(job)}-.*"'
    return f"max(DCGM_FI_DEV_GPU_UTIL{{{pods}}}) or 100 * max(DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{pods}}})"
