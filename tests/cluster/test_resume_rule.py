"""A stop taken back by the study's resume rule (spec.resumePolicy), live, and the same in `stopline replay`;
and a small sweep that learns from an earlier study (forecast.history).

A sweep of seven jobs runs one after another through the operator against the real apiserver and Job
controller, each trainer played on its real endpoint as in tests/cluster/test_policy_live.py. The forecast
stops the late bloomer at its first epoch (the three finished jobs flatten out); a job like it then
finishes with a late drop, the rule brings the late bloomer back from its checkpoint, and it ends the
sweep's best. The curves the operator recorded (status.curve) then go through `stopline replay` with the
same TrainingJob: the same stops and the same resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from operatorharness import (
    RUNNING_AND_READY,
    WAIT_S,
    StandInTrainer,
    apply,
    control_token,
    epoch_read,
    event_posted,
    manifest,
    operator,
    phase_is,
    play_curve,
    pods,
    replay_recorded,
    running_trainer,
    set_pod_status,
    status,
)
from stopline import replay
from stopline_local.controlplane import ControlPlane, wait_until

pytestmark = pytest.mark.cluster

STUDY = {"stopline.dev/study": "lr"}
CRITERIA = [{"name": "forecast", "forecast": {"probability": 0.01, "minJobs": 3}}]
POLICY = {"probability": 0.02, "minJobs": 3}
EPOCHS = 8
# val_loss by epoch, in the order the sweep runs them: three finish and flatten out; the late bloomer is
# like them at epoch 1 and behind (the forecast stops it there); one like it finishes with a late drop (now
# the late bloomer may win: resumed); a hopeless one and an ordinary one are stopped and stay stopped.
SWEEP = {
    "lr-1e-3": [1.0, 0.8, 0.7, 0.65, 0.62, 0.60, 0.59, 0.585],
    "lr-3e-4": [1.2, 1.0, 0.9, 0.85, 0.81, 0.78, 0.76, 0.75],
    "lr-5e-4": [1.1, 0.9, 0.82, 0.78, 0.75, 0.73, 0.725, 0.72],
    "lr-3e-3": [1.15, 0.95, 0.86, 0.80, 0.55, 0.35, 0.2, 0.15],
    "lr-2e-3": [1.05, 0.85, 0.78, 0.72, 0.5, 0.35, 0.25, 0.22],
    "lr-1e-1": [1.35, 1.25, 1.2, 1.17, 1.15, 1.14, 1.135, 1.13],
    "lr-7e-4": [1.0, 0.82, 0.72, 0.66, 0.62, 0.6, 0.58, 0.57],
}
LATE_BLOOMER, LATE_DROP = "lr-3e-3", "lr-2e-3"


def spec_of(name: str) -> dict[str, Any]:
    training_job = manifest(
        name=name, criteria=CRITERIA, metrics={"interval": "1s"}, maxEpochs=EPOCHS, resumePolicy=POLICY
    )
    training_job["metadata"]["labels"] = STUDY
    return training_job


def play(
    plane: ControlPlane, namespace: str, name: str, trainer: StandInTrainer, pod: str, first: int
) -> dict[str, Any]:
    """Report the sweep's epochs from `first`: play_curve."""
    return play_curve(plane, namespace, name, SWEEP[name], trainer, pod, first)


def play_resumed(
    plane: ControlPlane, namespace: str, name: str, address: tuple[str, int], stopped_pod: str
) -> dict[str, Any]:
    """The resumed run: the Job made again, its pod played by a new stand-in on the job's endpoint."""

    def new_pod() -> str | None:
        names = [p["metadata"]["name"] for p in pods(plane, namespace, name)]
        return next((pod for pod in names if pod != stopped_pod), None)

    wait_until(new_pod, WAIT_S, f"{name}'s new Job's pod")
    pod = new_pod()
    assert pod is not None
    trainer = StandInTrainer(address, control_token(plane, namespace, name))
    try:
        ip = {"podIP": trainer.ip, "podIPs": [{"ip": trainer.ip}]}
        set_pod_status(plane, namespace, pod, RUNNING_AND_READY | ip)
        wait_until(phase_is(plane, namespace, name, "Running"), WAIT_S, f"{name} Running again")
        resumed_from = int(status(plane, namespace, name)["resumes"][-1]["fromEpoch"])
        trainer.report(resumed_from + 1, (resumed_from + 1) * 100, val_loss=SWEEP[name][resumed_from])
        wait_until(
            epoch_read(plane, namespace, resumed_from + 1, name), WAIT_S, f"{name}'s first epoch again"
        )
        # its trainer's window of epochs starts after the checkpoint: no epoch is missing
        conditions = status(plane, namespace, name)["conditions"]
        assert not [c for c in conditions if c["type"] == "EpochsMissed" and c["status"] == "True"], (
            conditions
        )
        return play(plane, namespace, name, trainer, pod, resumed_from + 1)
    finally:
        trainer.close()


def test_the_rule_brings_back_the_late_bloomer_it_ends_best_and_replay_decides_the_same(
    plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    live: dict[str, dict[str, Any]] = {}
    with operator(namespace):
        for name in SWEEP:
            training_job = spec_of(name)
            with running_trainer(plane, namespace, training_job) as (trainer, pod):
                live[name] = play(plane, namespace, name, trainer, pod, 1)
                address = (trainer.ip, int(training_job["spec"]["metrics"]["port"]))
            if name == LATE_BLOOMER:
                stopped_pod, bloomer_address = pod, address
                assert live[name]["stopReason"]["type"] == "Forecast", live[name]
            if name == LATE_DROP:
                wait_until(
                    lambda: status(plane, namespace, LATE_BLOOMER).get("resumeCount") == 1,
                    WAIT_S,
                    f"the rule resuming {LATE_BLOOMER} once {LATE_DROP} finished",
                )
                wait_until(
                    event_posted(plane, namespace, LATE_BLOOMER, "Resumed", "Normal"), WAIT_S, "Event Resumed"
                )
                live[LATE_BLOOMER] = play_resumed(
                    plane, namespace, LATE_BLOOMER, bloomer_address, stopped_pod
                )
        final = {name: dict(status(plane, namespace, name)) for name in SWEEP}

    bloomer = final[LATE_BLOOMER]
    assert bloomer["phase"] == "Succeeded" and bloomer["curve"] == SWEEP[LATE_BLOOMER], bloomer
    (entry,) = bloomer["resumes"]
    assert (entry["reason"], entry["fromEpoch"], entry["stoppedBy"]["type"]) == ("ResumeRule", 1, "Forecast")
    assert entry["probability"] >= POLICY["probability"], entry
    assert entry["message"].startswith("P(beat best)="), entry
    kept = {name: current["curve"][-1] for name, current in final.items()}
    assert min(kept, key=kept.__getitem__) == LATE_BLOOMER  # it ends the sweep's best
    assert {name for name, current in final.items() if current.get("resumeCount")} == {LATE_BLOOMER}
    header, line = plane.kubectl("get", "tj", LATE_BLOOMER, "-n", namespace).stdout.splitlines()
    column = header.index("RESUMED")
    assert line[column : column + len("RESUMED")].strip() == "1", (header, line)

    (sweep,) = replay_recorded(
        tmp_path, spec_of("sweep"), {name: final[name]["curve"] for name in SWEEP}
    ).sweeps

    def live_story(current: dict[str, Any]) -> tuple[object, ...]:
        reason = current.get("stopReason")
        stop = (reason["type"], reason["criterion"], reason["epoch"], reason["message"]) if reason else None
        resumes = [(r["fromEpoch"], r["probability"], r["message"]) for r in current.get("resumes", [])]
        return stop, resumes

    def replay_story(result: replay.JobResult) -> tuple[object, ...]:
        decision = result.decision
        stop = (decision.type, decision.criterion, result.epochs_run, decision.message) if decision else None
        resumes = [(r.from_epoch, r.probability, r.message) for r in result.resumes or ()]
        return stop, resumes

    assert {name: live_story(final[name]) for name in SWEEP} == {
        result.job: replay_story(result) for result in sweep.results
    }


EARLIER = {  # an earlier study of the same model: three runs that ended near 0.6
    "v1-a": [1.0, 0.9, 0.82, 0.75, 0.7, 0.66, 0.63, 0.6],
    "v1-b": [1.05, 0.93, 0.85, 0.78, 0.72, 0.68, 0.65, 0.62],
    "v1-c": [0.95, 0.86, 0.79, 0.72, 0.67, 0.63, 0.6, 0.58],
}
SMALL = {"v2-fast": [1.0, 0.7, 0.5, 0.4, 0.35, 0.3, 0.28, 0.27], "v2-slow": [1.0, 0.9, 0.82, 0.75, 0.7, 0.66]}


def test_a_small_sweep_is_forecast_from_an_earlier_study_before_three_of_its_own_jobs_finished(
    plane: ControlPlane, namespace: str
) -> None:
    """Fixture shortcut: the earlier study's jobs are made Succeeded with their curves by a status patch
    before the operator starts (as if they had run); the new study's jobs run through the operator."""
    for name, curve in EARLIER.items():
        earlier = manifest(name=name, criteria=[], metrics={"interval": "1s"}, maxEpochs=EPOCHS)
        earlier["metadata"]["labels"] = {"stopline.dev/study": "v1"}
        apply(plane, namespace, earlier)
        done = {"status": {"phase": "Succeeded", "curve": curve}}
        plane.kubectl(
            "patch",
            "tj",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(done),
        )
    forecast = {"name": "forecast", "forecast": {"probability": 0.01, "minJobs": 3, "history": ["v1"]}}
    final = {}
    with operator(namespace):
        for name, curve in SMALL.items():
            training_job = manifest(
                name=name, criteria=[forecast], metrics={"interval": "1s"}, maxEpochs=EPOCHS
            )
            training_job["metadata"]["labels"] = {"stopline.dev/study": "v2"}
            with running_trainer(plane, namespace, training_job) as (trainer, pod):
                final[name] = play_curve(plane, namespace, name, curve, trainer, pod)
    assert final["v2-fast"]["phase"] == "Succeeded"  # nothing to beat yet when it ran: it ran to its end
    slow = final["v2-slow"]
    assert slow["phase"] == "Stopped", slow
    reason = slow["stopReason"]
    assert reason["type"] == "Forecast" and reason["epoch"] < len(SMALL["v2-slow"]), reason
    assert "80% of 3 finished jobs" in reason["message"], reason  # the earlier study's three
    assert "the best final value of 1 ended jobs" in reason["message"], reason  # to beat: this study's
