"""The builders' output against the real apiserver and controllers: accepted, run, garbage-collected."""

from __future__ import annotations

import json

import pytest

from stopline.api import parse_spec
from stopline.workload import Owner, build_job, build_service, build_token_secret
from stopline_local.controlplane import REPO, ControlPlane, wait_until

pytestmark = pytest.mark.cluster


def test_children_of_a_two_rank_job_run_as_indexed_pods_and_go_with_their_owner(
    crd_installed: ControlPlane, namespace: str
) -> None:
    plane = crd_installed
    plane.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "sweep-member-s3.yaml"))
    name = "resnet-sweep-lr1e-3"
    created = json.loads(plane.kubectl("get", "tj", name, "-n", namespace, "-o", "json").stdout)
    owner = Owner(
        name=created["metadata"]["name"],
        namespace=namespace,
        uid=created["metadata"]["uid"],
        study=created["metadata"]["labels"]["stopline.dev/study"],
    )
    spec = parse_spec(created["spec"])
    children = [build_token_secret(owner, "token"), build_service(owner), build_job(owner, spec)]
    children_list = {"apiVersion": "v1", "kind": "List", "items": children}
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(children_list))

    def pods() -> list[dict[str, object]]:
        out = plane.kubectl(
            "get", "pods", "-n", namespace, "-l", "stopline.dev/job=resnet-sweep-lr1e-3", "-o", "json"
        )
        return list(json.loads(out.stdout)["items"])

    wait_until(lambda: len(pods()) == 2, 60, "the Job controller to create 2 trainer pods")
    hostnames = sorted(pod["spec"]["hostname"] for pod in pods())  # type: ignore[index]
    assert hostnames == ["resnet-sweep-lr1e-3-0", "resnet-sweep-lr1e-3-1"]

    plane.kubectl("delete", "tj", name, "-n", namespace)

    def children_gone() -> bool:
        left = plane.kubectl(
            "get", "job,service,secret", "-n", namespace, "-l", "stopline.dev/job", "-o", "name"
        )
        return left.stdout.strip() == ""

    wait_until(children_gone, 60, "the garbage collector to delete the Job, Service and Secret")
