"""Spec parsing: defaults from the CRD, and errors that name the field and the fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stopline import api
from stopline.criteria.cohort import CohortCriterion
from stopline.criteria.patience import PatienceCriterion

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "template": {"spec": {"containers": [{"name": "trainer"}]}},
    "objective": {"metric": "val_loss"},
    "checkpoint": {"pvc": {"claimName": "ckpt"}},
}


def with_(**changes: Any) -> dict[str, Any]:
    return copy.deepcopy(BASE) | changes


def test_defaults_follow_the_crd() -> None:
    spec = api.parse_spec(with_(criteria=[{"name": "p", "patience": {}}, {"name": "c", "cohort": None}]))
    assert spec.objective == api.Objective("val_loss", "min")
    assert spec.metrics.stale_after.seconds == 900 and spec.metrics.interval.seconds == 15
    assert spec.stop_policy == api.StopPolicy()
    assert spec.criteria[0] == PatienceCriterion("p", "val_loss", "min", 3, 0.0, "absolute", 0, None)
    cohort = spec.criteria[1]
    assert isinstance(cohort, CohortCriterion)
    assert (cohort.percentile, cohort.min_jobs, cohort.compare, cohort.reference, cohort.include_stopped) == (
        50.0, 5, "best", "runningAverage", True,
    )  # fmt: skip


def test_a_resume_policy_defaults_to_the_measured_bound_and_one_at_a_time() -> None:
    assert api.parse_spec(with_()).resume_policy is None  # unset: a stop is final unless a person resumes
    policy = api.parse_spec(with_(resumePolicy={})).resume_policy
    assert policy is not None
    knobs = (policy.probability, policy.max_resumes, policy.unseen, policy.min_jobs)
    assert knobs == (0.02, 1, "evidence", 5)
    assert policy.mode == "min"  # the objective's


def test_criteria_inherit_the_objective_unless_they_override_it() -> None:
    spec = api.parse_spec(
        with_(objective={"metric": "acc", "mode": "max"}, criteria=[
            {"name": "a", "threshold": {"value": 0.9}},
            {"name": "b", "divergence": {"metric": "train_loss", "mode": "min", "value": 10}},
        ])
    )  # fmt: skip
    assert [(c.metric, c.mode) for c in spec.criteria] == [("acc", "max"), ("train_loss", "min")]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "path", sorted((REPO / "examples").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO / "examples"))
)
def test_examples_parse(path: Path) -> None:
    documents = [document for document in yaml.safe_load_all(path.read_text()) if document]
    manifests = [document for document in documents if document.get("kind") == "TrainingJob"]
    assert manifests or path.parent.name == "kueue"  # examples/kueue/queues.yaml: Kueue's own objects
    for manifest in manifests:
        assert api.parse_spec(manifest["spec"]).criteria, manifest["metadata"]["name"]


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        (
            {
                "criteria": [
                    {"name": "a", "threshold": {"value": 1}},
                    {"name": "b", "patience": {"patience": -2}},
                ]
            },
            "spec.criteria[1].patience.patience: must be an integer within 1..100000, got -2",
        ),
        (
            {"objective": {"metric": "val_loss", "mode": "lowest"}},
            "spec.objective.mode: must be one of min, max",
        ),
        ({"objective": {"mode": "min"}}, "spec.objective.metric: is required"),
        ({"criteria": [{"name": "x"}]}, "spec.criteria[0]: must set exactly one kind of patience, threshold"),
        (
            {"criteria": [{"name": "x", "patience": {}, "threshold": {"value": 1}}]},
            "spec.criteria[0]: must set exactly one kind of patience, threshold, divergence, plateau, "
            "budget, cohort, rungs, forecast, gpuIdle or promql; found patience and threshold",
        ),
        ({"criteria": [{"name": "x", "median": {}}]}, "spec.criteria[0].median: unknown field"),
        (
            {"criteria": [{"name": "x", "patience": {}}, {"name": "x", "patience": {}}]},
            "spec.criteria[1].name: 'x' is already the name of criteria[0]; names must be unique",
        ),
        ({"criteria": [{"name": "Bad_Name", "patience": {}}]}, "spec.criteria[0].name: must match"),
        (
            {"criteria": [{"name": "b", "budget": {}}]},
            "spec.criteria[0].budget: set at least one of maxDuration",
        ),
        (
            {"criteria": [{"name": "b", "budget": {"maxDuration": "6 hours"}}]},
            "spec.criteria[0].budget.maxDuration: must be a positive duration such as 15s, 10m or 6h, "
            "got '6 hours'",
        ),
        ({"metrics": {"interval": "0s"}}, "spec.metrics.interval: must be a positive duration"),
        (
            {"criteria": [{"name": "d", "divergence": {"nonFinite": False}}]},
            "spec.criteria[0].divergence: set value, or keep nonFinite true",
        ),
        (
            {"criteria": [{"name": "i", "gpuIdle": {}}]},
            "spec.metrics.prometheus.url: is required: criteria i (gpuIdle/promql) read Prometheus",
        ),
        (
            {"criteria": [{"name": "s", "plateau": {"maxRelativeChange": 0}}]},
            "spec.criteria[0].plateau.maxRelativeChange: must be a number > 0, got 0",
        ),
        (
            {"criteria": [{"name": "s", "patience": {"smoothing": 1.5}}]},
            "spec.criteria[0].patience.smoothing: must be a number > 0 and <= 1, got 1.5",
        ),
        (
            {"criteria": [{"name": "c", "cohort": {"percentile": 101}}]},
            "spec.criteria[0].cohort.percentile: must be a number >= 0 and <= 100, got 101",
        ),
        ({"checkpoint": {}}, "spec.checkpoint: set exactly one checkpoint target: pvc or objectStore"),
        (
            {"checkpoint": {"pvc": {"claimName": "c", "path": "../up"}}},
            "spec.checkpoint.pvc.path: must be a relative",
        ),
        ({"checkpoint": {"objectStore": {"uri": "gs://b/x"}}}, "spec.checkpoint.objectStore.uri: must match"),
        ({"replicas": True}, "spec.replicas: must be an integer within 1..1024, got True"),
        ({"template": {"spec": {"containers": []}}}, "spec.template.spec.containers: must list at least one"),
        (
            {"criteria": [{"name": "f", "forecast": {"probability": 0.05}}], "resumePolicy": {}},
            "spec.resumePolicy.probability: must be at least criterion f's forecast probability (0.05)",
        ),
        ({"resumePolicy": {"unseen": "always"}}, "spec.resumePolicy.unseen: must be one of evidence, resume"),
        ({"resumePolicy": {"maxConcurrent": 0}}, "spec.resumePolicy.maxConcurrent: must be an integer"),
        (
            {
                "template": None,
                "targetRef": {"apiVersion": "batch/v1", "kind": "Job", "name": "j"},
                "resumePolicy": {},
            },
            "spec.resumePolicy: cannot be set with spec.targetRef or spec.targetSelector yet",
        ),
    ],
)
def test_errors_name_the_field_and_the_fix(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(api.SpecError) as raised:
        api.parse_spec(with_(**changes))
    assert str(raised.value).startswith(error)


def test_durations_add_up_their_parts() -> None:
    assert api.parse_duration("1h30m").seconds == 5400
    assert api.parse_duration("1.5s250ms").seconds == 1.75
    with pytest.raises(ValueError):
        api.parse_duration("1d")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://prometheus/api/v1/status?x=", "must have no query ('?')"),
        ("http://metadata.internal/latest#/", "must have no fragment ('#')"),
        ("http://user:secret@prometheus:9090", "must not carry a user or password"),
        ("http://:9090", "must be an http:// or https:// address with a host"),
        ("http://prometheus:99999", "must be an http:// or https:// address with a host and a valid port"),
        ("http://[fd00::1", "must be an http:// or https:// address with a host"),
        ("http://prometheus\\@evil:9090", "must not contain spaces, control characters or backslashes"),
        ("http://prometheus:9090/\r\nX-Injected: 1", "must not contain spaces, control characters"),
    ],
)
def test_a_prometheus_url_must_be_a_plain_server_address(url: str, problem: str) -> None:
    """The operator queries it from inside the cluster: the spec must not choose its path, query or user."""
    with pytest.raises(api.SpecError) as raised:
        api.parse_spec(with_(metrics={"prometheus": {"url": url}}))
    assert str(raised.value).startswith(f"spec.metrics.prometheus.url: {problem}")


@pytest.mark.parametrize(
    "url", ["http://prometheus.monitoring:9090", "https://example.org/prometheus/", "http://[fd00::1]:9090"]
)
def test_a_prometheus_server_address_is_taken_as_written(url: str) -> None:
    assert api.parse_spec(with_(metrics={"prometheus": {"url": url}})).metrics.prometheus_url == url


def _criterion(kind: str, **fields: Any) -> dict[str, Any]:
    return {"criteria": [{"name": "c", kind: fields}]}


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"maxEpochs": 1_000_001}, "spec.maxEpochs: must be an integer within 1..1000000, got 1000001"),
        (
            {"metrics": {"interval": "999ms"}},
            "spec.metrics.interval: must be a duration of at least 1s, got '999ms'",
        ),
        (
            {"metrics": {"staleAfter": "168h1s"}},
            "spec.metrics.staleAfter: must be a duration of at most 168h",
        ),
        (
            {"metrics": {"path": "/" + "m" * 1024}},
            "spec.metrics.path: must be at most 1024 characters, got 1025",
        ),
        (
            {"stopPolicy": {"gracePeriod": "24h1s"}},
            "spec.stopPolicy.gracePeriod: must be a duration of at most 24h",
        ),
        (
            {"stopPolicy": {"ackTimeout": "61m"}},
            "spec.stopPolicy.ackTimeout: must be a duration of at most 1h",
        ),
        (
            _criterion("patience", warmupEpochs=1_000_001),
            "spec.criteria[0].patience.warmupEpochs: must be an integer within 0..1000000",
        ),
        (
            _criterion("cohort", warmupEpochs=1_000_001),
            "spec.criteria[0].cohort.warmupEpochs: must be an integer within 0..1000000",
        ),
        (
            _criterion("patience", minDelta=1e13),
            "spec.criteria[0].patience.minDelta: must be a number >= 0 and <= 1000000000000",
        ),
        (
            _criterion("budget", maxEpochs=1_000_001),
            "spec.criteria[0].budget.maxEpochs: must be an integer within 1..1000000",
        ),
        (
            _criterion("budget", maxGPUHours=1e9),
            "spec.criteria[0].budget.maxGPUHours: must be a number > 0 and <= 100000000",
        ),
        (
            _criterion("cohort", minJobs=10_001),
            "spec.criteria[0].cohort.minJobs: must be an integer within 1..10000",
        ),
        (
            {
                "criteria": [
                    {"name": f"p{i}", "plateau": {"window": 5000, "maxRelativeChange": 0.1}} for i in range(3)
                ]
            },
            "spec.criteria: the plateau windows add up to 15000; keep their sum at most 10000",
        ),
    ],
)
def test_bounds_are_the_crds(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(api.SpecError) as raised:
        api.parse_spec(with_(**changes))
    assert str(raised.value).startswith(error)


def test_bounds_are_inclusive() -> None:
    spec = api.parse_spec(
        with_(
            maxEpochs=1_000_000,
            metrics={"interval": "1s", "staleAfter": "168h", "path": "/" + "m" * 1023},
            stopPolicy={"gracePeriod": "24h", "ackTimeout": "1h"},
            criteria=[
                {"name": "w1", "plateau": {"window": 5000, "maxRelativeChange": 0.1}},
                {"name": "w2", "plateau": {"window": 4995, "maxRelativeChange": 0.1}},
                {"name": "w3", "plateau": {"maxRelativeChange": 0.1}},  # the default window, 5: 10000 in all
                {"name": "c", "cohort": {"minJobs": 10_000, "warmupEpochs": 1_000_000}},
            ],
        )
    )
    assert (spec.max_epochs, spec.metrics.interval.seconds, spec.stop_policy.grace_period.seconds) == (
        1_000_000, 1.0, 86_400.0,
    )  # fmt: skip


def test_a_gpu_limit_that_is_not_ascii_digits_counts_as_no_gpu_not_a_crash() -> None:
    for count in ("\u00b2", "9" * 5000, "-1", 2):
        container = {"name": "trainer", "image": "t:1", "resources": {"limits": {"nvidia.com/gpu": count}}}
        job = api.parse_spec(
            {
                "template": {"spec": {"containers": [container]}},
                "objective": {"metric": "val_loss", "mode": "min"},
                "checkpoint": {"pvc": {"claimName": "ckpt"}},
            }
        )
        assert job.gpus == (2 if count == 2 else 1)
