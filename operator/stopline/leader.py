"""Leader election on a coordination.k8s.io/v1 Lease, so that of several operator replicas only one acts.

The protocol is client-go's (k8s.io/client-go/tools/leaderelection), which kube-controller-manager and every
controller-runtime operator use, so `kubectl get lease` reads the same way:

- a candidate takes the Lease when it is absent, released (empty holderIdentity), already its own, or has
  not changed for the holder's leaseDurationSeconds. That wait is measured on the candidate's own
  monotonic clock from when it first saw the Lease as it is, never by comparing the holder's renewTime
  with the local wall clock: clock skew between nodes cannot make two leaders, only a skew *rate* could.
- every write is a compare-and-set on metadata.resourceVersion (a create that finds one, or an update of a
  version that changed, is a 409 Conflict: another candidate won that race);
- the leader renews every retry period; if it has not renewed for renewDeadline (< leaseDuration) it
  stops being the leader, before any other candidate may take over, and the process exits (controller-
  runtime does the same: a leader that lost the Lease must not finish what it was doing);
- on a clean shutdown the leader releases the Lease (client-go's ReleaseOnCancel), so a follower takes
  over within a retry period instead of a lease duration.

The decisions (`parse_record`, `observe`, `may_take`, `claimed_spec`, `released_spec`) are pure functions of
the Lease and a time given as an argument; `Elector` runs them against the apiserver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeGuard, cast

import aiohttp

from stopline import fence, monitoring
from stopline.kube import ApiError, Conflict, Kube, Manifest, NotFound

log = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
RELEASED_LEASE_DURATION_S = 1  # what client-go writes on release; the apiserver wants a positive value


@dataclass(frozen=True)
class Timings:
    """client-go's defaults: a leader that stops renewing is replaced within about lease + retry seconds."""

    lease_duration_s: int = 15  # whole seconds: the Lease stores an integer
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def problem(self) -> str | None:
        """Why these timings cannot keep two leaders apart, or None. The leader must give up (renew
        deadline) before a follower may take over (lease duration), and retry more than once in between."""
        if not 0 < self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            return (
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period_s:g}s, {self.renew_deadline_s:g}s, {self.lease_duration_s}s"
            )
        return None


@dataclass(frozen=True)
class Record:
    """The fields of a Lease's spec that the election reads, parsed totally: odd values become defaults."""

    holder: str
    lease_duration_s: int | None  # None: absent or not a positive integer
    transitions: int
    acquire_time: str | None


@dataclass(frozen=True)
class Observation:
    """A Lease as last read, and when (local monotonic seconds) its spec was first seen as it is now."""

    lease: Manifest
    record: Record
    seen_at: float


class Outcome(Enum):
    LEADING = "leading"
    FOLLOWING = "following"  # another candidate holds a Lease that has not expired
    RACED = "raced"  # another candidate wrote the Lease between our read and our write (409)
    FAILED = "failed"  # the apiserver did not answer, or refused


def parse_record(lease: Mapping[str, Any]) -> Record:
    spec = lease.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    holder, duration = spec.get("holderIdentity"), spec.get("leaseDurationSeconds")
    transitions, acquired = spec.get("leaseTransitions"), spec.get("acquireTime")
    return Record(
        holder=holder if isinstance(holder, str) else "",
        lease_duration_s=duration if _is_count(duration) and duration > 0 else None,
        transitions=transitions if _is_count(transitions) else 0,
        acquire_time=acquired if isinstance(acquired, str) else None,
    )


def _is_count(value: object) -> TypeGuard[int]:
    """A non-negative JSON integer (True is an int to Python, not to the apiserver)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def observe(previous: Observation | None, lease: Manifest, now: float) -> Observation:
    """The new observation; the clock restarts only when the spec changed (a renewal, a new holder)."""
    unchanged = previous is not None and previous.lease.get("spec") == lease.get("spec")
    seen_at = previous.seen_at if previous is not None and unchanged else now
    return Observation(lease=lease, record=parse_record(lease), seen_at=seen_at)


def may_take(observation: Observation, identity: str, now: float, lease_duration_s: int) -> bool:
    """Whether `identity` may write itself as holder: the Lease is released, its own, or expired. The
    holder's own leaseDurationSeconds counts; `lease_duration_s` when the Lease has none."""
    record = observation.record
    duration = record.lease_duration_s or lease_duration_s
    return not record.holder or record.holder == identity or now >= observation.seen_at + duration


def micro_time(moment: datetime) -> str:
    """A metav1.MicroTime, as the apiserver writes one."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed_spec(
    previous: Record | None, identity: str, lease_duration_s: int, wall_now: datetime
) -> dict[str, Any]:
    """The spec that makes `identity` the holder: a renewal keeps acquireTime and the transition count,
    a takeover counts one more transition (client-go's rule, so `kubectl get lease` means the same)."""
    now = micro_time(wall_now)
    renewal = previous is not None and previous.holder == identity
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": lease_duration_s,
        "acquireTime": (previous.acquire_time if previous is not None and renewal else None) or now,
        "renewTime": now,
        "leaseTransitions": (0 if previous is None else previous.transitions + (0 if renewal else 1)),
    }


def released_spec(previous: Record, wall_now: datetime) -> dict[str, Any]:
    """No holder: any candidate may take it at once."""
    now = micro_time(wall_now)
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": RELEASED_LEASE_DURATION_S,
        "acquireTime": now,
        "renewTime": now,
        "leaseTransitions": previous.transitions,
    }


def default_identity() -> str:
    """The pod's name (or the host's) and a random suffix: a restarted container is a new candidate, and
    waits for the Lease of the process it replaced to expire instead of taking it as its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


class LeaseClient(Kube):
    """The operator's Kubernetes client plus the Lease calls, in a client of its own: renewals never wait
    behind the supervisor's requests for a connection. Writes raise kube.Conflict (409) when another
    candidate created or changed the Lease since it was read."""

    FENCED = False  # its writes are the election itself (compare-and-set), the release after leading too

    async def read_lease(self, namespace: str, name: str) -> Manifest | None:
        try:
            return await self._request("GET", f"{LEASES.format(namespace=namespace)}/{name}")
        except NotFound:
            return None

    async def create_lease(self, namespace: str, lease: Manifest) -> Manifest:
        return await self._request("POST", LEASES.format(namespace=namespace), lease)

    async def replace_lease(self, namespace: str, name: str, lease: Manifest) -> Manifest:
        """PUT with the resourceVersion the Lease carries: a compare-and-set."""
        return await self._request("PUT", f"{LEASES.format(namespace=namespace)}/{name}", lease)


# What one attempt may meet besides a lost race: an apiserver that refuses (403, 5xx), a dropped connection,
# an answer that is not JSON. Each is a failed attempt, retried on the next period.
_TRANSIENT = (ApiError, aiohttp.ClientError, OSError, ValueError)


class Elector:
    """One candidate for one Lease. `acquire()` returns once it leads; `hold()` renews and returns when
    leadership is lost; `release()` gives the Lease up. `is_leader` is true only while the last renewal is
    younger than the renew deadline, so it turns false before any other candidate may take over."""

    def __init__(
        self,
        leases: LeaseClient,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._leases, self.namespace, self.name, self.identity = leases, namespace, name, identity
        self.timings = timings
        self._clock = clock or time.monotonic
        self._wall_clock = wall_clock or (lambda: datetime.now(UTC))
        self._observed: Observation | None = None
        self._renewed_at: float | None = None  # local time just before the last successful write
        self._reported: tuple[str, str] | None = None  # the last "waiting" line logged, to log changes only

    @property
    def is_leader(self) -> bool:
        return (
            self._renewed_at is not None and self._clock() - self._renewed_at < self.timings.renew_deadline_s
        )

    @property
    def holder(self) -> str:
        """The holder as last read ("" when unknown or released)."""
        return self._observed.record.holder if self._observed is not None else ""

    async def acquire(self) -> None:
        """Try every retry period until this candidate holds the Lease."""
        log.info(
            "Leader election: %s is a candidate for lease %s/%s", self.identity, self.namespace, self.name
        )
        while True:
            outcome, why = await self._bounded_attempt(self.timings.renew_deadline_s)
            if outcome is Outcome.LEADING:
                log.info("Leader election: %s acquired lease %s/%s", self.identity, self.namespace, self.name)
                return
            self._report_waiting(outcome, why)
            await asyncio.sleep(self.timings.retry_period_s)

    async def hold(self) -> None:
        """Renew every retry period; return once leadership is lost (the caller must stop acting at once)."""
        while True:
            await asyncio.sleep(self.timings.retry_period_s)
            why = await self._renew()
            if why is not None:
                self._renewed_at = None
                log.error(
                    "Leader election: %s lost lease %s/%s: %s", self.identity, self.namespace, self.name, why
                )
                return

    async def release(self) -> bool:
        """Write the Lease as released, if this candidate holds it (compare-and-set on what it last wrote)."""
        observed = self._observed
        self._renewed_at = None
        if observed is None or observed.record.holder != self.identity:
            return False
        lease = {**observed.lease, "spec": released_spec(observed.record, self._wall_clock())}
        try:
            async with asyncio.timeout(self.timings.renew_deadline_s):
                written = await self._leases.replace_lease(self.namespace, self.name, lease)
        except (*_TRANSIENT, TimeoutError) as error:
            log.warning("Leader election: lease %s/%s not released: %r", self.namespace, self.name, error)
            return False
        self._observed = observe(observed, written, self._clock())
        log.info("Leader election: %s released lease %s/%s", self.identity, self.namespace, self.name)
        return True

    async def _renew(self) -> str | None:
        """Retry until renewed (None) or until the renew deadline has passed; the reason when lost."""
        why = "not renewed"
        while self._renewed_at is not None:
            remaining = self._renewed_at + self.timings.renew_deadline_s - self._clock()
            if remaining <= 0:
                break
            outcome, why = await self._bounded_attempt(remaining)
            if outcome is Outcome.LEADING:
                return None
            if outcome is Outcome.FOLLOWING:
                return why
            await asyncio.sleep(min(self.timings.retry_period_s, max(0.0, remaining)))
        return f"{why}; not renewed within the renew deadline of {self.timings.renew_deadline_s:g}s"

    async def _bounded_attempt(self, timeout_s: float) -> tuple[Outcome, str]:
        try:
            async with asyncio.timeout(timeout_s):
                return await self._attempt()
        except TimeoutError:
            return Outcome.FAILED, f"the apiserver did not answer within {timeout_s:.1f}s"

    async def _attempt(self) -> tuple[Outcome, str]:
        """One read and at most one compare-and-set write; says who holds the Lease when it is not us."""
        started = self._clock()
        try:
            lease = await self._leases.read_lease(self.namespace, self.name)
            if lease is None:
                spec = claimed_spec(None, self.identity, self.timings.lease_duration_s, self._wall_clock())
                metadata = {"name": self.name, "namespace": self.namespace}
                fresh = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata}
                written = await self._leases.create_lease(self.namespace, {**fresh, "spec": spec})
            else:
                self._observed = observe(self._observed, lease, self._clock())
                if not may_take(self._observed, self.identity, self._clock(), self.timings.lease_duration_s):
                    return Outcome.FOLLOWING, f"held by {self._observed.record.holder}"
                spec = claimed_spec(
                    self._observed.record, self.identity, self.timings.lease_duration_s, self._wall_clock()
                )
                kept = lease.get("spec")  # fields this elector does not know (strategy, preferredHolder) stay
                merged = {**(kept if isinstance(kept, Mapping) else {}), **spec}
                written = await self._leases.replace_lease(
                    self.namespace, self.name, {**lease, "spec": merged}
                )
        except Conflict:
            return Outcome.RACED, "another candidate wrote the lease first"
        except _TRANSIENT as error:
            return Outcome.FAILED, str(error) or type(error).__name__
        self._observed = observe(self._observed, written, self._clock())
        self._renewed_at = started
        return Outcome.LEADING, ""

    def _report_waiting(self, outcome: Outcome, why: str) -> None:
        """One log line per change of holder or error, not one per retry."""
        if self._reported == (outcome.value, why):
            return
        self._reported = (outcome.value, why)
        if outcome is Outcome.FOLLOWING:
            log.info(
                "Leader election: waiting for leadership %s (lease %s/%s)", why, self.namespace, self.name
            )
        elif outcome is Outcome.RACED:
            log.info("Leader election: lease %s/%s: %s", self.namespace, self.name, why)
        else:
            log.warning("Leader election: lease %s/%s not acquired yet: %s", self.namespace, self.name, why)


def exit_at_once() -> None:
    """What a process that lost the Lease does: exit non-zero now, as controller-runtime does, so nothing
    it was doing outlives its leadership; the Deployment restarts it as a follower."""
    logging.shutdown()
    os._exit(1)


async def run_elected(
    timings: Timings,
    namespace: str,
    name: str,
    operate: Callable[[asyncio.Event, asyncio.Event], Awaitable[None]],
    listen: str | None,
    on_lost: Callable[[], None] = exit_at_once,
) -> int:
    """Wait for the Lease, then `operate(stop, ready)` while renewing it; release it when `operate` returns.

    While waiting the process serves /healthz (and an empty /metrics) on `listen`, so probes and rolling
    updates see a healthy follower; the operator's own server takes the address over once it leads.
    SIGTERM/SIGINT set `stop`: a follower then exits 0 without acting; a leader's `operate` winds down
    (kopf's stop_flag), and the Lease is released once it returned. `operate` sets `ready` once it runs
    (kopf's ready_flag).
    """
    stop = asyncio.Event()
    _stop_on_signals(stop)
    leases = cast(LeaseClient, await LeaseClient.connect())
    elector = Elector(leases, namespace, name, default_identity(), timings)
    try:
        if not await _wait_for_leadership(elector, stop, listen):
            log.info("Leader election: stopped while waiting for leadership")
            return 0
        fence.guard(
            lambda: elector.is_leader
        )  # a stalled leader that wakes up past its deadline does nothing
        # created before `operate` starts kopf: kopf leaves the tasks that existed before it alone
        ready = asyncio.Event()
        helpers = [
            asyncio.create_task(_hold_or_exit(elector, on_lost), name="stopline-leader-renew"),
            asyncio.create_task(_reclaim_signals(ready, stop), name="stopline-reclaim-signals"),
        ]
        try:
            await operate(stop, ready)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await elector.release()
        return 0
    finally:
        await leases.close()


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def _reclaim_signals(ready: asyncio.Event, stop: asyncio.Event) -> None:
    """kopf replaces our signal handlers when it starts; once it is ready, ours come back, so that every stop
    goes through `stop`. (kopf's own handler leaves the task that waits on its stop_flag behind, and kopf
    then waits 5 s for it before exiting: 5 s more before the Lease is released.)"""
    await ready.wait()
    _stop_on_signals(stop)


async def _wait_for_leadership(elector: Elector, stop: asyncio.Event, listen: str | None) -> bool:
    """True once `elector` leads; False when `stop` was set first. Serves a follower's /healthz meanwhile."""
    follower_http = await monitoring.serve(listen, lambda: True) if listen else None
    acquiring = asyncio.create_task(elector.acquire(), name="stopline-leader-acquire")
    stopping = asyncio.create_task(stop.wait(), name="stopline-stop-signal")
    try:
        done, _ = await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if acquiring in done:
            acquiring.result()  # an unexpected error is raised here, not swallowed
            return True
        return False
    finally:
        for task in (acquiring, stopping):
            task.cancel()
        await asyncio.gather(acquiring, stopping, return_exceptions=True)
        if follower_http is not None:
            await follower_http.cleanup()


async def _hold_or_exit(elector: Elector, on_lost: Callable[[], None]) -> None:
    await elector.hold()
    on_lost()
