"""kopf's diff base: stopline's slim build gives kopf the same essence as kopf's own, for every kind of body
the operator watches, so create/update/resume handlers fire exactly as before."""

from __future__ import annotations

import copy
from typing import Any, cast

import kopf
import pytest

from stopline.handlers import SpecDiffBase

FIELD = "status.stopline.diffBase"

TRAINING_JOB: dict[str, Any] = {
    "apiVersion": "stopline.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {
        "name": "lr-1e-3",
        "namespace": "team-a",
        "uid": "0b6c",
        "resourceVersion": "812",
        "generation": 3,
        "labels": {"stopline.dev/study": "sweep"},
        "annotations": {
            "stopline.dev/stop": "enough",
            "kubectl.kubernetes.io/last-applied-configuration": "{...}",
        },
        "managedFields": [{"manager": "stopline", "fieldsV1": {"f:status": {}}}],
    },
    "spec": {"maxEpochs": 50, "criteria": [{"name": "p", "patience": {"patience": 5}}]},
    "status": {
        "phase": "Running",
        "curve": [{"epoch": epoch, "value": 1.0 / (epoch + 1)} for epoch in range(1000)],
        "stopline": {"diffBase": '{"spec":{"maxEpochs":50}}', "progress": {}},
    },
}

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "lr-1e-3-0-abcde", "namespace": "team-a", "labels": {"stopline.dev/job": "lr-1e-3"}},
    "spec": {"containers": [{"name": "trainer", "image": "trainer:1"}]},
    "status": {"phase": "Running", "podIP": "127.0.0.9"},
}

BARE: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}}


@pytest.mark.parametrize("raw", [TRAINING_JOB, POD, BARE], ids=["trainingjob", "pod", "bare"])
def test_the_slim_essence_is_kopfs_essence(raw: dict[str, Any]) -> None:
    kept = copy.deepcopy(raw)
    body = kopf.Body(cast(kopf.RawBody, raw))
    ours = SpecDiffBase(field=FIELD).build(body=body)
    theirs = kopf.StatusDiffBaseStorage(field=FIELD).build(body=body)
    assert ours == theirs
    assert raw == kept  # the body kopf hands to the handlers is untouched


def test_a_changed_annotation_is_a_change_and_a_new_status_is_not() -> None:
    storage = SpecDiffBase(field=FIELD)
    before = storage.build(body=kopf.Body(cast(kopf.RawBody, TRAINING_JOB)))
    progressed = copy.deepcopy(TRAINING_JOB)
    progressed["status"]["curve"].append({"epoch": 1000, "value": 0.0})
    assert storage.build(body=kopf.Body(cast(kopf.RawBody, progressed))) == before
    annotated = copy.deepcopy(TRAINING_JOB)
    annotated["metadata"]["annotations"]["stopline.dev/cancel"] = "wrong data"
    assert storage.build(body=kopf.Body(cast(kopf.RawBody, annotated))) != before
