"""A trainer that freezes (review N4): a real torch trainer, run by the test kubelet, is SIGSTOPped after a
few epochs. Its pod stays Running and its endpoint stops answering while the apiserver still answers: the
job must end Stale within staleAfter + gracePeriod + two intervals, its pods gone, its last weights named."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from e2e.support import CLAIM, apply_claim, load_weights, training_job
from faults.support import STORY_WAIT_S, epoch_at_least, find_condition, wait_for_status
from operatorharness import apply, event_posted, get, operator, pods, status
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet

pytestmark = pytest.mark.faults

STALE_AFTER_S, GRACE_PERIOD_S, INTERVAL_S = 6, 5, 1
BOUND_S = STALE_AFTER_S + GRACE_PERIOD_S + 2 * INTERVAL_S
SLACK_S = 15  # a loaded 2-core box: the operator's poll, the status write, the kubelet's report
TWO_S_EPOCHS = ("--epochs", "50", "--steps-per-epoch", "10", "--sleep-per-step", "0.2")


def test_a_trainer_frozen_mid_run_ends_stale_with_its_pods_gone_and_its_last_weights_named(
    plane: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    apply_claim(plane, namespace)
    job = training_job("frozen", args=TWO_S_EPOCHS)  # saves every epoch, keeping only its newest weights
    job["spec"]["metrics"] |= {"interval": f"{INTERVAL_S}s", "staleAfter": f"{STALE_AFTER_S}s"}
    # an ackTimeout longer than gracePeriod: asking a trainer that never answers must not outlast it
    job["spec"]["stopPolicy"] = {"gracePeriod": f"{GRACE_PERIOD_S}s", "ackTimeout": "60s"}
    with operator(namespace):
        apply(plane, namespace, job)
        wait_for_status(plane, kubelet, namespace, "frozen", epoch_at_least(2), "epoch 2")
        [pod] = pods(plane, namespace, "frozen")
        frozen_at = wait_for_status(
            plane,
            kubelet,
            namespace,
            "frozen",
            lambda _: freeze_once_its_last_save_is_shown(plane, namespace, kubelet, pod["metadata"]["name"]),
            "SIGSTOP once status.checkpoint names the claim's last.json",
        )
        wait_for_status(
            plane,
            kubelet,
            namespace,
            "frozen",
            lambda current: current.get("phase") in ("Stopped", "Failed"),
            f"ended within staleAfter + gracePeriod + two intervals ({BOUND_S} s) + {SLACK_S} s",
            timeout=BOUND_S + SLACK_S,
        )
        assert frozen_at is not None
        ended_after = time.monotonic() - frozen_at
        wait_until(lambda: not pods(plane, namespace, "frozen"), STORY_WAIT_S, "frozen: its pods gone")
        wait_until(event_posted(plane, namespace, "frozen", "GracePeriodExpired"), STORY_WAIT_S, "the Event")
    print(f"\nfrozen trainer: ended {ended_after:.1f} s after SIGSTOP (the bound: {BOUND_S} s)")
    ended = get(plane, namespace, "tj", "frozen")["status"]
    reason = ended["stopReason"]
    assert (reason["type"], reason["criterion"]) == ("Stale", "staleAfter")
    assert "stopped answering" in reason["message"] and "while its pod runs" in reason["message"]
    finished = find_condition(ended, "Finished") or {}
    assert (ended["phase"], finished.get("reason")) == ("Failed", "GracePeriodExpired"), finished
    checkpoint = ended["checkpoint"]
    assert f"epoch {checkpoint['epoch']}" in finished["message"]  # it names the last weights saved
    assert checkpoint["uri"] == last_saved(kubelet, namespace)["uri"]
    load_weights(checkpoint, kubelet.claim_folder(namespace, CLAIM) / "runs" / "frozen")


def last_saved(kubelet: LocalKubelet, namespace: str) -> dict[str, Any]:
    """The manifest of the trainer's newest save, as the claim holds it."""
    folder = kubelet.claim_folder(namespace, CLAIM) / "runs" / "frozen"
    return dict(json.loads((folder / "last.json").read_text()))


def freeze_once_its_last_save_is_shown(
    plane: ControlPlane, namespace: str, kubelet: LocalKubelet, pod: str
) -> float | None:
    """SIGSTOP the trainer at a moment status.checkpoint names its newest save (the operator saw it), and
    return when; if it saved again meanwhile, let it go on and try again later."""
    newest = last_saved(kubelet, namespace)["uri"]
    if status(plane, namespace, "frozen").get("checkpoint", {}).get("uri") != newest:
        return None
    kubelet.signal(namespace, pod, signal.SIGSTOP)
    if last_saved(kubelet, namespace)["uri"] == newest:
        return time.monotonic()
    kubelet.signal(namespace, pod, signal.SIGCONT)
    return None
