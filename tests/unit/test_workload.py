"""The children a TrainingJob gets, as the trainer pods will see them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stopline.api import parse_spec
from stopline.workload import Owner, build_job, build_service, build_token_secret
from stopline_local.controlplane import REPO

OWNER = Owner(name="resnet", namespace="ml", uid="1234", study="resnet-sweep")


def spec_of(example: str) -> Any:
    return parse_spec(yaml.safe_load((REPO / "examples" / example).read_text())["spec"])


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {
        variable["name"]: variable.get("value", variable.get("valueFrom")) for variable in container["env"]
    }


def test_single_rank_job_gets_the_trainer_contract_and_the_pvc() -> None:
    job = build_job(OWNER, spec_of("gpu-patience-pvc.yaml"))
    env = env_of(job)
    assert env["STOPLINE_JOB"] == "resnet"
    assert env["STOPLINE_NAMESPACE"] == "ml"
    assert env["STOPLINE_METRICS_PORT"] == "8000"
    assert env["STOPLINE_CHECKPOINT_URI"] == "/stopline/checkpoints/runs/resnet-lr3e-4"
    assert env["STOPLINE_KEEP_BEST"] == "true"
    assert env["STOPLINE_RESUME"] == "true"
    assert env["STOPLINE_CONTROL_TOKEN"] == {
        "secretKeyRef": {"name": "resnet-stopline-control", "key": "token"}
    }
    assert (env["RANK"], env["WORLD_SIZE"]) == ("0", "1")
    assert "completionMode" not in job["spec"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 600
    assert pod["volumes"] == [
        {"name": "stopline-checkpoints", "persistentVolumeClaim": {"claimName": "checkpoints"}}
    ]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "stopline-checkpoints", "mountPath": "/stopline/checkpoints"}
    ]


def test_without_a_path_each_training_job_gets_its_own_folder_on_the_claim() -> None:
    raw = yaml.safe_load((REPO / "examples" / "gpu-patience-pvc.yaml").read_text())["spec"]
    del raw["checkpoint"]["pvc"]["path"]
    spec = parse_spec(raw)
    first = Owner(name="resnet", namespace="ml", uid="1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    again = Owner(name="resnet", namespace="ml", uid="6fa459ea-ee8a-3ca4-894e-db77e160355e")
    other = Owner(name="resnet", namespace="team-b", uid="1b4e28ba-2fa1-11d2-883f-0016d3cca427")
    uris = [env_of(build_job(owner, spec))["STOPLINE_CHECKPOINT_URI"] for owner in (first, again, other)]
    assert uris == [
        "/stopline/checkpoints/ml/resnet-1b4e28ba",
        "/stopline/checkpoints/ml/resnet-6fa459ea",  # deleted and created again: a new folder
        "/stopline/checkpoints/team-b/resnet-1b4e28ba",
    ]


def test_resume_false_reaches_the_trainer() -> None:
    raw = yaml.safe_load((REPO / "examples" / "gpu-patience-pvc.yaml").read_text())["spec"]
    raw["checkpoint"]["resume"] = False
    assert env_of(build_job(OWNER, parse_spec(raw)))["STOPLINE_RESUME"] == "false"


def test_two_ranks_make_an_indexed_job_whose_rank_is_the_completion_index() -> None:
    spec = spec_of("sweep-member-s3.yaml")
    job = build_job(OWNER, spec)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    env = env_of(job)
    assert env["RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env["WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == "resnet-0.resnet"
    assert env["STOPLINE_CHECKPOINT_URI"] == "s3://ml-checkpoints/resnet-sweep/lr1e-3"
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert job["spec"]["template"]["spec"]["subdomain"] == build_service(OWNER)["metadata"]["name"]
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 300


def test_children_carry_labels_and_an_owner_reference() -> None:
    for child in (build_job(OWNER, spec_of("gpu-patience-pvc.yaml")), build_service(OWNER)):
        metadata = child["metadata"]
        assert metadata["labels"]["stopline.dev/job"] == "resnet"
        assert metadata["labels"]["stopline.dev/study"] == "resnet-sweep"
        assert metadata["ownerReferences"][0]["uid"] == "1234"
        assert metadata["ownerReferences"][0]["controller"] is True
    template_labels = build_job(OWNER, spec_of("gpu-patience-pvc.yaml"))["spec"]["template"]["metadata"][
        "labels"
    ]
    assert template_labels["stopline.dev/job"] == "resnet"


def test_the_users_own_variables_win_and_the_template_is_not_changed(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "examples" / "gpu-patience-pvc.yaml").read_text())["spec"]
    raw["template"]["spec"]["containers"].insert(0, {"name": "sidecar", "image": "proxy"})
    raw["template"]["spec"]["containers"][1]["env"] = [{"name": "MASTER_PORT", "value": "1234"}]
    spec = parse_spec(raw)
    job = build_job(OWNER, spec)
    sidecar, trainer = job["spec"]["template"]["spec"]["containers"]
    assert "env" not in sidecar
    ports = [v["value"] for v in trainer["env"] if v["name"] == "MASTER_PORT"]
    assert ports == ["1234"]
    assert (
        spec.template is not None and "metadata" not in spec.template
    )  # the spec is not mutated: building twice gives the same Job
    assert build_job(OWNER, spec) == job


def test_token_secret_holds_the_token() -> None:
    secret = build_token_secret(OWNER, "s3cr3t")
    assert secret["stringData"] == {"token": "s3cr3t"}
    assert secret["metadata"]["name"] == "resnet-stopline-control"


def test_a_trainingjob_with_a_queue_label_gets_a_suspended_job_with_the_queue_labels_only() -> None:
    """Kueue admits the Job by unsuspending it: no pod starts before; the pods carry no queue label (Kueue
    would take them for pods of its own to admit)."""
    queue = (("kueue.x-k8s.io/queue-name", "team-a"), ("kueue.x-k8s.io/priority-class", "low"))
    owner = Owner("tj", "ns", "uid-1", queue=queue)
    job = build_job(owner, spec_of("gpu-patience-pvc.yaml"))
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"
    assert not any(key.startswith("kueue.x-k8s.io/") for key in job["spec"]["template"]["metadata"]["labels"])
    assert "suspend" not in build_job(OWNER, spec_of("gpu-patience-pvc.yaml"))["spec"]
