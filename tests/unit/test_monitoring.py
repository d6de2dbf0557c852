"""The operator's own metrics: its version, stops and savings by namespace, the savings from status that a
restart does not reset, and the names the chart's dashboard and alerts read."""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import stopline
from stopline import cli, monitoring

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "stopline"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class Job:
    """What the supervisor's registry holds of a TrainingJob, as count_phases reads it."""

    namespace: str
    phase: str = "Stopped"
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, uuid.uuid4().hex[:8]


def namespace() -> str:
    return f"team-{uuid.uuid4().hex[:8]}"


def test_the_version_is_pyprojects_and_stopline_version_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert stopline.__version__ == version, "the installed metadata is stale: run `make venv`"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"stopline {version}\n"
    # the image's tag is the operator's version: the chart's appVersion moves with it
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == version


def test_build_info_carries_the_version_and_python() -> None:
    (metric,) = [m for m in REGISTRY.collect() if m.name == "stopline_build_info"]
    (only,) = metric.samples
    assert only.value == 1
    assert only.labels["version"] == stopline.__version__
    assert re.fullmatch(r"3\.\d+\.\d+", only.labels["python"])


def test_stops_and_their_savings_count_by_namespace() -> None:
    team = namespace()
    monitoring.count_stop("Patience", team, 3600.0)
    monitoring.count_stop("Patience", team, None)  # no maxEpochs: no estimate
    monitoring.count_stop("Cancelled", team)
    assert sample("stopline_stops_total", reason="Patience", namespace=team) == 2
    assert sample("stopline_stops_total", reason="Cancelled", namespace=team) == 1
    assert sample("stopline_gpu_seconds_saved_total", namespace=team) == 3600


def test_a_stop_that_ended_without_its_weights_is_counted_by_namespace_and_reason() -> None:
    team = namespace()
    for reason in ("GracePeriodExpired", "NoCheckpoint", "TrainerFailed", "CheckpointSaved", "Cancelled"):
        monitoring.count_conclusion(team, reason)
    counted = {
        reason: sample("stopline_stops_without_weights_total", namespace=team, reason=reason)
        for reason in ("GracePeriodExpired", "NoCheckpoint", "TrainerFailed", "CheckpointSaved", "Cancelled")
    }
    assert counted == {
        "GracePeriodExpired": 1,
        "NoCheckpoint": 1,
        "TrainerFailed": 1,
        "CheckpointSaved": 0,
        "Cancelled": 0,
    }


def test_the_savings_total_is_summed_from_status_each_tick_so_a_restart_does_not_reset_it() -> None:
    a, b = namespace(), namespace()
    jobs = [
        Job(a, status={"gpuSecondsSaved": 7200}),
        Job(a, status={"gpuSecondsSaved": 1800.5}),
        Job(a, "Running"),
        Job(a, status={"gpuSecondsSaved": "lots"}),  # junk counts nothing
        Job(a, status={"gpuSecondsSaved": float("inf")}),
        Job(b, "Cancelled", status={"gpuSecondsSaved": 60}),
    ]
    monitoring.count_phases(jobs)
    assert sample("stopline_training_jobs_gpu_seconds_saved", namespace=a) == 9000.5
    assert sample("stopline_training_jobs_gpu_seconds_saved", namespace=b) == 60
    assert sample("stopline_training_jobs", phase="Stopped") == 4
    assert sample("stopline_training_jobs", phase="Succeeded") == 0  # every phase, zero included
    assert sample("stopline_leader") == 1  # only the leading process runs the supervisor's tick
    monitoring.count_phases(jobs[:1])  # b's TrainingJobs deleted: its series goes
    assert sample("stopline_training_jobs_gpu_seconds_saved", namespace=a) == 7200
    assert REGISTRY.get_sample_value("stopline_training_jobs_gpu_seconds_saved", {"namespace": b}) is None


def exported_names() -> set[str]:
    names = set()
    for metric in REGISTRY.collect():
        if metric.name.startswith("stopline_"):
            names |= {each.name for each in metric.samples} | {metric.name}
    return names


def test_the_dashboard_and_the_alerts_read_only_metrics_the_operator_exports() -> None:
    team = namespace()  # labelled series exist once counted
    monitoring.count_stop("Patience", team, 1.0)
    monitoring.count_resume("Manual", team, 1.0)
    monitoring.count_conclusion(team, "NoCheckpoint")
    monitoring.count_phases([Job(team, status={"gpuSecondsSaved": 1})])
    exported = exported_names()
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    read = set(re.findall(r"\bstopline_[a-z_]+", " ".join(exprs) + rules))
    assert read - exported == set()
    assert {"stopline_leader", "stopline_build_info", "stopline_training_jobs_gpu_seconds_saved"} <= read
    assert "stopline_gpu_seconds_resumed_total" in read  # the in-range savings panel takes resumes back
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
