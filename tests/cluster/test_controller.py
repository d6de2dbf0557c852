"""controller.transition is a compare-and-set on the real apiserver: a phase judged on a stale body never
overwrites a newer one (another operator, or a restarted one, moved it first)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from controlplane import ControlPlane
from operatorharness import apply, get, manifest, status
from stopline import controller
from stopline.kube import Kube
from stopline.lifecycle import RUNNING, STOPPED, STOPPING, Condition

pytestmark = pytest.mark.cluster


def set_phase(plane: ControlPlane, namespace: str, name: str, phase: str) -> dict[str, Any]:
    patch = json.dumps({"status": {"phase": phase}})
    plane.kubectl("patch", "tj", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
    return dict(get(plane, namespace, "tj", name))


def stop(namespace: str, name: str, seen: dict[str, Any]) -> controller.Transition | None:
    async def run() -> controller.Transition | None:
        kube = await Kube.connect()
        try:
            return await controller.transition(
                kube,
                namespace,
                name,
                allowed={RUNNING},
                phase=STOPPING,
                conditions=[Condition("StopRequested", True, "Manual", "test")],
                extra={"stopReason": {"type": "Manual", "message": "test"}},
                seen=seen,
            )
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
