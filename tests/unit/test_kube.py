"""The operator's Kubernetes client against a loopback server standing in for the apiserver (the unit tier
has none; the cluster tier runs the same calls against the real one)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client

from stopline.kube import Kube

JOB_UID = "job-uid-1"


def workload(name: str, owner_uid: str) -> dict[str, Any]:
    reference = {"apiVersion": "batch/v1", "kind": "Job", "name": "a", "uid": owner_uid, "controller": True}
    labels = {"kueue.x-k8s.io/job-uid": JOB_UID}  # what anyone in the namespace can write on a Workload
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "ownerReferences": [reference]},
        "status": {"conditions": [{"type": "QuotaReserved", "status": "False", "message": f"{name} says"}]},
    }


def test_only_the_workload_kueue_made_for_the_job_speaks_for_it_not_one_that_carries_its_label() -> None:
    """Review N15: a Workload labelled with the Job's uid by a namespace member could put its words in the
    TrainingJob's Admitted condition (and be deactivated by a stop); only the one the Job controls counts."""

    async def scenario() -> list[str]:
        async def workloads(request: web.Request) -> web.Response:
            items = [workload("spoofed", "someone-else"), workload("kueues", JOB_UID)]
            return web.json_response({"items": items})

        runner = web.AppRunner(web.Application())
        runner.app.router.add_get("/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads", workloads)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{runner.addresses[0][1]}"
        kube = Kube(configuration, aiohttp.ClientSession())
        try:
            return [item["metadata"]["name"] for item in await kube.list_workloads("ns", JOB_UID)]
        finally:
            await kube.close()
            await runner.cleanup()

    assert asyncio.run(scenario()) == ["kueues"]
