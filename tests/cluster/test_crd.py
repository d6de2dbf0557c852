"""The TrainingJob CRD as a user meets it: `kubectl apply` of the real files, defaults, clear rejections."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stopline.api import SpecError, parse_spec
from stopline_local.controlplane import REPO, ControlPlane

pytestmark = pytest.mark.cluster

# examples/local/ too (what the local cluster runs); not examples/kueue/queues.yaml: Kueue's own objects
EXAMPLES = [
    path
    for path in sorted((REPO / "examples").rglob("*.yaml"))
    if all(
        document.get("kind") == "TrainingJob" for document in yaml.safe_load_all(path.read_text()) if document
    )
]


def valid_job(name: str = "job") -> dict[str, Any]:
    return {
        "apiVersion": "stopline.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:dev"}]}},
            "objective": {"metric": "val_loss", "mode": "min"},
            "criteria": [{"name": "plateau", "patience": {"patience": 5}}],
            "checkpoint": {"pvc": {"claimName": "ckpts"}},
        },
    }


def apply(plane: ControlPlane, namespace: str, manifest: dict[str, Any], check: bool = True) -> str:
    result = plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=check)
    return str(result.stderr)


def get(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    out = plane.kubectl("get", "trainingjob", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


def test_crd_is_established_with_short_name_and_status_subresource(crd_installed: ControlPlane) -> None:
    crd = json.loads(crd_installed.kubectl("get", "crd", "trainingjobs.stopline.dev", "-o", "json").stdout)
    assert crd["spec"]["names"]["shortNames"] == ["tj"]
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    names = crd_installed.kubectl("api-resources", "--api-group=stopline.dev", "-o", "name").stdout.split()
    assert names == ["trainingjobs.stopline.dev"]


@pytest.mark.parametrize(
    "example", EXAMPLES, ids=[str(path.relative_to(REPO / "examples")) for path in EXAMPLES]
)
def test_example_applies_and_reads_back_with_defaults(
    crd_installed: ControlPlane, namespace: str, example: Path
) -> None:
    manifests = [document for document in yaml.safe_load_all(example.read_text()) if document]
    assert manifests and all(manifest["kind"] == "TrainingJob" for manifest in manifests)
    crd_installed.kubectl("apply", "-n", namespace, "-f", str(example))
    for manifest in manifests:
        spec = get(crd_installed, namespace, manifest["metadata"]["name"])["spec"]
        assert spec["metrics"]["port"] == 8000
        assert spec["metrics"]["path"] == "/metrics"
        assert spec["metrics"]["staleAfter"] == "15m"
        assert spec["stopPolicy"]["dryRun"] is False
        assert spec["stopPolicy"]["ackTimeout"] == "30s"
        assert spec["checkpoint"]["resume"] is True
        assert spec["replicas"] == manifest["spec"].get("replicas", 1)
        assert spec["objective"] == manifest["spec"]["objective"]
        # stopline.api defaults exactly as the CRD does: the apiserver's filled-in spec parses the same
        assert parse_spec(spec) == parse_spec(manifest["spec"])


def test_defaults_fill_every_criterion_kind(crd_installed: ControlPlane, namespace: str) -> None:
    job = valid_job()
    job["spec"]["metrics"] = {"prometheus": {"url": "http://127.0.0.1:9090"}}
    job["spec"]["criteria"] = [
        {"name": "p", "patience": {}},
        {"name": "d", "divergence": {"value": 10}},
        {"name": "pl", "plateau": {"maxRelativeChange": 0.01}},
        {"name": "c", "cohort": {}},
        {"name": "r", "rungs": {}},
        {"name": "f", "forecast": {}},
        {"name": "g", "gpuIdle": {}},
        {"name": "q", "promql": {"query": "up == 0"}},
    ]
    apply(crd_installed, namespace, job)
    filled = get(crd_installed, namespace, "job")["spec"]
    assert parse_spec(filled) == parse_spec(job["spec"])
    criteria = {c["name"]: c for c in filled["criteria"]}
    assert criteria["p"]["patience"] == {
        "patience": 3,
        "minDelta": 0,
        "minDeltaMode": "absolute",
        "warmupEpochs": 0,
    }
    assert criteria["d"]["divergence"] == {"value": 10, "nonFinite": True, "warmupEpochs": 0}
    assert criteria["pl"]["plateau"]["window"] == 5
    assert criteria["c"]["cohort"] == {
        "percentile": 50,
        "minJobs": 5,
        "warmupEpochs": 0,
        "compare": "best",
        "reference": "runningAverage",
        "includeStopped": True,
    }
    assert criteria["r"]["rungs"] == {
        "minEpochs": 1,
        "reductionFactor": 3,
        "minJobs": 5,
        "compare": "best",
        "cut": "quantile",
        "includeStopped": True,
    }
    assert criteria["f"]["forecast"] == {
        "probability": 0.01,
        "reference": "best",
        "percentile": 10,
        "similarity": 2,
        "neighbours": 20,
        "minJobs": 5,
        "warmupEpochs": 0,
    }
    assert criteria["g"]["gpuIdle"] == {"utilizationBelow": 5, "for": "15m"}
    assert criteria["q"]["promql"]["for"] == "0s"


def _set(path: str, value: Any) -> Any:
    """A mutation that sets a dotted path (list indexes as numbers) in a valid job."""

    def mutate(job: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = job
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(last) if last.isdigit() else last] = value

    return mutate


# Each bad manifest, and the words a user must see: the field path and what is wrong with it.
INVALID = {
    "two-checkpoint-targets": (
        _set("spec.checkpoint.objectStore", {"uri": "s3://bucket/runs/x"}),
        ["spec.checkpoint", "set exactly one checkpoint target: pvc or objectStore"],
    ),
    "no-checkpoint-target": (
        _set("spec.checkpoint", {"keepBest": True}),
        ["spec.checkpoint", "set exactly one checkpoint target"],
    ),
    "criterion-with-two-kinds": (
        _set("spec.criteria.0.threshold", {"value": 0.1}),
        ["spec.criteria[0]", "each criterion sets exactly one kind"],
    ),
    "criterion-with-no-kind": (
        _set("spec.criteria", [{"name": "empty"}]),
        ["spec.criteria[0]", "each criterion sets exactly one kind"],
    ),
    "duplicate-criterion-names": (
        _set("spec.criteria", [{"name": "a", "patience": {}}, {"name": "a", "threshold": {"value": 1}}]),
        ["spec.criteria[1]", 'Duplicate value: {"name":"a"}'],
    ),
    "mode-minimize": (
        _set("spec.objective.mode", "minimize"),
        ["spec.objective.mode", 'Unsupported value: "minimize"', '"min", "max"'],
    ),
    "negative-patience": (
        _set("spec.criteria.0.patience.patience", -2),
        ["spec.criteria[0].patience.patience", "should be greater than or equal to 1"],
    ),
    "percentile-150": (
        _set("spec.criteria", [{"name": "median", "cohort": {"percentile": 150}}]),
        ["spec.criteria[0].cohort.percentile", "should be less than or equal to 100"],
    ),
    "rungs-halving-by-1": (
        _set("spec.criteria", [{"name": "asha", "rungs": {"reductionFactor": 1}}]),
        ["spec.criteria[0].rungs.reductionFactor", "should be greater than or equal to 2"],
    ),
    "forecast-probability-0.6": (
        _set("spec.criteria", [{"name": "fc", "forecast": {"probability": 0.6}}]),
        ["spec.criteria[0].forecast.probability", "should be less than or equal to 0.5"],
    ),
    "forecast-target-without-value": (
        _set("spec.criteria", [{"name": "fc", "forecast": {"reference": "target"}}]),
        ["spec.criteria[0].forecast", "set target: reference target needs the value to beat"],
    ),
    "duration-in-words": (
        _set("spec.metrics", {"interval": "5 minutes"}),
        ["spec.metrics.interval", "should match"],
    ),
    "zero-duration": (
        _set("spec.criteria", [{"name": "b", "budget": {"maxDuration": "0s"}}]),
        ["spec.criteria[0].budget.maxDuration", "must be a positive duration such as 15s, 10m or 6h"],
    ),
    "replicas-0": (
        _set("spec.replicas", 0),
        ["spec.replicas", "should be greater than or equal to 1"],
    ),
    "missing-objective-metric": (
        _set("spec.objective", {"mode": "max"}),
        ["spec.objective.metric", "Required value"],
    ),
    "gpu-idle-without-prometheus": (
        _set("spec.criteria", [{"name": "idle", "gpuIdle": {}}]),
        ["spec.metrics", "set spec.metrics.prometheus.url"],
    ),
    "divergence-that-cannot-fire": (
        _set("spec.criteria", [{"name": "d", "divergence": {"nonFinite": False}}]),
        ["spec.criteria[0].divergence", "set value, or keep nonFinite true"],
    ),
    "budget-without-limit": (
        _set("spec.criteria", [{"name": "b", "budget": {}}]),
        ["spec.criteria[0].budget", "set at least one of maxDuration, maxGPUHours, maxEpochs"],
    ),
    "criterion-name-not-a-dns-label": (
        _set("spec.criteria.0.name", "My Plateau"),
        ["spec.criteria[0].name", "should match"],
    ),
    "template-without-containers": (
        _set("spec.template", {"spec": {"containers": []}}),
        ["spec.template.spec.containers", "should have at least 1 items"],
    ),
    "metrics-port-out-of-range": (
        _set("spec.metrics", {"port": 70000}),
        ["spec.metrics.port", "should be less than or equal to 65535"],
    ),
    "object-store-uri-not-s3": (
        _set("spec.checkpoint", {"objectStore": {"uri": "gs://bucket/x"}}),
        ["spec.checkpoint.objectStore.uri", "should match"],
    ),
    "pvc-path-escapes-the-volume": (
        _set("spec.checkpoint.pvc.path", "../other-team"),
        ["spec.checkpoint.pvc.path", "must be a relative path without '..'"],
    ),
    "threshold-without-value": (
        _set("spec.criteria", [{"name": "t", "threshold": {"metric": "val_acc", "mode": "max"}}]),
        ["spec.criteria[0].threshold.value", "Required value"],
    ),
    # Bounds: a value past them costs the cluster (a scrape storm, a Pod that holds a drain for days, a
    # status past etcd's limit) or is a typo; each refusal names the field and the bound.
    "interval-under-1s": (
        _set("spec.metrics", {"interval": "500ms"}),
        ["spec.metrics.interval", "must be a duration of at least 1s, such as 15s"],
    ),
    "stale-after-over-7-days": (
        _set("spec.metrics", {"staleAfter": "169h"}),
        ["spec.metrics.staleAfter", "must be a positive duration of at most 168h (7 days)"],
    ),
    "grace-period-over-24h": (
        _set("spec.stopPolicy", {"gracePeriod": "24h1s"}),
        ["spec.stopPolicy.gracePeriod", "must be a positive duration of at most 24h"],
    ),
    "ack-timeout-over-1h": (
        _set("spec.stopPolicy", {"ackTimeout": "61m"}),
        ["spec.stopPolicy.ackTimeout", "must be a positive duration of at most 1h"],
    ),
    "metrics-path-too-long": (
        _set("spec.metrics", {"path": "/" + "m" * 1024}),
        ["spec.metrics.path", "Too long: may not be more than 1024"],
    ),
    "metrics-path-relative": (
        _set("spec.metrics", {"path": "metrics"}),
        ["spec.metrics.path", "should match '^/'"],
    ),
    "max-epochs-over-a-million": (
        _set("spec.maxEpochs", 1_000_001),
        ["spec.maxEpochs", "should be less than or equal to 1000000"],
    ),
    "budget-max-epochs-over-a-million": (
        _set("spec.criteria", [{"name": "b", "budget": {"maxEpochs": 1_000_001}}]),
        ["spec.criteria[0].budget.maxEpochs", "should be less than or equal to 1000000"],
    ),
    "warmup-over-a-million": (
        _set("spec.criteria.0.patience.warmupEpochs", 1_000_001),
        ["spec.criteria[0].patience.warmupEpochs", "should be less than or equal to 1000000"],
    ),
    "cohort-warmup-over-a-million": (
        _set("spec.criteria", [{"name": "c", "cohort": {"warmupEpochs": 1_000_001}}]),
        ["spec.criteria[0].cohort.warmupEpochs", "should be less than or equal to 1000000"],
    ),
    "min-jobs-over-10000": (
        _set("spec.criteria", [{"name": "c", "cohort": {"minJobs": 10_001}}]),
        ["spec.criteria[0].cohort.minJobs", "should be less than or equal to 10000"],
    ),
    "max-gpu-hours-over-1e8": (
        _set("spec.criteria", [{"name": "b", "budget": {"maxGPUHours": 1e9}}]),
        ["spec.criteria[0].budget.maxGPUHours", "should be less than or equal to 100000000"],
    ),
    "min-delta-over-1e12": (
        _set("spec.criteria.0.patience.minDelta", 1e13),
        ["spec.criteria[0].patience.minDelta", "should be less than or equal to 1000000000000"],
    ),
    "plateau-windows-over-10000-in-all": (
        _set(
            "spec.criteria",
            [{"name": f"p{i}", "plateau": {"window": 5000, "maxRelativeChange": 0.01}} for i in range(3)],
        ),
        ["spec.criteria", "the plateau windows add up to more than 10000; keep their sum at most 10000"],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_manifest_is_rejected_naming_the_field(
    crd_installed: ControlPlane, namespace: str, case: str
) -> None:
    mutate, expected = INVALID[case]
    job = copy.deepcopy(valid_job(case))
    mutate(job)
    error = apply(crd_installed, namespace, job, check=False)
    assert "is invalid" in error, error
    for words in expected:
        assert words in error, f"{words!r} not in:\n{error}"
    missing = crd_installed.kubectl("get", "tj", case, "-n", namespace, check=False)
    assert missing.returncode != 0, "a rejected TrainingJob must not exist"
    # `stopline replay` validates with stopline.api: it must reject the same spec, at the same field
    with pytest.raises(SpecError) as rejected:
        parse_spec(job["spec"])
    assert rejected.value.path.startswith(expected[0]), rejected.value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spec.replicas", 4),
        ("spec.checkpoint.pvc.claimName", "other"),
        ("spec.template.spec.containers.0.image", "trainer:v2"),
    ],
)
def test_what_defines_the_run_cannot_change_after_creation(
    crd_installed: ControlPlane, namespace: str, field: str, value: Any
) -> None:
    job = valid_job()
    apply(crd_installed, namespace, job)
    _set(field, value)(job)
    error = apply(crd_installed, namespace, job, check=False)
    assert "cannot change after creation; create a new TrainingJob" in error, error


def test_criteria_can_change_while_running(crd_installed: ControlPlane, namespace: str) -> None:
    job = valid_job()
    apply(crd_installed, namespace, job)
    job["spec"]["criteria"][0]["patience"]["patience"] = 10
    apply(crd_installed, namespace, job)
    assert get(crd_installed, namespace, "job")["spec"]["criteria"][0]["patience"]["patience"] == 10


def test_kubectl_get_tj_prints_the_columns_from_status(crd_installed: ControlPlane, namespace: str) -> None:
    apply(crd_installed, namespace, valid_job("resnet"))
    status = {
        "phase": "Stopped",
        "progress": {"epoch": 31, "step": 48000, "metrics": {"val_loss": 0.231}},
        "best": {"metric": "val_loss", "value": 0.228, "epoch": 26},
        "stopReason": {"type": "Patience", "criterion": "plateau", "message": "no improvement", "epoch": 31},
    }
    crd_installed.kubectl(
        "patch", "tj", "resnet", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    lines = crd_installed.kubectl("get", "tj", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "EPOCH", "OBJECTIVE", "BEST", "REASON", "RESUMED", "AGE"]
    assert lines[1].split()[:6] == ["resnet", "Stopped", "31", "val_loss", "0.228", "Patience"]


def test_status_rejects_an_unknown_phase(crd_installed: ControlPlane, namespace: str) -> None:
    apply(crd_installed, namespace, valid_job())
    result = crd_installed.kubectl(
        "patch", "tj", "job", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Done"}}', check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert 'status.phase: Unsupported value: "Done"' in result.stderr


def test_bounds_are_inclusive_and_agree_with_stopline_api(
    crd_installed: ControlPlane, namespace: str
) -> None:
    name = "j" * 63
    job = valid_job(name)
    job["spec"] |= {
        "maxEpochs": 1_000_000,
        "metrics": {"interval": "1s", "staleAfter": "168h", "path": "/" + "m" * 1023},
        "stopPolicy": {"gracePeriod": "24h", "ackTimeout": "1h"},
        "criteria": [
            {"name": "p", "patience": {"warmupEpochs": 1_000_000, "minDelta": 1e12}},
            {"name": "b", "budget": {"maxEpochs": 1_000_000, "maxGPUHours": 1e8}},
            {"name": "c", "cohort": {"minJobs": 10_000}},
            {"name": "w1", "plateau": {"window": 5000, "maxRelativeChange": 0.01}},
            {"name": "w2", "plateau": {"window": 4995, "maxRelativeChange": 0.01}},
            {"name": "w3", "plateau": {"maxRelativeChange": 0.01}},  # the default window, 5: 10000 in all
        ],
    }
    apply(crd_installed, namespace, job)
    assert parse_spec(get(crd_installed, namespace, name)["spec"]) == parse_spec(job["spec"])


@pytest.mark.parametrize("name", ["j" * 64, "1st-run", "run.v2"])
def test_training_job_name_must_be_a_dns_1035_label(
    crd_installed: ControlPlane, namespace: str, name: str
) -> None:
    # Each is a valid custom resource name (a DNS-1123 subdomain), but the Job and Service take the name.
    error = apply(crd_installed, namespace, valid_job(name), check=False)
    assert "is invalid" in error, error
    assert "metadata.name: Invalid value" in error, error
    assert "must be a DNS-1035 label of at most 63 characters" in error, error


@pytest.mark.parametrize(("field", "limit"), [("message", 1024), ("reason", 128)], ids=["message", "reason"])
def test_condition_text_is_bounded(
    crd_installed: ControlPlane, namespace: str, field: str, limit: int
) -> None:
    apply(crd_installed, namespace, valid_job())

    def patch(length: int) -> Any:
        condition = {"type": "Running", "status": "True", field: "x" * length}
        return crd_installed.kubectl(
            "patch", "tj", "job", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"conditions": [condition]}}), check=False,
        )  # fmt: skip

    assert patch(limit).returncode == 0
    refused = patch(limit + 1)
    assert refused.returncode != 0
    assert f"status.conditions[0].{field}: Too long: may not be more than {limit}" in refused.stderr
