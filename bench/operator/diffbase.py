"""What kopf's diff base costs per TrainingJob event: kopf's own build against stopline's slim one.

kopf builds the essence of every watch event's body; stopline writes one status patch per job per epoch,
and each comes back as an event. Run: .venv/bin/python bench/operator/diffbase.py
"""

from __future__ import annotations

import functools
import timeit
from typing import Any, cast

import kopf

from stopline.handlers import SpecDiffBase

FIELD = "status.stopline.diffBase"


def training_job(epochs: int) -> dict[str, Any]:
    """A TrainingJob as the operator's status leaves it after `epochs` epochs (curve, criteria, kopf's)."""
    return {
        "apiVersion": "stopline.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "bench",
            "namespace": "default",
            "labels": {"stopline.dev/study": "s"},
            "annotations": {},
            "managedFields": [{"manager": "stopline", "fieldsV1": {"f:status": {"f:curve": {}}}}],
        },
        "spec": {"maxEpochs": 1000, "criteria": [{"name": "p", "patience": {"patience": 10}}]},
        "status": {
            "phase": "Running",
            "progress": {"epoch": epochs, "step": epochs * 100},
            "curve": [1.0 / (epoch + 1) for epoch in range(epochs)],
            "criteria": [{"name": "p", "state": {"best": 0.1, "wait": 2}, "message": "best 0.1 at epoch 8"}],
            "stopline": {"diffBase": '{"spec":{}}', "progress": {}},
        },
    }


def main() -> None:
    kopfs = kopf.StatusDiffBaseStorage(field=FIELD)
    ours = SpecDiffBase(field=FIELD)
    print("| curve epochs | kopf's build (µs) | slim build (µs) |")
    print("|---|---|---|")
    for epochs in (10, 100, 1000):
        body = kopf.Body(cast(kopf.RawBody, training_job(epochs)))
        times = []
        runs = 2000 if epochs < 1000 else 200
        for storage in (kopfs, ours):
            build = functools.partial(storage.build, body=body)
            times.append(min(timeit.repeat(build, number=runs, repeat=3)) / runs)
        print(f"| {epochs} | {times[0] * 1e6:.0f} | {times[1] * 1e6:.0f} |")


if __name__ == "__main__":
    main()
