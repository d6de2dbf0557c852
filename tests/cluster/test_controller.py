"""The one status writer on the real apiserver: a phase judged on a stale body never overwrites a newer
one, and two writers racing from the same body (two visits, or two operators) lose no condition."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest

from operatorharness import apply, get, manifest, status
from stopline.kube import Kube
from stopline.lifecycle import Condition, StatusChange
from stopline.status import Compose, StatusWriter, Written
from stopline.vocabulary import RUNNING, STOPPED, STOPPING
from stopline_local.controlplane import ControlPlane

pytestmark = pytest.mark.cluster


def set_phase(plane: ControlPlane, namespace: str, name: str, phase: str) -> dict[str, Any]:
    patch = json.dumps({"status": {"phase": phase}})
    plane.kubectl("patch", "tj", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
    return dict(get(plane, namespace, "tj", name))


def begin_stop(body: Mapping[str, Any]) -> StatusChange | None:
    """The supervisor's rule: only a Running job can begin stopping."""
    if (body.get("status") or {}).get("phase") != RUNNING:
        return None
    return StatusChange(
        fields={"stopReason": {"type": "Manual", "message": "test"}},
        conditions=(Condition("StopRequested", True, "Manual", "test"),),
        phase=STOPPING,
    )


def stop(namespace: str, name: str, seen: dict[str, Any]) -> Written | None:
    async def run() -> Written | None:
        kube = await Kube.connect()
        try:
            return await StatusWriter(kube).write(namespace, name, begin_stop, seen=seen)
        finally:
            await kube.close()

    return asyncio.run(run())


def test_a_transition_judged_on_a_stale_body_reads_again_and_does_not_undo_a_newer_phase(
    plane: ControlPlane, namespace: str
) -> None:
    apply(plane, namespace, manifest("cas"))
    stale = set_phase(plane, namespace, "cas", RUNNING)
    set_phase(plane, namespace, "cas", STOPPED)  # someone else finished the stop meanwhile

    assert stop(namespace, "cas", seen=stale) is None
    assert status(plane, namespace, "cas")["phase"] == STOPPED
    assert "stopReason" not in status(plane, namespace, "cas")


def test_a_transition_on_a_current_body_moves_the_phase(plane: ControlPlane, namespace: str) -> None:
    apply(plane, namespace, manifest("cas"))
    current = set_phase(plane, namespace, "cas", RUNNING)

    done = stop(namespace, "cas", seen=current)
    assert done is not None and done.phase_before == RUNNING
    assert status(plane, namespace, "cas")["phase"] == STOPPING
    assert status(plane, namespace, "cas")["stopReason"]["type"] == "Manual"
    assert stop(namespace, "cas", seen=current) is None  # the same stale view cannot stop it twice


def test_two_writers_racing_from_the_same_body_lose_no_condition(plane: ControlPlane, namespace: str) -> None:
    """status.conditions is a list a merge patch replaces whole: each writer sets its own condition from
    the same body; the one that comes second must read again and keep the first one's condition."""
    apply(plane, namespace, manifest("race"))
    seen = set_phase(plane, namespace, "race", RUNNING)
    wanted = {f"Probe{i}": Condition(f"Probe{i}", True, "Set", f"writer {i}") for i in range(8)}

    def setting(condition: Condition) -> Compose:
        return lambda _: StatusChange(conditions=(condition,))

    async def race() -> list[Written | None]:
        kubes = [await Kube.connect() for _ in wanted]
        try:
            writers = [StatusWriter(kube) for kube in kubes]  # one each: as many operators, no shared lock
            return await asyncio.gather(
                *(
                    writer.write(namespace, "race", setting(condition), seen)
                    for writer, condition in zip(writers, wanted.values(), strict=True)
                )
            )
        finally:
            for kube in kubes:
                await kube.close()

    written = asyncio.run(race())
    assert all(result is not None for result in written)
    conditions = {c["type"]: c for c in status(plane, namespace, "race").get("conditions") or []}
    assert set(wanted) <= set(conditions), sorted(conditions)
    assert status(plane, namespace, "race")["phase"] == RUNNING
