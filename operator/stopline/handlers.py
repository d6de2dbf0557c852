"""kopf wiring only: which events reach which step of stopline.controller, and the operator's settings.

- create/resume of a TrainingJob: create or adopt its children, then sync the status. Resume runs for
  every TrainingJob when the operator starts, so a restart finishes whatever a crash left half done.
- update of a TrainingJob: sync the status (observedGeneration follows the spec).
- any event of a Job labelled stopline.dev/job: sync its owner's status (phase from the Job).

kopf keeps its progress and diff base in the TrainingJob's status and adds no finalizer (the children
carry owner references, so there is nothing to clean up), so the operator never writes the spec or the
annotations and GitOps tools see no drift.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf

from stopline import GROUP, KIND, PLURAL, VERSION, controller, lifecycle
from stopline.api import SpecError
from stopline.kube import Kube, Rejected
from stopline.workload import JOB_LABEL

WATCH_SERVER_TIMEOUT_S = 300  # the apiserver ends each watch after this; kopf then resumes it
WATCH_CLIENT_TIMEOUT_S = 330  # a watch silent for longer is a dead connection
CONNECT_TIMEOUT_S = 30


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """kopf's state in our status fields, not its annotations; one operator replica, so no peering."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(
        field="status.stopline.progress", touch_field="status.stopline.touch"
    )
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.stopline.diffBase")
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # unused today: there are no deletion handlers
    settings.peering.standalone = True
    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_S
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT_S
    settings.watching.connect_timeout = CONNECT_TIMEOUT_S
    settings.posting.loggers = False  # Events only where we call kopf.info/warn, not one per log line
    settings.posting.level = logging.INFO
    memo.kube = await Kube.connect()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The service account in a pod, else $KUBECONFIG as it is when the operator starts (as for Kube)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def disconnect(memo: kopf.Memo, **_: Any) -> None:
    await memo.kube.close()


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
async def run_training_job(
    body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    kube: Kube = memo.kube
    rejected = None
    if body.get("status", {}).get("phase") not in lifecycle.TERMINAL_PHASES:
        parsed = controller.parse(body)
        if not isinstance(parsed, SpecError):
            try:
                await controller.ensure_children(kube, controller.owner_of(body), parsed)
            except controller.ForeignChild as error:
                raise kopf.TemporaryError(str(error), delay=30) from error
            except Rejected as error:
                rejected = f"spec.template: the apiserver refused the trainer's Job: {error}"
    _announce(await controller.sync_status(kube, namespace or "", name, rejected))


@kopf.on.update(GROUP, VERSION, PLURAL)
async def follow_generation(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _announce(await controller.sync_status(memo.kube, namespace or "", name))


@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
async def follow_job(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    for reference in body.metadata.get("ownerReferences") or []:
        if reference.get("kind") == KIND and reference.get("controller"):
            _announce(await controller.sync_status(memo.kube, namespace or "", reference["name"]))


def _announce(transition: controller.Transition | None) -> None:
    """One Event per phase change: Normal for progress, Warning with the cause for a failure."""
    if transition is None or transition.phase == transition.phase_before:
        return
    training_job = kopf.Body(cast(kopf.RawBody, transition.training_job))
    if transition.phase == lifecycle.FAILED:
        cause = transition.condition(lifecycle.FINISHED) or transition.condition(lifecycle.CREATED)
        kopf.warn(training_job, reason=cause.get("reason", "Failed"), message=cause.get("message", ""))
    elif transition.phase != lifecycle.PENDING:
        kopf.info(training_job, reason=transition.phase, message=f"TrainingJob is {transition.phase}")
