"""Read trainer metrics through Prometheus: one instant query per interval for every job on that server.

The trainer series must carry the labels `namespace` and `stopline_job` (the TrainingJob's name); the
chart's PodMonitor relabels the pod label stopline.dev/job to it, and the e2e harness's file_sd targets
set it. `rank` tells rank 0 apart when several ranks are scraped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from stopline.metrics.exposition import EPOCH, EPOCH_SECONDS, METRIC, STEP, TrainerReport

JOB_LABEL = "stopline_job"
Key = tuple[str, str]  # (namespace, TrainingJob name)


class PrometheusError(RuntimeError):
    """The query failed; the message names the server and the reason."""


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]
    value: float


async def instant_query(
    session: aiohttp.ClientSession, base_url: str, promql: str, timeout_s: float
) -> list[Sample]:
    url = f"{base_url.rstrip('/')}/api/v1/query"
    try:
        async with session.get(
            url, params={"query": promql}, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise PrometheusError(f"{url}: {type(error).__name__} {error}".rstrip()) from None
    if not isinstance(body, dict) or body.get("status") != "success":
        error_text = body.get("error") if isinstance(body, dict) else body
        raise PrometheusError(f"{url}: query {promql!r} failed: {error_text}")
    result = body["data"]["result"]
    if body["data"].get("resultType") != "vector":
        return [Sample({}, float(result[1]))] if body["data"].get("resultType") == "scalar" else []
    return [Sample(item["metric"], float(item["value"][1])) for item in result]


def _literal(text: str) -> str:
    """`text` as a regular expression matching only itself, inside a PromQL double-quoted string, whose
    escapes are Go's: `resnet\\-lr3e\\-4`, since a bare `\\-` is a PromQL syntax error."""
    return re.escape(text).replace("\\", "\\\\")


def trainer_query(keys: Iterable[Key]) -> str:
    """One selector for the trainer series of every job in `keys`."""
    names = sorted({_literal(name) for _, name in keys})
    namespaces = sorted({_literal(namespace) for namespace, _ in keys})
    series = "|".join((EPOCH, STEP, METRIC, EPOCH_SECONDS))
    return f'{{__name__=~"{series}",{JOB_LABEL}=~"{"|".join(names)}",namespace=~"{"|".join(namespaces)}"}}'


def reports(samples: Sequence[Sample]) -> dict[Key, TrainerReport]:
    """The samples of one trainer query, as one report per job from rank 0 (or the only rank seen)."""
    by_job: dict[Key, dict[str, dict[str, float]]] = {}
    for sample in samples:
        labels = sample.labels
        if labels.get("rank", "0") != "0" or JOB_LABEL not in labels or "namespace" not in labels:
            continue
        values = by_job.setdefault((labels["namespace"], labels[JOB_LABEL]), {"series": {}, "metrics": {}})
        if labels.get("__name__") == METRIC and "name" in labels:
            values["metrics"][labels["name"]] = sample.value
        else:
            values["series"][labels.get("__name__", "")] = sample.value
    found = {}
    for key, values in by_job.items():
        series = values["series"]
        if EPOCH in series and STEP in series:
            seconds = series.get(EPOCH_SECONDS)
            found[key] = TrainerReport(
                epoch=int(series[EPOCH]),
                step=int(series[STEP]),
                metrics=values["metrics"],
                epoch_seconds=seconds if seconds is not None and math.isfinite(seconds) else None,
            )
    return found


def gpu_utilization_query(namespace: str, job: str) -> str:
    """The busiest GPU of the job's pods in percent: DCGM's utilisation, or on MIG slices (which lack
    it) the graphics engine's active ratio."""
    pods = f'namespace="{namespace}",pod=~"{_literal(job)}-.*"'
    return f"max(DCGM_FI_DEV_GPU_UTIL{{{pods}}}) or 100 * max(DCGM_FI_PROF_GR_ENGINE_ACTIVE{{{pods}}})"
