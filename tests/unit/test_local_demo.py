"""`make demo`'s summary counts epochs against the maxEpochs of the TrainingJobs it applied, whatever the
YAML in examples/local/ says."""

from __future__ import annotations

from typing import Any

import yaml

from stopline_local.demo import SWEEP, summary


def job(name: str, epoch: int, max_epochs: object = None, **status: Any) -> dict[str, Any]:
    spec = {} if max_epochs is None else {"maxEpochs": max_epochs}
    return {
        "metadata": {"name": name},
        "spec": spec,
        "status": {"phase": "Succeeded", "progress": {"epoch": epoch}, **status},
    }


def test_the_summary_reads_max_epochs_from_each_applied_job() -> None:
    stopped = {"stopReason": {"type": "Cohort", "criterion": "median", "message": "worse than the median"}}
    text = summary([job("short", 10, 10), job("long", 5, 40, **stopped)])
    assert "short: Succeeded at epoch 10/10; ran to the end" in text
    assert "long: Succeeded at epoch 5/40; Cohort (median): worse than the median" in text
    assert "15 of 50 epochs run, 35 saved (70%)" in text


def test_a_job_without_a_usable_max_epochs_is_left_out_of_the_saving() -> None:
    text = summary([job("set", 3, 4), job("unset", 7), job("hostile", 2, "many")])
    assert "unset: Succeeded at epoch 7; ran to the end" in text
    assert "hostile: Succeeded at epoch 2; ran to the end" in text
    assert "3 of 4 epochs run, 1 saved (25%)" in text
    assert "epochs run" not in summary([job("unset", 7)])


def test_the_demo_sweep_is_four_jobs_of_one_study_with_15_epochs() -> None:
    jobs = [document for document in yaml.safe_load_all(SWEEP.read_text()) if document]
    assert [j["metadata"]["name"] for j in jobs] == ["lr-3e-3", "lr-2e-3", "lr-1e-3", "lr-1e-7"]
    assert {j["metadata"]["labels"]["stopline.dev/study"] for j in jobs} == {"resnet-sweep"}
    for training_job in jobs:
        spec = training_job["spec"]
        assert spec["maxEpochs"] == 15
        args = spec["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--epochs") + 1] == "15"  # the trainer runs as long as the job allows
        assert spec["checkpoint"]["pvc"]["claimName"] == "checkpoints"
