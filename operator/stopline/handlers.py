"""kopf wiring only: which events reach which step of stopline.controller, and the operator's settings.

- create/resume of a TrainingJob: create or adopt its children, then sync the status. Resume runs for
  every TrainingJob when the operator starts, so a restart finishes whatever a crash left half done.
- update of a TrainingJob: sync the status (observedGeneration follows the spec), and carry out a
  stopline.dev/resume annotation (controller.resume_if_asked; at startup too).
- any event of a Job labelled stopline.dev/job: file it in the registry and sync the status of the
  TrainingJob of its name (controller.sync_status believes it only if that TrainingJob controls it).
- every event of a TrainingJob or of a trainer pod: update the in-memory registry that the supervisor
  (one loop for all jobs: scrape, decide, stop) and the cohort rule read, and wake the supervisor when a
  stop/cancel annotation appears or a stopping job's pod changes; a study member that ended asks the
  study's resume rule (spec.resumePolicy) whether to resume a stopped member.

kopf keeps its progress and diff base in the TrainingJob's status and adds no finalizer (the children
carry owner references, so there is nothing to clean up), so the operator never writes the spec or the
annotations and GitOps tools see no drift.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, cast

import kopf

from stopline import GROUP, PLURAL, VERSION, controller, monitoring
from stopline.api import SpecError
from stopline.kube import Kube, Rejected
from stopline.metrics.http import client_session
from stopline.registry import Registry, pod_view
from stopline.supervisor import Supervisor
from stopline.vocabulary import JOB_LABEL, STOPPING, TERMINAL_PHASES

WATCH_SERVER_TIMEOUT_S = 300  # the apiserver ends each watch after this; kopf then resumes it
WATCH_CLIENT_TIMEOUT_S = 330  # a watch silent for longer is a dead connection
CONNECT_TIMEOUT_S = 30


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's state in our status fields, not its annotations; no kopf peering: with several replicas only
    the one holding the Lease runs kopf at all (`stopline operator --leader-elect`, stopline.leader)."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(
        field="status.stopline.progress", touch_field="status.stopline.touch"
    )
    settings.persistence.diffbase_storage = SpecDiffBase(field="status.stopline.diffBase")
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # unused today: there are no deletion handlers
    settings.peering.standalone = True
    # No list/watch of Namespaces and CRDs: the operator serves one CRD that exists before it starts, in
    # the namespaces it is given by name, so its RBAC needs no cluster-scoped reads (namespaced installs)
    settings.scanning.disabled = True
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_S
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT_S
    settings.watching.connect_timeout = CONNECT_TIMEOUT_S
    settings.posting.enabled = False  # Events come from Kube.post_event, one per transition, not per log line
    logging.getLogger("kopf.objects").addFilter(_quiet_trackers)
    memo.kube = await Kube.connect()
    memo.registry = Registry()
    memo.session = client_session()
    memo.supervisor = Supervisor(memo.kube, memo.registry, memo.session)
    memo.supervisor_task = asyncio.create_task(memo.supervisor.run(), name="stopline-supervisor")
    listen = memo.get("listen")
    memo.http = await monitoring.serve(listen, memo.supervisor.healthy) if listen else None


class SpecDiffBase(kopf.StatusDiffBaseStorage):
    """kopf's diff base, built without copying what it throws away.

    kopf builds the essence of every event's body (TrainingJobs, Jobs and pods alike) by deep-copying the
    whole body and then deleting status and metadata. A TrainingJob's status carries its curve and
    criteria, so that copy was about a quarter of the operator's CPU at 1,000 jobs. The essence is the
    same when only spec, labels and annotations are copied: kopf keeps nothing else of the body, and no
    handler here asks for extra fields.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        if extra_fields:
            raise ValueError("SpecDiffBase keeps no extra fields: no handler here declares any")
        metadata = body.get("metadata", {})
        kept = {key: value for key, value in body.items() if key not in ("status", "metadata")}
        kept["metadata"] = {key: metadata[key] for key in ("labels", "annotations") if key in metadata}
        return super().build(body=cast(kopf.Body, kept))


_TRACKER_SUCCESS = {
    f"Handler {name!r} succeeded." for name in ("track_training_job", "track_pod", "track_target_pod")
}


def _quiet_trackers(record: logging.LogRecord) -> bool:
    """Drop kopf's "Handler 'track_pod' succeeded." lines: the trackers run on every watch event, and at
    1,000 jobs those lines were thousands a minute; failures are still logged."""
    return not (record.levelno == logging.INFO and record.getMessage() in _TRACKER_SUCCESS)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The service account in a pod, else $KUBECONFIG as it is when the operator starts (as for Kube)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def disconnect(memo: kopf.Memo, **_: Any) -> None:
    memo.supervisor_task.cancel()
    await asyncio.gather(memo.supervisor_task, return_exceptions=True)
    if memo.http is not None:
        await memo.http.cleanup()
    await memo.session.close()
    await memo.kube.close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
async def run_training_job(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    kube: Kube = memo.kube
    rejected = None
    if body.get("status", {}).get("phase") not in TERMINAL_PHASES:
        parsed = controller.parse(body)
        if not isinstance(parsed, SpecError):
            try:
                await controller.ensure_children(kube, controller.owner_of(body), parsed)
            except controller.ForeignChild as error:
                raise kopf.TemporaryError(str(error), delay=30) from error
            except Rejected as error:
                rejected = f"spec.template: the apiserver refused the trainer's Job: {error}"
    writer = memo.supervisor.writer
    await controller.announce(kube, await controller.sync_status(writer, namespace or "", name, rejected))
    await _resume_if_asked(memo, namespace or "", name)


@kopf.on.update(GROUP, VERSION, PLURAL)
async def follow_generation(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    written = await controller.sync_status(memo.supervisor.writer, namespace or "", name)
    await controller.announce(memo.kube, written)
    await _resume_if_asked(memo, namespace or "", name)


async def _resume_if_asked(memo: kopf.Memo, namespace: str, name: str) -> None:
    """A stopline.dev/resume annotation (set or changed: an update; any at startup: a resume handler)."""
    answered = memo.setdefault("resume_answers", {})
    registry: Registry = memo.registry
    await controller.resume_if_asked(
        memo.supervisor.writer, namespace, name, answered, registry.observe_training_job
    )


@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
async def follow_job(
    body: kopf.Body, type: str | None, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    deleted = type == "DELETED"
    key = memo.registry.observe_job(dict(body), deleted=deleted)
    job = None if deleted else dict(body)  # as delivered: no need to read it again
    written = await controller.sync_status(memo.supervisor.writer, namespace or "", key[1], job=job)
    await controller.announce(memo.kube, written)
    if deleted:
        await controller.remake_if_restarting(memo.kube, namespace or "", key[1])
    tracked = memo.registry.get(key)
    if tracked is not None and tracked.phase == STOPPING:
        memo.supervisor.poke(key)
    await memo.supervisor.keep_at_rest(key)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def track_training_job(
    body: kopf.Body, type: str | None, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    if type == "DELETED":
        memo.registry.forget_training_job(namespace or "", name)
        return
    tracked = memo.registry.observe_training_job(dict(body))
    asked = tracked.asked_to_stop and tracked.phase not in TERMINAL_PHASES
    if tracked.phase == STOPPING or asked:
        memo.supervisor.poke(tracked.key)
    memo.supervisor.study_changed(tracked)  # an ended member is new evidence for its study's resume rule


@kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
async def track_pod(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    key = memo.registry.observe_pod(dict(body), deleted=type == "DELETED")
    await _after_pod_event(memo, key, body)


@kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.ABSENT})
async def track_target_pod(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A pod of a workload a TrainingJob governs (spec.targetRef), filed by its controller's uid, which a
    visit of that job learned; any other pod is dropped at once (one dict lookup)."""
    key = memo.registry.observe_target_pod(dict(body), deleted=type == "DELETED")
    await _after_pod_event(memo, key, body)


async def _after_pod_event(memo: kopf.Memo, key: tuple[str, str] | None, body: kopf.Body) -> None:
    """A stopping job's pod changed: drive its stop now; else a preempted trainer may have saved."""
    tracked = memo.registry.get(key) if key else None
    if tracked is not None and tracked.phase == STOPPING:
        memo.supervisor.poke(tracked.key)
    elif tracked is not None:
        filed = tracked.filed_pods.get(str(body.get("metadata", {}).get("name")))
        await memo.supervisor.keep_checkpoint(tracked.key, filed or pod_view(dict(body)))
