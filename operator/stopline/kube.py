"""All of the operator's own Kubernetes API calls, through one aiohttp session.

kopf watches with its own connection; this module reads and creates the children, patches the
TrainingJob's status subresource (never its spec or metadata) and posts its Events. Objects go in and come out
as plain dicts in the API's camelCase, the shape the pure builders and the decision code use.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, ClassVar, cast
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client, config

from stopline import GROUP, KIND, PLURAL, VERSION, fence

log = logging.getLogger(__name__)
Manifest = dict[str, Any]
CONFLICT, NOT_FOUND = 409, 404
BAD_REQUEST, UNPROCESSABLE = 400, 422
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
LOG_BYTES = 4096  # the last lines of a failed trainer's log: enough for a traceback's end
WORKLOAD_VERSIONS = ("v1beta2", "v1beta1")  # Kueue's Workload API, newest first
WORKLOAD_APIS = frozenset(f"kueue.x-k8s.io/{version}" for version in WORKLOAD_VERSIONS)
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # on the Workload Kueue makes for a Job: that Job's uid
CONNECTIONS = 64  # concurrent requests to the apiserver; more visits than that wait for a connection


_COLLECTIONS = {
    "Secret": "/api/v1/namespaces/{namespace}/secrets",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "Pod": "/api/v1/namespaces/{namespace}/pods",
    "PersistentVolumeClaim": "/api/v1/namespaces/{namespace}/persistentvolumeclaims",
    "Event": "/api/v1/namespaces/{namespace}/events",
    "TrainingJob": f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}",
}


def _collection(api_version: str, plural: str, namespace: str) -> str:
    """The URL path of a namespaced collection: /api/v1/... for the core group, /apis/<group>/<v>/... else."""
    root = "/api" if "/" not in api_version else "/apis"
    return f"{root}/{api_version}/namespaces/{namespace}/{plural}"


class ApiError(RuntimeError):
    """A non-2xx answer of the apiserver; `str()` is the apiserver's own message."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(_api_message(body, reason))
        self.status = status


class NotFound(ApiError):
    """404: the object (or its namespace) does not exist."""


class Conflict(ApiError):
    """409: the object changed since the resourceVersion we sent, or a create found the name taken."""


class Rejected(ApiError):
    """400/422: the apiserver refused the request as malformed or invalid; retrying won't help."""


_ERRORS: dict[int, type[ApiError]] = {
    NOT_FOUND: NotFound,
    CONFLICT: Conflict,
    BAD_REQUEST: Rejected,
    UNPROCESSABLE: Rejected,
}


def _controlled(item: Mapping[str, Any], uid: str) -> bool:
    """The object's controller ownerReference names that uid."""
    references = (item.get("metadata") or {}).get("ownerReferences") or []
    return any(
        isinstance(reference, Mapping) and reference.get("controller") is True and reference.get("uid") == uid
        for reference in references
    )


def _api_message(body: bytes, reason: str) -> str:
    try:
        return str(json.loads(body)["message"])
    except (TypeError, ValueError, KeyError):
        return reason


class Kube:
    """An open API client; `connect()` makes one, `close()` releases its connection pool.

    kubernetes_asyncio only loads the configuration (kubeconfig or in-cluster, with its token refresh);
    requests go through a plain aiohttp session. The library's own session trusts the environment, which
    costs two thread-pool hops per request (proxy variables and ~/.netrc): a fifth of the operator's CPU
    at 1,000 jobs (bench/operator).
    """

    FENCED: ClassVar[bool] = True  # writes only while this process may act (stopline.fence)

    def __init__(self, configuration: client.Configuration, session: aiohttp.ClientSession) -> None:
        self._configuration, self._session = configuration, session
        self._host = str(configuration.host).rstrip("/")  # it may carry a path (an API proxy)

    @classmethod
    async def connect(cls) -> Kube:
        """In a pod, the service account; elsewhere $KUBECONFIG or ~/.kube/config, like kubectl."""
        configuration = client.Configuration()
        if "KUBERNETES_SERVICE_HOST" in os.environ:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            # read $KUBECONFIG now: the library's default was fixed when it was imported
            await config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        tls = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            tls.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
        if not configuration.verify_ssl:
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
        connector = aiohttp.TCPConnector(ssl=tls, limit=CONNECTIONS)
        return cls(configuration, aiohttp.ClientSession(connector=connector))

    async def close(self) -> None:
        await self._session.close()

    async def _headers(self, accept: str, content_type: str | None = None) -> dict[str, str]:
        """Accept, Content-Type and the bearer token, refreshed by the library: in-cluster tokens rotate."""
        headers = {"Accept": accept}
        if content_type is not None:
            headers["Content-Type"] = content_type
        token = await self._configuration.get_api_key_with_prefix("BearerToken")
        if token:
            headers["Authorization"] = token
        return headers

    async def _request(
        self, method: str, path: str, body: object = None, content_type: str = "application/json"
    ) -> Manifest:
        """One call, JSON in and out, every object a plain dict; a non-2xx answer raises an ApiError."""
        if method != "GET" and self.FENCED:
            fence.ensure_acting(f"{method} {path}")
        headers = await self._headers("application/json", content_type)
        data = None if body is None else json.dumps(body)
        async with self._session.request(method, self._host + path, data=data, headers=headers) as response:
            text = await response.read()
            if not 200 <= response.status < 300:
                kind = _ERRORS.get(response.status, ApiError)
                raise kind(response.status, str(response.reason), text)
        return cast(Manifest, json.loads(text))

    async def _read(self, kind: str, namespace: str, name: str) -> Manifest | None:
        try:
            return await self._request("GET", f"{_COLLECTIONS[kind].format(namespace=namespace)}/{name}")
        except NotFound:
            return None

    async def create_or_read(self, manifest: Mapping[str, Any]) -> tuple[Manifest, bool]:
        """Create a Secret, Service or Job; when one of that name exists, return it instead.

        The bool says whether this call created it. Creating first and reading on 409 Conflict makes the
        call idempotent without a read-then-create race.
        """
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        try:
            return await self._request("POST", _COLLECTIONS[kind].format(namespace=namespace), manifest), True
        except Conflict:
            pass
        existing = await self._read(kind, namespace, manifest["metadata"]["name"])
        if existing is None:  # deleted between our POST and GET: the next event retries
            raise RuntimeError(f"{kind} {manifest['metadata']['name']} vanished while being adopted")
        return existing, False

    async def read_job(self, namespace: str, name: str) -> Manifest | None:
        return await self._read("Job", namespace, name)

    async def read_pod(self, namespace: str, name: str) -> Manifest | None:
        return await self._read("Pod", namespace, name)

    async def read_claim(self, namespace: str, name: str) -> Manifest | None:
        return await self._read("PersistentVolumeClaim", namespace, name)

    async def read_training_job(self, namespace: str, name: str) -> Manifest | None:
        return await self._read("TrainingJob", namespace, name)

    async def read_token(self, namespace: str, secret: str, key: str) -> str | None:
        """A key of a Secret, decoded; None when the Secret or the key is missing, or its value is not
        base64 of UTF-8 text (a tenant's Secret is their text: a bad one is no token, never an exception)."""
        found = await self._read("Secret", namespace, secret)
        encoded = ((found or {}).get("data") or {}).get(key)
        if not isinstance(encoded, str) or not encoded:
            return None
        try:
            return base64.b64decode(encoded, validate=True).decode()
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            return None

    async def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        """The pods matching a label selector, read from the apiserver now (not from a watch)."""
        path = _COLLECTIONS["Pod"].format(namespace=namespace)
        found = await self._request("GET", f"{path}?labelSelector={quote(selector)}")
        return [item for item in found.get("items") or [] if isinstance(item, dict)]

    async def read_log_tail(self, namespace: str, pod: str, container: str, lines: int = 5) -> list[str]:
        """The last lines of a container's log, at most LOG_BYTES; none when the kubelet cannot serve
        them (no node, the pod gone, or no right to read logs): a log is a help, never a requirement."""
        path = f"{_COLLECTIONS['Pod'].format(namespace=namespace)}/{pod}/log"
        query = f"?container={quote(container)}&tailLines={lines}&limitBytes={LOG_BYTES}"
        headers = await self._headers("text/plain")
        try:
            async with self._session.get(self._host + path + query, headers=headers) as response:
                if response.status != 200:
                    return []
                text = (await response.content.read(LOG_BYTES)).decode("utf-8", errors="replace")
        except (aiohttp.ClientError, TimeoutError):
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]

    async def list_workloads(self, namespace: str, job_uid: str) -> list[Manifest]:
        """Kueue's Workloads for the Job of that uid, by the controller ownerReference Kueue gives them (a
        Workload anyone in the namespace labels with the uid is not one); none where Kueue is not installed
        or not readable to the operator: a queue's words are a help, never a requirement."""
        selector = quote(f"{JOB_UID_LABEL}={job_uid}")
        for version in WORKLOAD_VERSIONS:
            path = f"/apis/kueue.x-k8s.io/{version}/namespaces/{namespace}/workloads?labelSelector={selector}"
            try:
                found = await self._request("GET", path)
            except NotFound:
                continue  # an older Kueue serves only an older version
            except ApiError:
                return []
            return [
                item
                for item in found.get("items") or []
                if isinstance(item, dict) and _controlled(item, job_uid)
            ]
        return []

    async def deactivate_workloads(self, namespace: str, job_uid: str) -> None:
        """spec.active=false on Kueue's Workloads of the Job of that uid: Kueue then suspends the Job and
        never admits it again. Suspending an admitted Job alone is undone by Kueue within a second."""
        for workload in await self.list_workloads(namespace, job_uid):
            api, name = workload.get("apiVersion"), (workload.get("metadata") or {}).get("name")
            if api not in WORKLOAD_APIS or not isinstance(name, str):
                continue
            path = f"/apis/{api}/namespaces/{namespace}/workloads/{name}"
            with suppress(ApiError):
                await self._request("PATCH", path, {"spec": {"active": False}}, MERGE_PATCH)

    async def delete_job(self, namespace: str, name: str, uid: str, foreground: bool = False) -> None:
        """Delete that Job object (its uid a precondition) and its pods: in the background, or first
        (`foreground`: the Job goes once its pods are gone); a Job already gone, or replaced by another
        object of the same name, is not an error."""
        path = f"{_COLLECTIONS['Job'].format(namespace=namespace)}/{name}"
        propagation = "Foreground" if foreground else "Background"
        options = {"propagationPolicy": propagation, "preconditions": {"uid": uid}}
        with suppress(NotFound, Conflict):
            await self._request("DELETE", path, options)

    async def read_object(self, api_version: str, plural: str, namespace: str, name: str) -> Manifest | None:
        """Any namespaced object by apiVersion and plural (a TrainingJob's target); None when it is not
        there, or its kind is not served (its CRD is not installed)."""
        try:
            return await self._request("GET", f"{_collection(api_version, plural, namespace)}/{name}")
        except NotFound:
            return None

    async def list_objects(
        self, api_version: str, plural: str, namespace: str, selector: str
    ) -> list[Manifest]:
        """The objects of a kind that match a label selector, read now; none when the kind is not served."""
        path = f"{_collection(api_version, plural, namespace)}?labelSelector={quote(selector)}"
        try:
            found = await self._request("GET", path)
        except NotFound:
            return []
        return [item for item in found.get("items") or [] if isinstance(item, dict)]

    async def set_suspend(
        self, api_version: str, plural: str, namespace: str, name: str, uid: str, path: str, value: bool
    ) -> bool:
        """Set the suspend field at `path` (e.g. /spec/runPolicy/suspend) on that object only: a merge patch
        (it makes a missing runPolicy) carrying the uid, which the apiserver refuses for any other object
        of the name. False: it is gone, another object now, or it refused (finished)."""
        patch: dict[str, Any] = {"metadata": {"uid": uid}}
        node = patch
        *parents, leaf = path.strip("/").split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        try:
            await self._request(
                "PATCH", f"{_collection(api_version, plural, namespace)}/{name}", patch, MERGE_PATCH
            )
        except (NotFound, Rejected, Conflict):
            return False
        return True

    async def delete_pod(self, namespace: str, name: str, uid: str, grace_period_s: int = 0) -> None:
        """Delete that pod object now (grace 0 = SIGKILL); one already gone, or replaced by another object
        of the same name (the uid precondition fails), is not an error."""
        path = f"{_COLLECTIONS['Pod'].format(namespace=namespace)}/{name}"
        options = {"gracePeriodSeconds": grace_period_s, "preconditions": {"uid": uid}}
        with suppress(NotFound, Conflict):
            await self._request("DELETE", path, options)

    async def patch_training_job_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
    ) -> Manifest:
        """A JSON merge patch of the status subresource: the keys given, nothing else; the object after it.
        With `resource_version`, only if the object is still at that version (else Conflict)."""
        path = f"{_COLLECTIONS['TrainingJob'].format(namespace=namespace)}/{name}/status"
        patch: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        return await self._request("PATCH", path, patch, MERGE_PATCH)

    async def post_event(
        self, training_job: Mapping[str, Any], reason: str, message: str, warning: bool = False
    ) -> None:
        """An Event on the TrainingJob (what `kubectl describe tj` shows). Best effort: an Event that
        cannot be posted is logged, never a reason to leave a stop half done."""
        metadata = training_job["metadata"]
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        event = {
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata.get("uid"),
            },
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "stopline"},
            "reportingComponent": "stopline.dev/operator",
            "reportingInstance": "stopline",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            path = _COLLECTIONS["Event"].format(namespace=metadata["namespace"])
            await self._request("POST", path, event)
        except (ApiError, aiohttp.ClientError, fence.Fenced) as error:
            log.warning(
                "Event %s on %s/%s not posted: %s", reason, metadata["namespace"], metadata["name"], error
            )
