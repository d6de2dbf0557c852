"""A local kubelet: a stand-in for a real kubelet on machines without a container runtime.

It registers one Node with the real apiserver, binds every unscheduled pod to it (the control plane has no
scheduler) and runs each pod's trainer container as a local process, reporting the pod's status back so
the Job controller completes or fails the Job. What a container runtime would give, it imitates:

- argv is the container's command + args; the image is ignored; the program name `python` is the
  interpreter this kubelet runs in (sys.executable), so trainers import the checkout's packages; cwd is
  the repository root.
- the env is the container's env with `valueFrom` resolved (fieldRef, secretKeyRef through the API), plus
  STOPLINE_BIND_ADDRESS=<pod IP> and STOPLINE_TERMINATION_LOG=<a file per pod>, whose content becomes the
  terminated state's message (its last 4096 bytes at most), like /dev/termination-log.
- every pod gets its own IP on loopback (127.0.0.2 upward; Linux routes 127/8 to lo). An env value
  `<hostname>.<subdomain>` (another pod's name under the Job's headless Service, e.g. MASTER_ADDR=job-0.job)
  is rewritten to that pod's IP; IPs are keyed by hostname, so rank 0's IP is known before rank 0 starts.
- a persistentVolumeClaim mount is a local folder, `<root>/volumes/<namespace>/<claim>`: env values that
  start with the mountPath are rewritten to start with that folder instead.
- with `prometheus` set (a stopline_local.prometheus server), each running pod's container port named
  "stopline" becomes a file_sd target labelled as the chart's PodMonitor labels it (namespace,
  stopline_job, pod, rank), removed when the process ends.
- on deletion it sends SIGTERM, SIGKILL once terminationGracePeriodSeconds ends, reports the terminated
  state and finalizes the deletion (DELETE with gracePeriodSeconds=0), as a kubelet does.

Each process logs to `<root>/logs/<namespace>_<pod>.log`, runs in its own session, dies with the process
that runs the kubelet (PR_SET_PDEATHSIG) and is killed by stop().
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from stopline_local.controlplane import REPO, die_with_parent
from stopline_local.prometheus import Prometheus

log = logging.getLogger("stopline-local-kubelet")

NODE_NAME = "stopline-local-node"
HOST_IP = "127.0.0.1"
WATCH_TIMEOUT_S = 30  # the apiserver ends each watch after this; the loop then resumes from the last version
FIELD_IN_BRACKETS = re.compile(r"^metadata\.(annotations|labels)\['(.+)'\]$")

Pod = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


MAX_TERMINATION_MESSAGE = 4096  # the kubelet's kubecontainer.MaxContainerTerminationMessageLength


def termination_message(path: Path) -> str:
    """What a kubelet reports of a container's termination-log: at most its last 4096 bytes (tail.ReadAtMost),
    "" when there is none; a process cannot make the local kubelet read a file of any size."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - MAX_TERMINATION_MESSAGE))
            return log.read(MAX_TERMINATION_MESSAGE).decode(errors="replace")
    except FileNotFoundError:
        return ""


def terminated_status(
    message: str = "",
    exit_code: int = 0,
    container: str = "trainer",
    reason: str | None = None,
    started_at: str | None = None,
    finished_at: str | None = None,
) -> dict[str, Any]:
    """The pod status a kubelet reports once its one container exited with `exit_code`, leaving `message` in
    its termination-log (left out when empty, as a kubelet does). The local kubelet reports its processes'
    ends with it, and tests without a kubelet patch it into a pod's status to play one."""
    terminated: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
    }
    if message:
        terminated["message"] = message
    if started_at:
        terminated["startedAt"] = started_at
    if finished_at:
        terminated["finishedAt"] = finished_at
    state = {
        "name": container,
        "image": "local-process",
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"terminated": terminated},
    }
    return {"phase": "Succeeded" if exit_code == 0 else "Failed", "containerStatuses": [state]}


class WatchExpired(Exception):
    """The apiserver no longer has the resourceVersion the watch resumed from (410 Gone): list again."""


@dataclass
class PodProcess:
    """One pod's trainer process and what the kubelet reports about it."""

    namespace: str
    name: str
    ip: str
    container: str
    process: subprocess.Popen[bytes]
    termination_log: Path
    log_path: Path
    started_at: str
    grace_period_s: float
    deleting: bool = False
    reported: bool = False  # the terminated state is in the apiserver
    killer: threading.Timer | None = field(default=None, repr=False)
    target: str | None = None  # host:port that Prometheus scrapes


class LocalKubelet:
    """Binds and runs the pods of the real apiserver as local processes; use it as a context manager."""

    def __init__(
        self,
        server: str,
        token: str,
        ca_file: Path,
        root: Path,
        namespaces: Collection[str] = (),
        node_name: str = NODE_NAME,
    ) -> None:
        self.server = server
        self.namespaces = set(namespaces)  # empty: every namespace
        self.node_name = node_name
        self.root = root
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.verify = str(ca_file)  # the self-signed chain the apiserver wrote into its cert-dir
        self.session.trust_env = False  # else REQUESTS_CA_BUNDLE or a proxy from the env overrides `verify`
        self.pods: dict[str, PodProcess] = {}  # by pod uid
        self.addresses: dict[tuple[str, str], str] = {}  # (namespace, hostname) -> pod IP
        self.exit_codes: dict[tuple[str, str], int] = {}  # (namespace, pod) -> code, kept after deletion
        self.prometheus: Prometheus | None = None  # when set, each pod's "stopline" port is a target
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.watch_response: requests.Response | None = None
        self.thread = threading.Thread(target=self._watch_pods, name="local-kubelet", daemon=True)

    def __enter__(self) -> LocalKubelet:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalKubelet:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self._register_node()
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop the watch and kill every process; the pods' objects stay in the apiserver."""
        self.stopping.set()
        if self.watch_response is not None:
            self.watch_response.close()
        with self.lock:
            running = list(self.pods.values())
        for pod in running:
            if pod.killer is not None:
                pod.killer.cancel()
            if pod.process.poll() is None:
                os.killpg(pod.process.pid, signal.SIGKILL)
            pod.process.wait(timeout=10)
        self.thread.join(timeout=5)

    def exit_code(self, namespace: str, name: str) -> int | None:
        """How a pod's process ended (negative: killed by that signal); None while it runs or never ran."""
        with self.lock:
            return self.exit_codes.get((namespace, name))

    def signal(self, namespace: str, name: str, signum: int) -> None:
        """Send a signal to a running pod's processes, as `kill` in a debug container sharing its process
        namespace would (SIGSTOP freezes a trainer: a hung collective, a GPU fault)."""
        with self.lock:
            running = [pod for pod in self.pods.values() if (pod.namespace, pod.name) == (namespace, name)]
        if not running or running[0].process.poll() is not None:
            raise LookupError(f"no running process for pod {namespace}/{name}")
        os.killpg(running[0].process.pid, signum)

    def log_of(self, namespace: str, name: str) -> str:
        """The output of a pod's process, to show when a test fails."""
        path = self._log_path(namespace, name)
        return path.read_text(errors="replace") if path.exists() else f"(no log for {namespace}/{name})"

    def logs(self) -> str:
        """Every process's output, newest last, for a failing test's report."""
        paths = sorted((self.root / "logs").glob("*.log"), key=lambda path: path.stat().st_mtime)
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}" for path in paths)

    def _log_path(self, namespace: str, name: str) -> Path:
        return self.root / "logs" / f"{namespace}_{name}.log"

    # the apiserver

    def _url(self, path: str) -> str:
        return f"{self.server}{path}"

    def _pod_path(self, namespace: str, name: str) -> str:
        return f"/api/v1/namespaces/{namespace}/pods/{name}"

    def _register_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": {"kubernetes.io/hostname": self.node_name}},
        }
        created = self.session.post(self._url("/api/v1/nodes"), json=node, timeout=10)
        if created.status_code != 409:  # 409: a kubelet earlier in this run registered it
            created.raise_for_status()
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "8"}
        status = {
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": HOST_IP}],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "stopline local kubelet",
                        "lastHeartbeatTime": _now(),
                        "lastTransitionTime": _now(),
                    }
                ],
            }
        }
        self._patch(f"/api/v1/nodes/{self.node_name}/status", status)

    def _patch(self, path: str, body: dict[str, Any]) -> None:
        response = self.session.patch(
            self._url(path),
            data=json.dumps(body),
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=10,
        )
        if response.status_code != 404:  # a pod deleted meanwhile has nothing left to report to
            response.raise_for_status()

    def _delete_now(self, namespace: str, name: str) -> None:
        """What a kubelet does once the containers are gone: remove the pod object for good."""
        response = self.session.delete(
            self._url(self._pod_path(namespace, name)), json={"gracePeriodSeconds": 0}, timeout=10
        )
        if response.status_code != 404:
            response.raise_for_status()

    # the watch

    def _watch_pods(self) -> None:
        """List, then watch from the list's version; on 410 Gone list again. Runs until stop()."""
        while not self.stopping.is_set():
            try:
                version = self._list_pods()
                while not self.stopping.is_set():
                    version = self._watch_from(version)
            except WatchExpired:
                continue
            except Exception:
                if self.stopping.is_set():
                    return
                log.exception("local kubelet: the pod watch failed; listing again")
                self.stopping.wait(0.5)

    def _list_pods(self) -> str:
        listed = self.session.get(self._url("/api/v1/pods"), timeout=30)
        listed.raise_for_status()
        body = listed.json()
        for pod in body["items"]:
            self._handle(pod)
        return str(body["metadata"]["resourceVersion"])

    def _watch_from(self, version: str) -> str:
        params = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        with self.session.get(
            self._url("/api/v1/pods"), params=params, stream=True, timeout=WATCH_TIMEOUT_S + 10
        ) as response:
            self.watch_response = response
            if response.status_code == 410:
                raise WatchExpired
            response.raise_for_status()
            for line in response.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    if event["object"].get("code") == 410:
                        raise WatchExpired
                    raise RuntimeError(f"pod watch error: {event['object']}")
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._handle(event["object"])
                elif event["type"] == "DELETED":
                    with self.lock:
                        self.pods.pop(event["object"]["metadata"]["uid"], None)
        return version

    def _handle(self, pod: Pod) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        if self.namespaces and metadata["namespace"] not in self.namespaces:
            return
        node = spec.get("nodeName")
        if not node:
            self._bind(pod)
            return
        if node != self.node_name:
            return
        with self.lock:
            running = self.pods.get(metadata["uid"])
        if metadata.get("deletionTimestamp"):
            self._terminate(pod, running)
        elif running is None and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
            self._run(pod)

    def _bind(self, pod: Pod) -> None:
        """There is no scheduler: every pod lands on this node, through the pods/binding subresource."""
        metadata = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": metadata["name"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        response = self.session.post(
            self._url(self._pod_path(metadata["namespace"], metadata["name"]) + "/binding"),
            json=binding,
            timeout=10,
        )
        if response.status_code not in (404, 409):  # deleted meanwhile, or bound already
            response.raise_for_status()

    # the processes

    def _address(self, namespace: str, hostname: str) -> str:
        """The pod IP for a hostname, the same whether its pod or a peer's env asks first."""
        with self.lock:
            key = (namespace, hostname)
            if key not in self.addresses:
                number = len(self.addresses) + 2
                self.addresses[key] = f"127.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
            return self.addresses[key]

    def _run(self, pod: Pod) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        namespace, name = metadata["namespace"], metadata["name"]
        container = next((c for c in spec["containers"] if c.get("name") == "trainer"), spec["containers"][0])
        ip = self._address(namespace, spec.get("hostname") or name)
        termination_log = self.root / "logs" / f"{namespace}_{name}.termination-log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            **self._container_env(pod, container, ip),
            "STOPLINE_BIND_ADDRESS": ip,
            "STOPLINE_TERMINATION_LOG": str(termination_log),
        }
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        log_path = self._log_path(namespace, name)
        try:
            with log_path.open("wb") as output:
                process = subprocess.Popen(
                    argv,
                    cwd=REPO,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
        except OSError as error:  # e.g. no such program: the pod fails, as with a runtime's StartError
            self._report_start_error(namespace, name, container["name"], str(error))
            return
        running = PodProcess(
            namespace=namespace,
            name=name,
            ip=ip,
            container=container["name"],
            process=process,
            termination_log=termination_log,
            log_path=log_path,
            started_at=_now(),
            grace_period_s=float(spec.get("terminationGracePeriodSeconds", 30)),
        )
        with self.lock:
            self.pods[metadata["uid"]] = running
        self._patch(self._pod_path(namespace, name) + "/status", self._running_status(running))
        running.target = self._scrape_target(pod, container, ip)
        threading.Thread(target=self._report_exit, args=(running,), name=f"pod-{name}", daemon=True).start()

    def _report_start_error(self, namespace: str, name: str, container: str, message: str) -> None:
        ended = terminated_status(message, 128, container, reason="StartError", finished_at=_now())
        self._patch(self._pod_path(namespace, name) + "/status", {"status": {"hostIP": HOST_IP, **ended}})

    def _container_env(self, pod: Pod, container: dict[str, Any], ip: str) -> dict[str, str]:
        spec = pod["spec"]
        peer_name = (
            re.compile(rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.{re.escape(spec['subdomain'])}$")
            if spec.get("subdomain")
            else None
        )
        claim_folders = self._claim_folders(pod, container)
        env: dict[str, str] = {}
        for variable in container.get("env", []):
            value = (
                self._resolve(pod, variable["valueFrom"], ip)
                if "valueFrom" in variable
                else variable.get("value", "")
            )
            peer = peer_name.match(value) if peer_name else None
            if peer:
                value = self._address(pod["metadata"]["namespace"], peer.group(1))
            for mount_path, folder in claim_folders.items():
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    value = str(folder) + value[len(mount_path.rstrip("/")) :]
            env[variable["name"]] = value
        return env

    def _claim_folders(self, pod: Pod, container: dict[str, Any]) -> dict[str, Path]:
        """mountPath -> the local folder standing in for the persistentVolumeClaim mounted there."""
        claims = {
            volume["name"]: volume["persistentVolumeClaim"]["claimName"]
            for volume in pod["spec"].get("volumes", [])
            if "persistentVolumeClaim" in volume
        }
        folders: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            if mount["name"] in claims:
                folder = self.root / "volumes" / pod["metadata"]["namespace"] / claims[mount["name"]]
                folder.mkdir(parents=True, exist_ok=True)
                folders[mount["mountPath"]] = folder
        return folders

    def claim_folder(self, namespace: str, claim: str) -> Path:
        """Where the pods of `namespace` find the persistentVolumeClaim `claim`."""
        return self.root / "volumes" / namespace / claim

    def _resolve(self, pod: Pod, source: dict[str, Any], ip: str) -> str:
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            response = self.session.get(
                self._url(f"/api/v1/namespaces/{pod['metadata']['namespace']}/secrets/{ref['name']}"),
                timeout=10,
            )
            response.raise_for_status()
            return base64.b64decode(response.json()["data"][ref["key"]]).decode()
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            in_brackets = FIELD_IN_BRACKETS.match(path)
            if in_brackets:
                return str(pod["metadata"].get(in_brackets.group(1), {}).get(in_brackets.group(2), ""))
            if path == "status.podIP":
                return ip
            value: Any = pod
            for part in path.split("."):
                value = value.get(part, "") if isinstance(value, dict) else ""
            return str(value)
        raise NotImplementedError(f"the local kubelet does not resolve {source}")

    def _running_status(self, pod: PodProcess) -> dict[str, Any]:
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": pod.started_at}
            for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        return {
            "status": {
                "phase": "Running",
                "hostIP": HOST_IP,
                "hostIPs": [{"ip": HOST_IP}],
                "podIP": pod.ip,
                "podIPs": [{"ip": pod.ip}],
                "startTime": pod.started_at,
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": pod.container,
                        "image": "local-process",
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "started": True,
                        "state": {"running": {"startedAt": pod.started_at}},
                    }
                ],
            }
        }

    def _scrape_target(self, pod: Pod, container: dict[str, Any], ip: str) -> str | None:
        """Register the pod's "stopline" port with Prometheus, labelled like the chart's PodMonitor does."""
        port = next(
            (p["containerPort"] for p in container.get("ports", []) if p.get("name") == "stopline"), None
        )
        if self.prometheus is None or port is None:
            return None
        labels = pod["metadata"].get("labels") or {}
        target = f"{ip}:{port}"
        self.prometheus.add_trainer(
            target,
            pod["metadata"]["namespace"],
            labels.get("stopline.dev/job", ""),
            pod["metadata"]["name"],
            labels.get("batch.kubernetes.io/job-completion-index", "0"),
        )
        return target

    def _report_exit(self, pod: PodProcess) -> None:
        """Wait for the process, report its terminated state; finish a deletion that was waiting on it."""
        code = pod.process.wait()
        if pod.killer is not None:
            pod.killer.cancel()
        if pod.target and self.prometheus is not None:
            self.prometheus.remove_target(pod.target)
        with self.lock:
            self.exit_codes[pod.namespace, pod.name] = code
        if self.stopping.is_set():
            return
        message = termination_message(pod.termination_log)
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as runtimes say
        ended = terminated_status(
            message, exit_code, pod.container, started_at=pod.started_at, finished_at=_now()
        )
        status = {**self._running_status(pod)["status"], **ended}  # the pod keeps its IPs and start time
        for condition in status["conditions"]:
            if condition["type"] in ("Ready", "ContainersReady"):
                condition.update(status="False", reason="PodCompleted", lastTransitionTime=_now())
        self._patch(self._pod_path(pod.namespace, pod.name) + "/status", {"status": status})
        with self.lock:
            pod.reported = True
            deleting = pod.deleting
        if deleting:
            self._delete_now(pod.namespace, pod.name)

    def _terminate(self, pod: Pod, running: PodProcess | None) -> None:
        """A pod marked for deletion: SIGTERM, SIGKILL after its grace period, then remove it."""
        metadata = pod["metadata"]
        if running is None:
            self._delete_now(metadata["namespace"], metadata["name"])
            return
        with self.lock:
            already, running.deleting = running.deleting, True
            reported = running.reported
        if reported:
            self._delete_now(metadata["namespace"], metadata["name"])
        if already or running.process.poll() is not None:
            return  # the exit report deletes the pod once it has reported the terminated state
        grace = float(metadata.get("deletionGracePeriodSeconds", running.grace_period_s))
        os.killpg(running.process.pid, signal.SIGTERM)
        running.killer = threading.Timer(grace, self._kill, args=(running,))
        running.killer.daemon = True
        running.killer.start()

    @staticmethod
    def _kill(pod: PodProcess) -> None:
        if pod.process.poll() is None:
            os.killpg(pod.process.pid, signal.SIGKILL)
