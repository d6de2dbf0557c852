"""What the fault tests share: the operator over several namespaces, checks that a state holds for a while,
pods played at an address of the test's choosing, and the servers that misbehave on purpose.

Every server here binds to 127.0.0.x (or ::1), runs on its own thread and event loop, and is closed by
the test that made it. The misbehaving ones are named for what they fake:

- `HostileTrainer`: rank 0's /metrics as a buggy or malicious trainer serves it (NaN, Inf, a body over
  the cap, a body that never ends, a redirect), and a POST /stop that records the token it was sent.
- `StandInPrometheus`: Prometheus' query API answering what a test sets, for an answer a real Prometheus
  never gives (a series without a value).
- `Slowloris`: clients that open connections and never finish their request head.
- `WatchHold`: a proxy to the apiserver that holds kopf's watches of some resources until released, so
  an operator starts with those watches not synced (the one fault of a real watch we cannot time).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from kopf.testing import KopfRunner

from operatorharness import (
    RUNNING_AND_READY,
    WAIT_S,
    apply,
    get,
    phase_is,
    pods,
    set_pod_status,
    status,
)
from stopline_local import prometheus as prometheus_module
from stopline_local.controlplane import ADMIN_TOKEN, ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet
from stopline_local.prometheus import Prometheus, running_prometheus

T = TypeVar("T")
STORY_WAIT_S = 90  # a real trainer's story on a shared 2-core box; every wait returns once its check passes
MESSAGE_MAX = 340  # a message built from a remote answer: a short excerpt of it and the operator's words


@contextmanager
def operator_watching(*namespaces: str) -> Iterator[KopfRunner]:
    """The operator watching these namespaces (operatorharness.operator watches one); on exit it is
    stopped and must have ended cleanly."""
    args = ["run", "--standalone", *(f"--namespace={name}" for name in namespaces), "-m", "stopline.handlers"]
    with KopfRunner(args, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output


def holds(check: Callable[[], bool], seconds: float, what: str, interval: float = 0.25) -> None:
    """`check` stays true for `seconds`; fails at the first poll where it does not."""
    deadline = time.monotonic() + seconds
    while True:
        assert check(), f"{what} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def find_condition(current: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """A condition of a TrainingJob's status by type, or None."""
    return next((c for c in current.get("conditions", []) if c["type"] == type_), None)


def metrics_available(plane: ControlPlane, namespace: str, name: str, value: str) -> Callable[[], Any]:
    """A check for `kubectl get tj`'s MetricsAvailable condition at "True" or "False"; returns it."""

    def check() -> Any:
        found = find_condition(status(plane, namespace, name), "MetricsAvailable")
        return found if found is not None and found["status"] == value else None

    return check


def wait_for_status(
    plane: ControlPlane,
    kubelet: LocalKubelet,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], T],
    what: str,
    timeout: float = STORY_WAIT_S,
) -> T:
    """Wait until `check` holds for the status of a TrainingJob whose trainers the local kubelet runs, and
    return what it returned; a timeout shows that status and the trainers' last log lines."""
    return wait_until(
        lambda: check(status(plane, namespace, name)),
        timeout,
        f"{name}: {what}",
        details=lambda: f"{status(plane, namespace, name)}\n{kubelet.logs()[-3000:]}",
    )


def epoch_at_least(epoch: int) -> Callable[[dict[str, Any]], bool]:
    """A check of a status: its progress reached `epoch`."""
    return lambda current: bool(current.get("progress", {}).get("epoch", 0) >= epoch)


def progress_at(plane: ControlPlane, namespace: str, name: str, epoch: int) -> Callable[[], bool]:
    return lambda: status(plane, namespace, name).get("progress", {}).get("epoch") == epoch


def start_pod(
    plane: ControlPlane, namespace: str, training_job: dict[str, Any], address: tuple[str, int]
) -> str:
    """Apply `training_job` with spec.metrics.port = address's port, and mark the Job controller's pod
    Running at address's IP, as a kubelet would; returns the pod's name once the phase is Running.
    Whatever serves `address` is the test's (operatorharness.running_trainer serves the real endpoint)."""
    name = training_job["metadata"]["name"]
    training_job["spec"].setdefault("metrics", {})["port"] = address[1]
    apply(plane, namespace, training_job)
    wait_until(lambda: len(pods(plane, namespace, name)) == 1, WAIT_S, f"{name}: the Job controller's pod")
    pod = pods(plane, namespace, name)[0]["metadata"]["name"]
    ip = {"podIP": address[0], "podIPs": [{"ip": address[0]}]}
    set_pod_status(plane, namespace, pod, RUNNING_AND_READY | ip)
    wait_until(phase_is(plane, namespace, name, "Running"), WAIT_S, f"{name}: phase Running")
    return str(pod)


def job_suspended(plane: ControlPlane, namespace: str, name: str) -> bool:
    return get(plane, namespace, "job", name)["spec"].get("suspend") is True


@contextmanager
def prometheus_on_port(workdir: Path, port: int) -> Iterator[Prometheus]:
    """stopline_local's real Prometheus, on a port chosen by the test: a Prometheus restarted on the same
    port answers at the URL the TrainingJobs name (running_prometheus picks a free port itself)."""
    pinned = pytest.MonkeyPatch()
    pinned.setattr(prometheus_module, "free_port", lambda: port)
    try:
        with running_prometheus(workdir) as server:
            pinned.undo()
            yield server
    finally:
        pinned.undo()


class LoopbackServer:
    """An aiohttp app on (host, port), served from its own thread and event loop until close()."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"server-{host}", daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        self.run(self.runner.setup())
        self.run(web.TCPSite(self.runner, host, port).start())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


LEAK = "LEAK"  # the text a hostile answer repeats: a message may show an excerpt of it, never much


class HostileTrainer:
    """Rank 0's endpoint as a buggy or malicious trainer serves it; `mode` says what GET /metrics answers:

    - good: the contract's series at `epoch` (step epoch*100, val_loss 0.5);
    - nan-epoch / inf-epoch: stopline_epoch NaN / +Inf;
    - not-prometheus: 4,000 characters of text that is no exposition format (a page, a secret);
    - nan-metrics: a valid position with NaN train_loss and val_loss (an impostor after a NonFinite stop);
    - huge: 2 MiB (over the operator's 1 MiB cap), streamed without Content-Length;
    - slow: a body that trickles a line every 0.2 s and never ends;
    - redirect: 307 to `redirect_to`.

    POST /stop answers 202 and records the Authorization header it got (None when absent).
    """

    def __init__(self, address: tuple[str, int], mode: str = "good", redirect_to: str = "") -> None:
        self.mode, self.epoch, self.redirect_to = mode, 1, redirect_to
        self.scrapes = 0
        self.authorizations: list[str | None] = []
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/stop", self._stop)
        self.server = LoopbackServer(app, *address)
        self.ip, self.port = address

    def good_text(self) -> str:
        epoch = self.epoch
        return (
            f'stopline_epoch {epoch}\nstopline_step {epoch * 100}\nstopline_metric{{name="val_loss"}} 0.5\n'
        )

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.scrapes += 1
        mode = self.mode
        if mode == "redirect":
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        if mode == "huge":
            return await self._stream(request, self._huge())
        if mode == "slow":
            return await self._stream(request, self._slow())
        texts = {
            "good": self.good_text(),
            "nan-epoch": f"# {LEAK * 100}\nstopline_epoch NaN\nstopline_step 100\n",
            "inf-epoch": f"# {LEAK * 100}\nstopline_epoch +Inf\nstopline_step 100\n",
            "not-prometheus": f"{LEAK * 1000} = hunter2\n",
            "nan-metrics": (
                'stopline_epoch 1\nstopline_step 100\nstopline_metric{name="train_loss"} NaN\n'
                'stopline_metric{name="val_loss"} NaN\n'
            ),
        }
        return web.Response(text=texts[mode], content_type="text/plain")

    async def _stream(self, request: web.Request, chunks: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):  # the operator hung up: what it should do
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        return response

    async def _huge(self) -> Any:
        line = f"# {LEAK * 1000}\n".encode()
        for _ in range((2 << 20) // len(line)):
            yield line
        yield self.good_text().encode()

    async def _slow(self) -> Any:
        yield self.good_text().encode()
        for _ in range(100):  # 20 s at most: the operator gives up long before
            await asyncio.sleep(0.2)
            yield b"# still coming\n"

    async def _stop(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        return web.json_response({"stopping": True, "rank": 0}, status=202)

    def close(self) -> None:
        self.server.close()


class StandInPrometheus:
    """Prometheus' instant-query API answering `result` (a vector) to every query: a stand-in for an
    answer a real Prometheus never gives, such as a series without a value."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.result: list[dict[str, Any]] = []
        self.queries = 0
        app = web.Application()
        app.router.add_get("/api/v1/query", self._query)
        self.server = LoopbackServer(app, *address)
        self.url = self.server.base_url

    async def _query(self, request: web.Request) -> web.Response:
        self.queries += 1
        data = {"resultType": "vector", "result": self.result}
        return web.json_response({"status": "success", "data": data})

    def close(self) -> None:
        self.server.close()


def trainer_series(
    namespace: str, job: str, pod: str, epoch: float | str, **values: float
) -> list[dict[str, Any]]:
    """The trainer series of one job's rank-0 pod as Prometheus answers them (labels as the chart's
    PodMonitor sets): `pod` is that pod's name, as the operator checks it."""
    at = time.time()
    labels = {"namespace": namespace, "stopline_job": job, "pod": pod, "rank": "0"}
    series: list[dict[str, Any]] = [
        {"metric": {"__name__": "stopline_epoch", **labels}, "value": [at, str(epoch)]},
        {"metric": {"__name__": "stopline_step", **labels}, "value": [at, "100"]},
    ]
    series += [
        {"metric": {"__name__": "stopline_metric", "name": name, **labels}, "value": [at, str(value)]}
        for name, value in values.items()
    ]
    return series


class Slowloris:
    """`count` clients on `address` that each send part of a POST /stop head, a header line every 0.5 s,
    and never the blank line that ends it; a connection the server drops is opened again. Records the
    most threads this process had meanwhile (the trainer's server runs in it)."""

    HEAD = b"POST /stop HTTP/1.1\r\nHost: trainer\r\nContent-Type: application/json\r\n"

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self.address, self.count = address, count
        self.sockets: list[socket.socket] = []
        self.opened = 0
        self.peak_threads = threading.active_count()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(10)
        for sock in self.sockets:
            sock.close()

    @property
    def open(self) -> int:
        return len(self.sockets)

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET)
        sock.settimeout(0.5)
        try:
            sock.connect(self.address)
            sock.sendall(self.HEAD)
        except OSError:
            sock.close()
            return
        self.sockets.append(sock)
        self.opened += 1

    def _run(self) -> None:
        while not self._stopping.is_set():
            for _ in range(min(50, self.count - len(self.sockets))):
                self._connect()
            alive = []
            for sock in self.sockets:
                try:
                    sock.sendall(b"X-Keep: 1\r\n")
                    alive.append(sock)
                except OSError:
                    sock.close()
            self.sockets = alive
            self.peak_threads = max(self.peak_threads, threading.active_count())
            self._stopping.wait(0.5)


class WatchHold:
    """A fault injector: an HTTP proxy to the apiserver that holds kopf's requests (list and watch) for
    the given resources until release(); every other request, the operator's own client included,
    passes through at once. An operator whose kubeconfig points here starts with those watches not synced.
    """

    HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})

    def __init__(self, plane: ControlPlane, address: tuple[str, int], resources: tuple[str, ...]) -> None:
        self.upstream, self.resources = plane.server, resources
        self.held = 0
        self.released = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        app = web.Application()
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self.server = LoopbackServer(app, *address)

    def kubeconfig(self, plane: ControlPlane, path: Path) -> Path:
        """An admin kubeconfig whose server is this proxy."""
        plane.write_kubeconfig(path, ADMIN_TOKEN)
        path.write_text(path.read_text().replace(plane.server, self.server.base_url))
        return path

    def release(self) -> None:
        self.server.loop.call_soon_threadsafe(self.released.set)

    def close(self) -> None:
        self.release()
        self.server.close()

    async def _open(self, _: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        self.session = aiohttp.ClientSession(auto_decompress=False, timeout=timeout)

    async def _close(self, _: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    def _held(self, request: web.Request) -> bool:
        kopf = request.headers.get("User-Agent", "").startswith("kopf/")
        return kopf and any(request.path.endswith(f"/{resource}") for resource in self.resources)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self._held(request):
            self.held += 1
            await self.released.wait()
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP_BY_HOP}
        body = await request.read()
        async with self.session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            ssl=False,
            allow_redirects=False,
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in self.HOP_BY_HOP},
            )
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):  # either side hung up
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            return response
