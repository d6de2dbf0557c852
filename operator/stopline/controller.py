"""What the handlers do: create or adopt a TrainingJob's children, and keep its status in step with them.

Both steps are idempotent, so a restarted operator runs them again for every TrainingJob and ends where
it was: children that exist are adopted (never a second Job), and the status is written (by the one
status writer) only when the decision differs from what is stored.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from stopline import kueue, lifecycle, monitoring, sweep, targets
from stopline.api import PVCTarget, SpecError, TargetRef, TrainingJobSpec, parse_spec
from stopline.kube import Kube, Manifest
from stopline.metrics.http import excerpt
from stopline.pointer import last_values, stop_cause
from stopline.registry import PodView, controller_uid, job_view, pod_view, saved_checkpoint, trainer_pods
from stopline.status import StatusWriter, Written
from stopline.verify import verify_checkpoint
from stopline.vocabulary import (
    ADMITTED,
    CHECKPOINT_TARGET,
    CHECKPOINT_VERIFIED,
    CLAIM_FOUND,
    CLAIM_NOT_FOUND,
    CREATED,
    FAILED,
    FINISHED,
    HELD_PHASES,
    JOB_LABEL,
    MANUAL,
    PENDING,
    PREEMPTED,
    QUEUE_LABELS,
    RESTARTING,
    RESUME_REFUSED,
    RESUME_RULE,
    RESUMED,
    RUNNING_CONDITION,
    STOPPED,
    STOPPING,
    STUDY_LABEL,
    TARGET_FOUND,
    TARGET_NOT_FOUND,
    TERMINAL_PHASES,
)
from stopline.workload import Owner, build_job, build_service, build_token_secret

LOG_EXCERPT_CHARS = 400  # the trainer's log is its author's text: a short, printable excerpt in status


class ForeignChild(RuntimeError):
    """A child's name is taken by an object another owner controls (often: a deleted job's leftovers)."""


def owner_of(training_job: Mapping[str, Any]) -> Owner:
    metadata = training_job["metadata"]
    labels = metadata.get("labels") or {}
    return Owner(
        name=metadata["name"],
        namespace=metadata["namespace"],
        uid=metadata["uid"],
        study=labels.get(STUDY_LABEL),
        queue=tuple((key, str(labels[key])) for key in QUEUE_LABELS if labels.get(key)),
    )


def parse(training_job: Mapping[str, Any]) -> TrainingJobSpec | SpecError:
    """The parsed spec, or the error that names the field; errors are data here, the caller reports them."""
    try:
        spec = parse_spec(training_job.get("spec"))
    except SpecError as error:
        return error
    for field, ref in (("spec.targetRef", spec.target), ("spec.targetSelector", spec.selector)):
        if ref is not None and targets.adapter_for(TargetRef(ref.api_version, ref.kind, "")) is None:
            return SpecError(
                field,
                f"{ref.kind} ({ref.api_version}) is not a kind stopline governs; use one of "
                f"{targets.supported()}",
            )
    return spec


async def ensure_children(kube: Kube, owner: Owner, spec: TrainingJobSpec) -> None:
    """Create the token Secret, the headless Service (replicas > 1) and the Job, or adopt those that exist.

    The Job goes last: it references the Secret, and its existence means the other children exist too.
    A TrainingJob with spec.targetRef or spec.targetSelector gets the Secret only: the targets' pod
    templates mount it.
    """
    children = [build_token_secret(owner, secrets.token_urlsafe(32))]
    if spec.template is not None:
        if spec.replicas > 1:
            children.append(build_service(owner))
        children.append(build_job(owner, spec))
    for manifest in children:
        child, _ = await kube.create_or_read(manifest)
        if controller_uid(child["metadata"]) != owner.uid:
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            raise ForeignChild(f"{kind} {name} exists and does not belong to this TrainingJob")


def owns(training_job: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    """The Job is this TrainingJob's own: its name, and a controller ownerReference to its uid."""
    metadata, job_metadata = training_job["metadata"], job["metadata"]
    named = job_metadata.get("name") == metadata["name"]
    return bool(named and controller_uid(job_metadata) == metadata.get("uid"))


async def _checkpoint_target(
    kube: Kube, training_job: Manifest, spec: TrainingJobSpec
) -> lifecycle.Condition | None:
    """While Pending: does the PVC exist? Without it the pods wait forever with no word to the user."""
    target = spec.checkpoint.target
    phase = (training_job.get("status") or {}).get("phase") or PENDING
    if not isinstance(target, PVCTarget) or phase != PENDING:
        return None
    namespace = training_job["metadata"]["namespace"]
    if await kube.read_claim(namespace, target.claim_name) is not None:
        return lifecycle.Condition(CHECKPOINT_TARGET, True, CLAIM_FOUND, f"PVC {target.claim_name} exists")
    message = (
        f"spec.checkpoint.pvc.claimName: PersistentVolumeClaim {target.claim_name!r} not found in namespace "
        f"{namespace}; the pods wait for it: create it or fix the name"
    )
    return lifecycle.Condition(CHECKPOINT_TARGET, False, CLAIM_NOT_FOUND, message)


async def _ending(
    kube: Kube,
    training_job: Manifest,
    spec: TrainingJobSpec,
    job: Manifest,
    read: targets.TargetRead | None = None,
) -> lifecycle.Ending | None:
    """Once the Job (or target) finished, and before the TrainingJob records it: rank 0's checkpoint, and
    the first failed rank's exit code and last log lines. The pods are read from the apiserver (a target's
    with it, `read`), its own only."""
    phase = (training_job.get("status") or {}).get("phase") or PENDING
    if lifecycle.job_finished(job) is None or phase in TERMINAL_PHASES or phase == STOPPING:
        return None
    namespace, name = training_job["metadata"]["namespace"], training_job["metadata"]["name"]
    listed: list[PodView] = (
        list(read.pods)
        if read is not None
        else list(map(pod_view, await kube.list_pods(namespace, f"{JOB_LABEL}={name}")))
    )
    pods = trainer_pods(listed, read.view() if read is not None else job_view(job))
    saved = saved_checkpoint(pods)
    checkpoint = saved[1] if saved is not None else None
    stopped = stop_cause(saved[0].message) if saved is not None else None
    last = last_values(saved[0].message) if saved is not None else {}
    failed = next((pod for pod in pods if pod.exit_code not in (None, 0)), None)
    failure = None
    if failed is not None:
        failure = f"rank {failed.rank} exited with code {failed.exit_code}"
        lines = await kube.read_log_tail(namespace, failed.name, failed.container)
        if lines:
            failure += f"; its last log lines: {excerpt(' | '.join(lines), LOG_EXCERPT_CHARS)}"
    verified = await verify_checkpoint(kube, namespace, spec, checkpoint) if checkpoint else None
    return lifecycle.Ending(checkpoint, failure, verified, stopped, last)


async def sync_status(
    writer: StatusWriter,
    namespace: str,
    name: str,
    rejected: str | None = None,
    job: Manifest | None = None,
    read: targets.TargetRead | None = None,
) -> Written | None:
    """Read the TrainingJob and its Job, decide, write the status only if it changed (None: no write).

    `rejected` is why the apiserver refused a child; like an invalid spec, it fails the TrainingJob.
    `job`: the Job as its watch event just delivered it, so it need not be read again; one that is not
    this TrainingJob's own (another name, another controller uid: a decoy) is never believed.
    `read`: for a TrainingJob with spec.targetRef, the target as the caller just read it (else it is read
    here); its summary stands for the Job.
    """
    kube = writer.kube
    training_job = await kube.read_training_job(namespace, name)
    if training_job is None:
        return None
    parsed = parse(training_job)
    invalid = str(parsed) if isinstance(parsed, SpecError) else rejected
    if not invalid and isinstance(parsed, TrainingJobSpec) and parsed.selector is not None:
        return await _follow_sweep(writer, training_job, parsed)
    governed = None
    if invalid:
        job = None
    elif isinstance(parsed, TrainingJobSpec) and parsed.target is not None:
        read = read or await read_target(kube, namespace, parsed)
        job = read.summary() if read is not None else None
        governed = _governed(namespace, parsed, read)
    elif job is None or not owns(training_job, job):
        job = await kube.read_job(namespace, name)
        if job is not None and not owns(training_job, job):
            job = None
    if job is not None and governed is None and lifecycle.previous_run(training_job, job):
        await _delete_previous_run(kube, job)  # a resume or restart this process did not finish
    target = ending = queue_says = None
    if not isinstance(parsed, SpecError) and job is not None:
        target = await _checkpoint_target(kube, training_job, parsed)
        ending = await _ending(kube, training_job, parsed, job, read)
        queue_says = await kueue.queue_says(kube, job)

    def compose(current: Mapping[str, Any]) -> lifecycle.StatusChange | None:
        if current["metadata"].get("uid") != training_job["metadata"].get("uid"):
            return None  # deleted and made again meanwhile: its own events will sync it
        return lifecycle.desired_status(
            current,
            job,
            invalid_spec=invalid,
            checkpoint_target=target,
            ending=ending,
            queue_says=queue_says,
            now=writer.clock(),
            governed=governed,
        )

    written = await writer.write(namespace, name, compose, seen=training_job)
    if written is not None and job is not None and "restarts" in written.patched:
        await _restart(kube, written, job)
    return written


async def _follow_sweep(
    writer: StatusWriter, training_job: Manifest, spec: TrainingJobSpec
) -> Written | None:
    """A sweep (spec.targetSelector): a member for every matching workload, then its own short status."""
    assert spec.selector is not None
    change = sweep.sweep_status(spec.selector, await sweep.enlist(writer.kube, training_job, spec.selector))
    metadata = training_job["metadata"]

    def compose(current: Mapping[str, Any]) -> lifecycle.StatusChange | None:
        same = current["metadata"].get("uid") == metadata.get("uid")
        return change if same and (current.get("status") or {}).get("phase") not in TERMINAL_PHASES else None

    return await writer.write(metadata["namespace"], metadata["name"], compose, seen=training_job)


async def read_target(kube: Kube, namespace: str, spec: TrainingJobSpec) -> targets.TargetRead | None:
    """The workload spec.targetRef names, with its Jobs and pods; None when it is not there (or its kind
    is not served: its CRD is not installed)."""
    ref = spec.target
    adapter = targets.adapter_for(ref) if ref is not None else None
    if ref is None or adapter is None:
        return None
    return await targets.read(kube, namespace, adapter, ref.name)


def _governed(namespace: str, spec: TrainingJobSpec, read: targets.TargetRead | None) -> lifecycle.Condition:
    """Created, for a TrainingJob with spec.targetRef: whether the workload it names is there."""
    ref = spec.target
    assert ref is not None
    if read is not None:
        return lifecycle.Condition(CREATED, True, TARGET_FOUND, f"governs {ref.describe()} (spec.targetRef)")
    message = (
        f"spec.targetRef: {ref.describe()} ({ref.api_version}) not found in namespace {namespace}; stopline "
        "waits for it: create it, or fix the name (and check that its CRD is installed)"
    )
    return lifecycle.Condition(CREATED, False, TARGET_NOT_FOUND, message)


async def _restart(kube: Kube, written: Written, job: Manifest) -> None:
    """A rank failed and spec.failurePolicy allows another run (the status says so already): say why, and
    delete the failed Job, its pods first (foreground), so the next run's ranks never meet the old ones.
    Its DELETED event makes the Job again (`remake_if_restarting`)."""
    message = written.condition(RUNNING_CONDITION).get("message") or "a rank failed"
    await kube.post_event(written.training_job, RESTARTING, message, warning=True)
    metadata = job["metadata"]
    await kube.delete_job(metadata["namespace"], metadata["name"], str(metadata.get("uid")), foreground=True)


async def _delete_previous_run(kube: Kube, job: Manifest) -> None:
    """The run before's Job, its pods first (foreground), unless it is already going; its DELETED event
    makes the next one (`remake_if_restarting`)."""
    metadata = job["metadata"]
    if not metadata.get("deletionTimestamp"):
        await kube.delete_job(
            metadata["namespace"], metadata["name"], str(metadata.get("uid")), foreground=True
        )


async def resume_if_asked(
    writer: StatusWriter,
    namespace: str,
    name: str,
    answered: MutableMapping[str, str],
    observe: Callable[[Mapping[str, Any]], object] = lambda _: None,
) -> Written | None:
    """A person's stopline.dev/resume: decided by `lifecycle.resume` on the TrainingJob as read now, carried
    out here. Refused: a Warning Event that says why and the fix, once per request (`answered`: by uid, the
    request this process answered last), and nothing else. Accepted: the status goes back to Pending (one
    compare-and-set write from Stopped: however many events or operators see the request, it is carried
    out once), then the stopped run's Job is deleted, its pods first (uid precondition), and made again
    from spec.template, so the trainers resume from the checkpoint, as after a failed rank's restart.
    `observe`: given the body written, before any Job is made (the registry's view must not be Stopped
    when the new Job's first event comes)."""
    kube = writer.kube
    training_job = await kube.read_training_job(namespace, name)
    request = lifecycle.resume_request(training_job) if training_job is not None else None
    if training_job is None or request is None:
        return None
    uid = str(training_job["metadata"].get("uid"))
    if answered.get(uid) == lifecycle.request_id(request):
        return None
    parsed = parse(training_job)
    governs = None
    if isinstance(parsed, TrainingJobSpec) and parsed.target is not None:
        governs = "spec.targetRef"
    elif isinstance(parsed, TrainingJobSpec) and parsed.selector is not None:
        governs = "spec.targetSelector"
    now = writer.now()
    verdict = lifecycle.resume(training_job, governs, now)
    if isinstance(verdict, lifecycle.ResumeRefusal):
        answered[uid] = lifecycle.request_id(request)
        await kube.post_event(training_job, RESUME_REFUSED, verdict.message, warning=True)
        return None
    if verdict is None or isinstance(parsed, SpecError):
        return None

    def decide(current: Mapping[str, Any]) -> lifecycle.Resumption | None:
        again = lifecycle.resume(current, governs, now)
        return again if isinstance(again, lifecycle.Resumption) else None

    written = await _carry_out_resume(writer, training_job, parsed, decide, MANUAL, observe)
    answered[uid] = lifecycle.request_id(request)
    return written


async def resume_by_rule(
    writer: StatusWriter,
    training_job: Mapping[str, Any],
    message: str,
    probability: float | None,
    observe: Callable[[Mapping[str, Any]], object] = lambda _: None,
) -> Written | None:
    """The study's resume rule chose this Stopped job (stopline.study): resumed as a person's request is,
    with the rule's numbers in status.resumes and the Resumed Event; None when it was no longer Stopped
    with a checkpoint when the write went (the compare-and-set resumes a stop once)."""
    parsed = parse(training_job)
    if isinstance(parsed, SpecError) or parsed.template is None:
        return None
    now = writer.now()

    def decide(current: Mapping[str, Any]) -> lifecycle.Resumption | None:
        return lifecycle.resume_by_rule(current, now, message, probability)

    return await _carry_out_resume(writer, training_job, parsed, decide, RESUME_RULE, observe)


async def _carry_out_resume(
    writer: StatusWriter,
    training_job: Mapping[str, Any],
    spec: TrainingJobSpec,
    decide: Callable[[Mapping[str, Any]], lifecycle.Resumption | None],
    reason: str,
    observe: Callable[[Mapping[str, Any]], object],
) -> Written | None:
    """One compare-and-set write from Stopped back to Pending (`decide` on the body the write goes
    against), then the metrics, the Resumed Event, and the stopped run's Job deleted (its DELETED event
    makes the next) or, when it is gone already (a queue's release), the next one made here."""
    kube = writer.kube
    metadata = training_job["metadata"]
    namespace, name, uid = metadata["namespace"], metadata["name"], metadata.get("uid")
    resumption: list[lifecycle.Resumption] = []

    def compose(current: Mapping[str, Any]) -> lifecycle.StatusChange | None:
        if current["metadata"].get("uid") != uid:
            return None
        decided = decide(current)
        resumption[:] = [decided] if decided is not None else []
        return decided.change if decided is not None else None

    saved = (training_job.get("status") or {}).get("gpuSecondsSaved")
    written = await writer.write(namespace, name, compose, seen=training_job)
    if written is None or not resumption:
        return None
    observe(written.after)
    monitoring.count_resume(reason, namespace, saved)
    await kube.post_event(written.after, RESUMED, resumption[0].message)
    job = await kube.read_job(namespace, name)
    if job is not None and owns(written.after, job):
        await _delete_previous_run(kube, job)  # its DELETED event makes the next Job
    elif job is None:
        await ensure_children(kube, owner_of(written.after), spec)
    return written


async def remake_if_restarting(kube: Kube, namespace: str, name: str) -> None:
    """Once the failed Job is gone, the next run: the same children, the trainers resuming from their last
    checkpoint. (A restarted operator makes them in its resume handler, as for any job without its Job.)"""
    training_job = await kube.read_training_job(namespace, name)
    if training_job is None or not lifecycle.restarting(training_job):
        return
    parsed = parse(training_job)
    if not isinstance(parsed, SpecError):
        await ensure_children(kube, owner_of(training_job), parsed)


async def announce(kube: Kube, written: Written | None) -> None:
    """One Event per phase change: Normal for progress, Warning with the cause for a failure. A stop
    concluded here (the trainers stopped before the operator recorded it) says CheckpointSaved, as one
    the stop driver concludes does, and warns when the checkpoint could not be verified."""
    if written is None or written.phase == written.phase_before:
        return
    if written.phase == FAILED:
        cause = written.condition(FINISHED) or written.condition(CREATED)
        reason, message = cause.get("reason", "Failed"), cause.get("message", "")
        await kube.post_event(written.training_job, reason, message, warning=True)
    elif written.phase == STOPPED:
        finished = written.condition(FINISHED)
        reason, message = finished.get("reason", STOPPED), finished.get("message", "TrainingJob is Stopped")
        await kube.post_event(written.training_job, reason, message, warning=False)
        verified = written.condition(CHECKPOINT_VERIFIED)
        if verified.get("status") == "False":
            await kube.post_event(written.training_job, verified["reason"], verified.get("message", ""), True)
    elif written.phase in HELD_PHASES:
        message = written.condition(ADMITTED).get("message") or f"TrainingJob is {written.phase}"
        warning = written.phase == PREEMPTED
        await kube.post_event(written.training_job, written.phase, message, warning=warning)
    elif written.phase_before in HELD_PHASES:
        await kube.post_event(written.training_job, ADMITTED, "the queue admitted the Job: its pods start")
    elif written.phase != PENDING:
        await kube.post_event(written.training_job, written.phase, f"TrainingJob is {written.phase}")
