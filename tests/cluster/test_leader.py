"""Leader election on the real apiserver: two candidates never lead at once, a dead or cut-off leader is
replaced in time, a stopping one hands over at once, and a `stopline operator --leader-elect` follower waits.

Short timings keep it fast: lease 3 s, renew deadline 2 s, retry period 0.5 s (the chart's are 15, 10, 2).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from operatorharness import (
    SINGLE,
    SINGLE_NAME,
    WAIT_S,
    checkpoint_message,
    condition,
    event_posted,
    events,
    exists,
    get,
    manifest,
    phase_is,
    running_trainer,
    status,
    stop_recorded,
    terminate,
)
from stopline.leader import Elector, LeaseClient, Timings
from stopline_local.controlplane import (
    ADMIN_TOKEN,
    REPO,
    ControlPlane,
    built_binary,
    die_with_parent,
    free_port,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.cluster

TIMINGS = Timings(lease_duration_s=3, renew_deadline_s=2.0, retry_period_s=0.5)
LEASE = "stopline-operator"
T = TypeVar("T")


class Relay:
    """A TCP relay on 127.0.0.1 in front of the apiserver; `cut()` closes it and every connection through it,
    as a network partition between one operator pod and the apiserver would."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):  # the listener was closed by cut()
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self._target_port))
                with self._lock:
                    self._sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone would not
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


@pytest.fixture
def relay(plane: ControlPlane) -> Iterator[Relay]:
    relay = Relay(plane.apiserver_port)
    yield relay
    relay.cut()


def kubeconfig_via(plane: ControlPlane, relay: Relay, folder: Path) -> Path:
    """The admin kubeconfig, with the apiserver reached through `relay`."""
    path = folder / "kubeconfig-via-relay"
    path.write_text(plane.kubeconfig.read_text().replace(plane.server, f"https://127.0.0.1:{relay.port}"))
    return path


def lease_spec(plane: ControlPlane, namespace: str, lease: str = LEASE) -> dict[str, Any]:
    """The Lease's spec as the apiserver has it now ({} before it exists): a direct GET, to time takeovers."""
    url = f"{plane.server}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{lease}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=5, context=tls) as response:
            return cast(dict[str, Any], json.loads(response.read()).get("spec", {}))
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return {}
        raise


def holder(plane: ControlPlane, namespace: str, lease: str = LEASE) -> str:
    return str(lease_spec(plane, namespace, lease).get("holderIdentity") or "")


async def connect(kubeconfig: Path) -> LeaseClient:
    os.environ["KUBECONFIG"] = str(kubeconfig)  # Kube.connect reads it at each call
    return cast(LeaseClient, await LeaseClient.connect())


async def until(check: Callable[[], T], timeout: float, what: str) -> T:
    """wait_until for a check inside the event loop: yields to the electors between polls."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def test_two_candidates_racing_never_lead_at_once_and_the_lease_names_the_leader(
    plane: ControlPlane, namespace: str
) -> None:
    async def scenario() -> None:
        clients = [await connect(plane.kubeconfig) for _ in range(2)]
        electors = [Elector(c, namespace, LEASE, f"candidate-{n}", TIMINGS) for n, c in enumerate(clients)]
        acquiring = [asyncio.create_task(e.acquire()) for e in electors]
        try:
            done, _ = await asyncio.wait(acquiring, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
            leader = electors[acquiring.index(done.pop())]
            follower = next(e for e in electors if e is not leader)
            holding = asyncio.create_task(leader.hold())
            samples = 0
            deadline = time.monotonic() + 8 * TIMINGS.retry_period_s
            while time.monotonic() < deadline:
                spec = await asyncio.to_thread(lease_spec, plane, namespace)
                assert [e.is_leader for e in electors].count(True) == 1
                assert leader.is_leader and not follower.is_leader
                assert spec["holderIdentity"] == leader.identity
                assert follower.holder in ("", leader.identity)  # "" until its first read
                samples += 1
                await asyncio.sleep(0.05)
            assert samples > 10
            assert follower.holder == leader.identity
            assert not holding.done(), "the leader stopped renewing"
            assert not any(
                task.done() for task in acquiring if task not in {acquiring[electors.index(leader)]}
            )
            spec = lease_spec(plane, namespace)
            assert spec["leaseDurationSeconds"] == TIMINGS.lease_duration_s
            assert spec["leaseTransitions"] == 0
            holding.cancel()
        finally:
            for task in acquiring:
                task.cancel()
            for client in clients:
                await client.close()

    run(scenario)


def test_a_released_lease_is_taken_by_the_follower_within_two_retry_periods(
    plane: ControlPlane, namespace: str
) -> None:
    async def scenario() -> float:
        first, second = await connect(plane.kubeconfig), await connect(plane.kubeconfig)
        leader = Elector(first, namespace, LEASE, "leader", TIMINGS)
        follower = Elector(second, namespace, LEASE, "follower", TIMINGS)
        try:
            await leader.acquire()
            taking = asyncio.create_task(follower.acquire())
            await until(lambda: follower.holder == "leader", WAIT_S, "the follower to see the leader")
            assert await leader.release()
            released = time.monotonic()
            assert not leader.is_leader
            await asyncio.wait_for(taking, WAIT_S)
            return time.monotonic() - released
        finally:
            await first.close()
            await second.close()

    handover = run(scenario)
    print(f"handover after a release: {handover:.2f}s")
    assert handover <= 2 * TIMINGS.retry_period_s
    spec = lease_spec(plane, namespace)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("follower", 1)  # a release is no transition


def test_a_leader_cut_off_from_the_apiserver_steps_down_before_the_follower_takes_over(
    plane: ControlPlane, namespace: str, relay: Relay, tmp_path: Path
) -> None:
    async def scenario() -> tuple[float, float]:
        cut_off, direct = (
            await connect(kubeconfig_via(plane, relay, tmp_path)),
            await connect(plane.kubeconfig),
        )
        leader = Elector(cut_off, namespace, LEASE, "leader", TIMINGS)
        follower = Elector(direct, namespace, LEASE, "follower", TIMINGS)
        try:
            await leader.acquire()
            holding = asyncio.create_task(leader.hold())
            taking = asyncio.create_task(follower.acquire())
            await until(lambda: follower.holder == "leader", WAIT_S, "the follower to see the leader")
            relay.cut()
            cut = time.monotonic()
            stepped_down = None
            while not taking.done():  # sampled: the two are never leaders together
                assert not (leader.is_leader and follower.is_leader)
                if stepped_down is None and not leader.is_leader:
                    stepped_down = time.monotonic() - cut
                assert time.monotonic() - cut < WAIT_S, "the follower never took over"
                await asyncio.sleep(0.01)
            taken = time.monotonic() - cut
            assert stepped_down is not None and stepped_down < taken
            await asyncio.wait_for(holding, WAIT_S)  # hold() returned: the caller stops acting
            return stepped_down, taken
        finally:
            await cut_off.close()
            await direct.close()

    stepped_down, taken = run(scenario)
    print(f"cut off: leader stepped down after {stepped_down:.2f}s, follower took over after {taken:.2f}s")
    assert stepped_down <= TIMINGS.renew_deadline_s + TIMINGS.retry_period_s
    assert taken <= TIMINGS.lease_duration_s + 2 * TIMINGS.retry_period_s


@contextmanager
def operator_process(
    pod: str, namespace: str, kubeconfig: Path, log: Path, lease: str = LEASE
) -> Iterator[subprocess.Popen[bytes]]:
    """`stopline operator --leader-elect` as the chart runs it, with the test's short timings."""
    command = [
        sys.executable,
        "-m",
        "stopline.cli",
        "operator",
        f"--namespace={namespace}",
        f"--listen=127.0.0.1:{free_port()}",
        "--leader-elect",
        f"--leader-election-id={lease}",
        f"--leader-election-lease-duration={TIMINGS.lease_duration_s}",
        f"--leader-election-renew-deadline={TIMINGS.renew_deadline_s}",
        f"--leader-election-retry-period={TIMINGS.retry_period_s}",
    ]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": pod, "POD_NAMESPACE": namespace}
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            stop_process(process)


def held_by(plane: ControlPlane, namespace: str, pod: str, lease: str = LEASE) -> Callable[[], bool]:
    return lambda: holder(plane, namespace, lease).startswith(f"{pod}_")


HANDLED = "Handler 'run_training_job' succeeded"


def test_only_the_leading_operator_acts_and_a_killed_leader_is_replaced_within_lease_and_retry(
    plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    logs = {pod: tmp_path / f"{pod}.log" for pod in ("operator-a", "operator-b")}
    with operator_process("operator-a", namespace, plane.kubeconfig, logs["operator-a"]) as first:
        wait_until(held_by(plane, namespace, "operator-a"), WAIT_S, "operator-a to lead")
        with operator_process("operator-b", namespace, plane.kubeconfig, logs["operator-b"]) as second:
            wait_until(
                lambda: "waiting for leadership held by operator-a_" in logs["operator-b"].read_text(),
                WAIT_S,
                "operator-b to wait for operator-a",
                details=lambda: logs["operator-b"].read_text(),
            )
            plane.kubectl("apply", "-n", namespace, "-f", str(SINGLE))
            wait_until(lambda: exists(plane, namespace, "job", SINGLE_NAME), WAIT_S, "the leader's Job")
            wait_until(lambda: HANDLED in logs["operator-a"].read_text(), WAIT_S, "the leader's handler log")
            assert HANDLED not in logs["operator-b"].read_text()
            assert held_by(plane, namespace, "operator-a")()

            first.send_signal(signal.SIGKILL)  # no release: the follower must wait for the lease to expire
            killed = time.monotonic()
            first.wait()
            wait_until(
                held_by(plane, namespace, "operator-b"), WAIT_S, "operator-b to take over", interval=0.05
            )
            takeover = time.monotonic() - killed
            print(f"takeover after SIGKILL of the leader: {takeover:.2f}s")
            assert takeover <= TIMINGS.lease_duration_s + 2 * TIMINGS.retry_period_s

            second_job = manifest(name="after-takeover")
            plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(second_job))
            wait_until(
                lambda: exists(plane, namespace, "job", "after-takeover"), WAIT_S, "the new leader's Job"
            )
            assert second.poll() is None


def test_a_leader_stopped_with_sigterm_exits_0_and_hands_over_within_two_retry_periods(
    plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    logs = {pod: tmp_path / f"{pod}.log" for pod in ("operator-a", "operator-b")}
    with operator_process("operator-a", namespace, plane.kubeconfig, logs["operator-a"]) as first:
        wait_until(held_by(plane, namespace, "operator-a"), WAIT_S, "operator-a to lead")
        with operator_process("operator-b", namespace, plane.kubeconfig, logs["operator-b"]):
            wait_until(
                lambda: "waiting for leadership" in logs["operator-b"].read_text(),
                WAIT_S,
                "operator-b to wait",
            )
            first.terminate()
            signalled = time.monotonic()
            assert first.wait(WAIT_S) == 0, logs["operator-a"].read_text()
            exited = time.monotonic()
            wait_until(
                held_by(plane, namespace, "operator-b"), WAIT_S, "operator-b to take over", interval=0.05
            )
            taken = time.monotonic()
    print(f"SIGTERM: leader exited after {exited - signalled:.2f}s, follower led {taken - exited:.2f}s later")
    assert "released lease" in logs["operator-a"].read_text()
    assert taken - exited <= 2 * TIMINGS.retry_period_s
    assert taken - signalled < TIMINGS.lease_duration_s  # handed over, not left to expire


def test_a_follower_stopped_with_sigterm_exits_0_without_acting(
    plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    logs = {pod: tmp_path / f"{pod}.log" for pod in ("operator-a", "operator-b")}
    with operator_process("operator-a", namespace, plane.kubeconfig, logs["operator-a"]):
        wait_until(held_by(plane, namespace, "operator-a"), WAIT_S, "operator-a to lead")
        with operator_process("operator-b", namespace, plane.kubeconfig, logs["operator-b"]) as second:
            wait_until(
                lambda: "waiting for leadership" in logs["operator-b"].read_text(),
                WAIT_S,
                "operator-b to wait",
            )
            second.terminate()
            assert second.wait(WAIT_S) == 0, logs["operator-b"].read_text()
        assert held_by(plane, namespace, "operator-a")()
    assert "stopped while waiting for leadership" in logs["operator-b"].read_text()


def test_a_leading_operator_cut_off_from_the_apiserver_exits_1_before_the_follower_takes_over(
    plane: ControlPlane, namespace: str, relay: Relay, tmp_path: Path
) -> None:
    logs = {pod: tmp_path / f"{pod}.log" for pod in ("operator-a", "operator-b")}
    cut_off = kubeconfig_via(plane, relay, tmp_path)
    with operator_process("operator-a", namespace, cut_off, logs["operator-a"]) as first:
        wait_until(held_by(plane, namespace, "operator-a"), WAIT_S, "operator-a to lead")
        with operator_process("operator-b", namespace, plane.kubeconfig, logs["operator-b"]):
            wait_until(
                lambda: "waiting for leadership" in logs["operator-b"].read_text(),
                WAIT_S,
                "operator-b to wait",
            )
            relay.cut()
            cut = time.monotonic()
            exited_at = taken_at = None
            while taken_at is None:
                if exited_at is None and first.poll() is not None:
                    exited_at = time.monotonic() - cut
                if held_by(plane, namespace, "operator-b")():
                    taken_at = time.monotonic() - cut
                assert time.monotonic() - cut < WAIT_S, "operator-b never took over"
                time.sleep(0.02)
            first.wait(WAIT_S)
    assert first.returncode == 1, logs["operator-a"].read_text()
    assert exited_at is not None and exited_at < taken_at
    print(f"cut off: leader exited after {exited_at:.2f}s, follower took over after {taken_at:.2f}s")
    assert "lost lease" in logs["operator-a"].read_text()


def test_with_only_the_charts_rights_two_operators_elect_one_and_no_other_lease_is_writable(
    plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """The chart's ServiceAccount, its namespaced Roles and its leader-election Role, as `helm install -n NS
    --set watchNamespaces={NS}` makes them: enough to elect, and no right on any other Lease."""
    release = namespace
    templates = ("serviceaccount.yaml", "rbac.yaml", "leader-election.yaml")
    rendered = subprocess.run(
        [
            str(built_binary("helm")),
            "template",
            release,
            str(REPO / "helm" / "stopline"),
            f"--namespace={namespace}",
            f"--set=watchNamespaces={{{namespace}}},replicaCount=2",
            *(f"--show-only=templates/{template}" for template in templates),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    plane.kubectl("apply", "-f", "-", input=rendered)
    token = plane.kubectl("create", "token", f"{release}-stopline", "-n", namespace).stdout.strip()
    kubeconfig = plane.write_kubeconfig(tmp_path / "operator-kubeconfig", token)
    lease = f"{release}-stopline"  # the chart's --leader-election-id
    logs = {pod: tmp_path / f"{pod}.log" for pod in ("operator-a", "operator-b")}
    with operator_process("operator-a", namespace, kubeconfig, logs["operator-a"], lease):
        wait_until(held_by(plane, namespace, "operator-a", lease), WAIT_S, "operator-a to lead")
        with operator_process("operator-b", namespace, kubeconfig, logs["operator-b"], lease):
            wait_until(
                lambda: "waiting for leadership held by operator-a_" in logs["operator-b"].read_text(),
                WAIT_S,
                "operator-b to wait for operator-a",
                details=lambda: logs["operator-b"].read_text(),
            )

    def as_operator(*args: str) -> subprocess.CompletedProcess[str]:
        return plane.kubectl(f"--kubeconfig={kubeconfig}", *args, check=False)

    plane.kubectl("create", "namespace", f"{namespace}-other")
    try:
        for other in (["-n", namespace, "other"], ["-n", f"{namespace}-other", lease]):
            plane.kubectl("create", "-f", "-", input=json.dumps(lease_manifest(other[-1], other[1])))
            refused = as_operator("annotate", "lease", *other, "taken=yes")
            assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr
        refused = as_operator("get", "lease", "-n", "kube-system", "kube-controller-manager")
        assert "forbidden" in refused.stderr.lower(), refused.stderr
    finally:
        plane.kubectl("delete", "namespace", f"{namespace}-other", "--wait=false", check=False)


def lease_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 15},
    }


def test_a_leader_killed_while_jobs_run_and_stop_is_replaced_and_every_stop_completes_once(
    plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """SIGKILL of the leading operator while one job is Stopping (its trainer saves while nobody leads)
    and another is Running: the follower takes over, concludes the first stop, stops the second, and each
    stop ends Stopped with its checkpoint and one CheckpointSaved Event, never two."""
    logs = {pod: tmp_path / f"{pod}.log" for pod in ("operator-a", "operator-b")}
    fast = {"interval": "1s"}
    uris = {name: f"/stopline/checkpoints/{name}/step-000100.pt" for name in ("stopping", "running")}
    with ExitStack() as stack:
        first = stack.enter_context(
            operator_process("operator-a", namespace, plane.kubeconfig, logs["operator-a"])
        )
        wait_until(held_by(plane, namespace, "operator-a"), WAIT_S, "operator-a to lead")
        stack.enter_context(operator_process("operator-b", namespace, plane.kubeconfig, logs["operator-b"]))
        trainers = {
            name: stack.enter_context(
                running_trainer(plane, namespace, manifest(name=name, criteria=[], metrics=fast))
            )
            for name in uris
        }
        for trainer, _ in trainers.values():
            trainer.report(1, 100, val_loss=1.0)
        stopping, stopping_pod = trainers["stopping"]
        plane.kubectl("annotate", "tj", "stopping", "-n", namespace, "stopline.dev/stop=enough")
        wait_until(lambda: stopping.stop_reason == "enough", WAIT_S, "the leader's POST /stop")
        stop_recorded(plane, namespace, "stopping")

        first.send_signal(signal.SIGKILL)
        first.wait()
        terminate(
            plane, namespace, stopping_pod, checkpoint_message(1, 100, uris["stopping"])
        )  # saved, unwatched
        plane.kubectl("annotate", "tj", "running", "-n", namespace, "stopline.dev/stop=enough too")
        wait_until(held_by(plane, namespace, "operator-b"), WAIT_S, "operator-b to take over")
        running, running_pod = trainers["running"]
        wait_until(lambda: running.stop_reason == "enough too", WAIT_S, "the new leader's POST /stop")
        stop_recorded(plane, namespace, "running")
        terminate(plane, namespace, running_pod, checkpoint_message(1, 100, uris["running"]))
        for name, uri in uris.items():
            wait_until(phase_is(plane, namespace, name, "Stopped"), WAIT_S, f"{name} Stopped")
            assert status(plane, namespace, name)["checkpoint"]["uri"] == uri
            wait_until(event_posted(plane, namespace, name, "CheckpointSaved", "Normal"), WAIT_S, "Event")
    for name in uris:
        saved = [e for e in events(plane, namespace, name) if e["reason"] == "CheckpointSaved"]
        assert sum(int(e.get("count") or 1) for e in saved) == 1, saved
        assert condition(get(plane, namespace, "tj", name), "Finished")["reason"] == "CheckpointSaved"
