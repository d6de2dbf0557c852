"""Leader election decisions, as pure functions of a Lease and a time: who may take it, what is written."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client

from stopline import fence
from stopline.cli import parser
from stopline.kube import Kube
from stopline.leader import (
    Elector,
    Record,
    Timings,
    claimed_spec,
    may_take,
    micro_time,
    observe,
    parse_record,
    released_spec,
)
from stopline.stopping import signal

ME, OTHER = "operator-a_1234", "operator-b_5678"
WALL = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


def lease(holder: str, duration: Any = 15, renewed: str = "2026-03-01T11:59:58.000000Z") -> dict[str, Any]:
    return {
        "metadata": {"name": "stopline", "namespace": "ops", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": "2026-03-01T11:00:00.000000Z",
            "renewTime": renewed,
            "leaseTransitions": 3,
        },
    }


def test_a_lease_held_by_another_may_be_taken_only_once_unchanged_for_its_duration() -> None:
    seen = observe(None, lease(OTHER), now=100.0)
    assert not may_take(seen, ME, now=114.9, lease_duration_s=15)
    assert may_take(seen, ME, now=115.0, lease_duration_s=15)


def test_a_renewal_restarts_the_wait_even_when_the_renew_time_looks_old() -> None:
    """Expiry is measured on the candidate's clock from when it saw the spec change, never by comparing the
    holder's renewTime with the local wall clock, so a skewed clock cannot make two leaders."""
    first = observe(None, lease(OTHER, renewed="2001-01-01T00:00:00.000000Z"), now=100.0)
    assert not may_take(first, ME, now=100.0, lease_duration_s=15)
    renewed = observe(first, lease(OTHER, renewed="2001-01-01T00:00:02.000000Z"), now=110.0)
    assert not may_take(renewed, ME, now=120.0, lease_duration_s=15)
    assert may_take(renewed, ME, now=125.0, lease_duration_s=15)


def test_an_unchanged_lease_read_again_keeps_its_first_sighting() -> None:
    first = observe(None, lease(OTHER), now=100.0)
    again = observe(first, lease(OTHER), now=110.0)
    assert again.seen_at == 100.0
    assert may_take(again, ME, now=115.0, lease_duration_s=15)


def test_a_released_or_own_lease_may_be_taken_at_once() -> None:
    assert may_take(observe(None, lease(""), now=100.0), ME, now=100.0, lease_duration_s=15)
    assert may_take(observe(None, lease(ME), now=100.0), ME, now=100.0, lease_duration_s=15)


def test_the_holders_declared_duration_counts_and_ours_only_when_it_declared_none() -> None:
    short = observe(None, lease(OTHER, duration=3), now=100.0)
    assert may_take(short, ME, now=103.0, lease_duration_s=15)
    for odd in (None, 0, -5, "15", 1.5, True):
        seen = observe(None, lease(OTHER, duration=odd), now=100.0)
        assert not may_take(seen, ME, now=114.0, lease_duration_s=15), odd
        assert may_take(seen, ME, now=115.0, lease_duration_s=15), odd


@pytest.mark.parametrize(
    "spec",
    [None, "nonsense", [], {"holderIdentity": 7, "leaseTransitions": -1, "acquireTime": 3}, {}],
)
def test_a_malformed_lease_parses_as_released_with_defaults(spec: Any) -> None:
    record = parse_record({"metadata": {}, "spec": spec})
    assert record == Record(holder="", lease_duration_s=None, transitions=0, acquire_time=None)


def test_a_takeover_counts_a_transition_and_starts_a_new_acquire_time() -> None:
    spec = claimed_spec(parse_record(lease(OTHER)), ME, 15, WALL)
    assert spec == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-03-01T12:00:00.250000Z",
        "renewTime": "2026-03-01T12:00:00.250000Z",
        "leaseTransitions": 4,
    }


def test_a_renewal_keeps_the_acquire_time_and_the_transition_count() -> None:
    spec = claimed_spec(parse_record(lease(ME)), ME, 15, WALL)
    assert spec["acquireTime"] == "2026-03-01T11:00:00.000000Z"
    assert spec["renewTime"] == "2026-03-01T12:00:00.250000Z"
    assert spec["leaseTransitions"] == 3


def test_the_first_holder_of_a_new_lease_has_no_transition() -> None:
    assert claimed_spec(None, ME, 15, WALL)["leaseTransitions"] == 0


def test_a_release_leaves_no_holder_and_keeps_the_transition_count() -> None:
    spec = released_spec(parse_record(lease(ME)), WALL)
    assert spec["holderIdentity"] == ""
    assert spec["leaseTransitions"] == 3
    assert spec["leaseDurationSeconds"] >= 1  # the apiserver refuses 0


def test_micro_time_is_utc_with_microseconds() -> None:
    assert micro_time(datetime(2026, 3, 1, 13, 0, 0, 5, tzinfo=UTC)) == "2026-03-01T13:00:00.000005Z"


@pytest.mark.parametrize(
    ("lease_s", "renew_s", "retry_s"),
    [(15, 10.0, 2.0), (3, 2.0, 0.5)],
)
def test_timings_where_the_leader_gives_up_before_a_follower_may_take_over_are_accepted(
    lease_s: int, renew_s: float, retry_s: float
) -> None:
    assert Timings(lease_s, renew_s, retry_s).problem() is None


@pytest.mark.parametrize(
    ("lease_s", "renew_s", "retry_s"),
    [(10, 10.0, 2.0), (15, 10.0, 10.0), (15, 20.0, 2.0), (15, 10.0, 0.0), (15, 10.0, float("nan"))],
)
def test_timings_that_could_make_two_leaders_are_refused_naming_the_values(
    lease_s: int, renew_s: float, retry_s: float
) -> None:
    problem = Timings(lease_s, renew_s, retry_s).problem()
    assert problem is not None
    assert f"{lease_s}s" in problem


def test_the_operator_command_refuses_unsafe_timings_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parser().parse_args(
        [
            "operator",
            "--leader-elect",
            "--leader-election-namespace=ops",
            "--leader-election-renew-deadline=20",
        ]
    )
    assert args.run(args) == 2
    assert "renew deadline < lease duration" in capsys.readouterr().err


def test_the_operator_command_needs_a_namespace_for_the_lease(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    args = parser().parse_args(["operator", "--leader-elect"])
    assert args.run(args) == 2
    assert "--leader-election-namespace or $POD_NAMESPACE" in capsys.readouterr().err


class StandInLeases:
    """A stand-in for the Lease API (the unit tier has no apiserver): one Lease, created on request."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.lease

    async def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        self.lease = {**lease, "metadata": {**lease["metadata"], "resourceVersion": "1"}}
        return self.lease

    async def replace_lease(self, namespace: str, name: str, lease: dict[str, Any]) -> dict[str, Any]:
        self.lease = lease
        return lease


def test_a_leader_stalled_past_its_renew_deadline_writes_nothing_and_signals_no_trainer() -> None:
    """Review N11: a leader frozen (SIGSTOP, CPU starvation) past its renew deadline wakes up with work in
    flight before its renewal notices the loss; no apiserver write and no POST /stop may leave it."""

    async def scenario() -> list[str]:
        received: list[str] = []

        async def record(request: web.Request) -> web.Response:
            received.append(f"{request.method} {request.path}")
            return web.json_response({}, status=202)

        runner = web.AppRunner(web.Application())
        runner.app.router.add_route("*", "/{path:.*}", record)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        now = [0.0]
        elector = Elector(StandInLeases(), "ops", "stopline", ME, Timings(), clock=lambda: now[0])  # type: ignore[arg-type]
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{port}"
        session = aiohttp.ClientSession()
        kube = Kube(configuration, session)
        try:
            await elector.acquire()
            fence.guard(lambda: elector.is_leader)
            await kube.set_suspend(
                "batch/v1", "jobs", "ns", "a", "uid-a", "/spec/suspend", True
            )  # while it leads, it writes
            now[0] = Timings().renew_deadline_s  # stalled: the deadline passed before it could renew
            with pytest.raises(fence.Fenced):
                await kube.set_suspend("batch/v1", "jobs", "ns", "a", "uid-a", "/spec/suspend", True)
            with pytest.raises(fence.Fenced):
                await kube.patch_training_job_status("ns", "a", {"phase": "Stopped"})
            with pytest.raises(fence.Fenced):
                await signal(session, [f"http://127.0.0.1:{port}/stop"], "token", "stale", 5.0, now[0])
        finally:
            fence.guard(lambda: True)
            await session.close()
            await runner.cleanup()
        return received

    received = asyncio.run(scenario())
    assert received == ["PATCH /apis/batch/v1/namespaces/ns/jobs/a"]  # the one write made while leading
