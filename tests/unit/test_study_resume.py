"""The study's resume rule, live side: TrainingJob bodies as the rule sees them (stopline.study) and the
resume it writes (lifecycle.resume_by_rule), decided purely."""

from __future__ import annotations

from typing import Any

from stopline import api, lifecycle, study

NOW = "2026-12-07T23:00:00Z"
CRITERIA = [{"name": "forecast", "forecast": {"probability": 0.01, "minJobs": 3}}]
# val_loss of a sweep of 8-epoch jobs: three finished, then a late bloomer the forecast stopped at epoch 1
# (like the three, which flatten out), then one like it that finished with a late drop
FINISHED = {
    "a": [1.0, 0.8, 0.7, 0.65, 0.62, 0.60, 0.59, 0.585],
    "b": [1.2, 1.0, 0.9, 0.85, 0.81, 0.78, 0.76, 0.75],
    "c": [1.1, 0.9, 0.82, 0.78, 0.75, 0.73, 0.725, 0.72],
}
LATE_DROP = [1.05, 0.85, 0.78, 0.72, 0.5, 0.35, 0.25, 0.22]


def body(
    name: str,
    phase: str,
    curve: list[float],
    *,
    created: str = "2026-12-07T22:00:00Z",
    policy: dict[str, Any] | None = None,
    stop_type: str = "Forecast",
    annotations: dict[str, str] | None = None,
    **status: Any,
) -> dict[str, Any]:
    spec = {
        "template": {"spec": {"containers": [{"name": "trainer"}]}},
        "objective": {"metric": "val_loss"},
        "checkpoint": {"pvc": {"claimName": "c"}},
        "maxEpochs": 8,
        "criteria": CRITERIA,
        "resumePolicy": {"minJobs": 3} if policy is None else policy,
    }
    fields: dict[str, Any] = {"phase": phase, "curve": curve} | status
    if phase == "Stopped":
        fields.setdefault("checkpoint", {"uri": f"/c/{name}.pt", "epoch": len(curve), "step": 1})
        fields.setdefault(
            "stopReason",
            {"type": stop_type, "criterion": "forecast", "message": "m", "epoch": len(curve), "at": NOW},
        )
        fields.setdefault(
            "criteria", [{"name": "forecast", "state": {"probability": 0.0004, "stop": {"type": stop_type}}}]
        )
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "annotations": annotations or {},
            "labels": {"stopline.dev/study": "sweep"},
        },
        "spec": spec,
        "status": fields,
    }


def members(*bodies: dict[str, Any]) -> list[study.Member]:
    return [study.Member(b, api.parse_spec(b["spec"])) for b in bodies]


def sweep(*more: dict[str, Any]) -> list[study.Member]:
    ended = [body(name, "Succeeded", curve) for name, curve in FINISHED.items()]
    return members(*ended, body("d", "Stopped", [1.15]), *more)


def test_the_late_bloomer_stays_stopped_until_a_finished_job_like_it_drops_late() -> None:
    before = study.decide(sweep(), 0.0)
    assert before is not None and before.resume == ()
    assert before.judged[0].job == "d" and before.judged[0].probability is not None
    assert before.judged[0].probability < 0.02  # the three that flatten out say it cannot win

    after = study.decide(sweep(body("e", "Succeeded", LATE_DROP)), 1.0)
    assert after is not None and [j.job for j in after.resume] == ["d"]
    chosen = after.resume[0]
    assert chosen.epoch == 1 and chosen.probability is not None and chosen.probability >= 0.02
    assert (
        chosen.message.startswith("P(beat best)=") and "at or above the 2.0% bound: resume" in chosen.message
    )


def test_only_a_sweep_criterions_stop_of_a_job_with_the_policy_is_taken_back() -> None:
    late = body("e", "Succeeded", LATE_DROP)
    by_hand = sweep(late)[:-2] + members(body("d", "Stopped", [1.15], stop_type="Manual"), late)
    assert study.decide(by_hand, 1.0).resume == ()  # type: ignore[union-attr]
    cancelled = sweep(late)[:-2] + members(
        body("d", "Stopped", [1.15], annotations={"stopline.dev/cancel": "x"}), late
    )
    assert study.decide(cancelled, 1.0).resume == ()  # type: ignore[union-attr]
    no_checkpoint = sweep(late)[:-2] + members(body("d", "Stopped", [1.15], checkpoint=None), late)
    assert study.decide(no_checkpoint, 1.0).resume == ()  # type: ignore[union-attr]


def test_the_earliest_member_s_policy_governs_and_without_one_the_stops_are_final() -> None:
    late = body("e", "Succeeded", LATE_DROP)
    first = body("first", "Succeeded", FINISHED["a"], created="2026-12-07T21:00:00Z")
    first["spec"].pop("resumePolicy")
    assert study.decide([*sweep(late), *members(first)], 1.0) is None
    assert study.settings(sweep(late)) == api.parse_spec(late["spec"]).resume_policy


def test_a_job_the_rule_resumed_holds_a_slot_while_it_runs() -> None:
    rule_resumed: dict[str, Any] = {"resumeCount": 1, "resumes": [{"reason": "ResumeRule", "fromEpoch": 2}]}
    running = body("r", "Running", [1.0, 0.9, 0.8], **rule_resumed)
    plan = study.decide(sweep(body("e", "Succeeded", LATE_DROP), running), 1.0)
    assert plan is not None and plan.slots == 0 and plan.resume == ()
    assert [j.job for j in plan.waiting] == ["d"]  # its turn comes when the resumed one ends
    by_hand = body("r", "Running", [1.0, 0.9, 0.8], resumeCount=1, resumes=[{"reason": "Manual"}])
    assert study.decide(sweep(body("e", "Succeeded", LATE_DROP), by_hand), 1.0).slots == 1  # type: ignore[union-attr]


def test_a_stopped_job_is_judged_on_the_weights_it_kept() -> None:
    """Its curve past the checkpoint's epoch (epochs read before the trainer saved) is not what it keeps."""
    job = study.sweep_job(members(body("d", "Stopped", [1.15, 0.95, 0.9], checkpoint={"epoch": 2}))[0])
    assert dict(job.values) == {1: 1.15, 2: 0.95} and job.resumable
    assert job.stop_chance == 0.0004 and job.budget == 8


def test_evidence_moves_when_a_member_ends_or_is_resumed_not_with_each_epoch() -> None:
    running = members(body("x", "Running", [1.0]))
    more = members(body("x", "Running", [1.0, 0.9]))
    ended = members(body("x", "Succeeded", [1.0, 0.9]))
    assert study.evidence(running) == study.evidence(more) != study.evidence(ended)
    again = members(body("x", "Succeeded", [1.0, 0.9], resumeCount=1))
    assert study.evidence(again) != study.evidence(ended)


def test_the_rule_s_resume_records_its_numbers_and_answers_a_pending_resume_annotation() -> None:
    stopped = body("d", "Stopped", [1.15], annotations={"stopline.dev/resume": "later"})
    decided = lifecycle.resume_by_rule(stopped, NOW, "P(beat best)=8.5%, ...", 0.085)
    assert decided is not None and decided.change.phase == "Pending"
    entry = decided.change.fields["resumes"][-1]
    assert (entry["reason"], entry["probability"], entry["fromEpoch"]) == ("ResumeRule", 0.085, 1)
    assert entry["message"] == "P(beat best)=8.5%, ..." and entry["stoppedBy"]["type"] == "Forecast"
    assert entry["request"] == lifecycle.request_id("later")  # answered: it will not resume a later stop
    assert decided.change.fields["resumeCount"] == 1 and decided.change.fields["stopReason"] is None
    after = {**stopped, "status": {**stopped["status"], **decided.change.fields, "phase": "Stopped"}}
    assert lifecycle.resume_request(after) is None


def test_the_rule_never_resumes_a_job_that_is_no_longer_stopped_or_is_being_cancelled() -> None:
    assert lifecycle.resume_by_rule(body("d", "Pending", [1.15]), NOW, "m", 0.1) is None
    cancel = body("d", "Stopped", [1.15], annotations={"stopline.dev/cancel": "no"})
    assert lifecycle.resume_by_rule(cancel, NOW, "m", 0.1) is None
    assert lifecycle.resume_by_rule(body("d", "Stopped", [1.15], checkpoint=None), NOW, "m", 0.1) is None


def test_an_earlier_study_s_finished_jobs_are_evidence_for_a_small_sweep_never_its_best() -> None:
    """Only one job of this sweep finished; the earlier study (the forecast's history) holds the rest."""
    history_spec = {"name": "forecast", "forecast": {"probability": 0.01, "minJobs": 3, "history": ["v1"]}}
    small = [body("a", "Succeeded", FINISHED["a"]), body("d", "Stopped", [1.15])]
    for member in small:
        member["spec"]["criteria"] = [history_spec]
    earlier = [body(name, "Succeeded", FINISHED[name]) for name in ("b", "c")] + [
        body("e", "Succeeded", LATE_DROP)
    ]
    assert study.history_studies(members(*small)) == ("v1",)
    alone = study.decide(members(*small), 1.0)
    assert alone is not None and alone.resume == () and alone.judged[0].probability is None  # 1 finished
    plan = study.decide(members(*small), 1.0, members(*earlier))
    assert plan is not None and [j.job for j in plan.resume] == ["d"]
    assert plan.reference == FINISHED["a"][-1]  # the value to beat is this sweep's, not the earlier one's


def test_a_forecast_stops_chance_is_read_from_its_state_only_as_a_finite_number() -> None:
    """status.criteria is written by the operator but any editor of the status can change it: a chance
    that is not a finite number is no chance (the rule then judges the job as unseen says)."""
    chances = {}
    for label, probability in (("kept", 0.004), ("text", "0.004"), ("bool", True), ("inf", float("inf"))):
        state = {"probability": probability}
        stopped = body("d", "Stopped", [1.15], criteria=[{"name": "forecast", "state": state}])
        chances[label] = study.sweep_job(members(stopped)[0]).stop_chance
    rungs = body("d", "Stopped", [1.15], stop_type="Rungs")
    chances["rungs"] = study.sweep_job(members(rungs)[0]).stop_chance
    assert chances == {"kept": 0.004, "text": None, "bool": None, "inf": None, "rungs": None}
