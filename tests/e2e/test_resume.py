"""A stop taken back by hand, with a real torch trainer: stopped by annotation, resumed by annotation, it
runs on from the checkpoint's epoch to its maxEpochs with every epoch once, and saved nothing in the end."""

from __future__ import annotations

import re

import pytest

from e2e.support import CLAIM, DEADLINE_S, epoch_reached, finish, load_weights, training_job
from operatorharness import apply, event_posted, events, get, status
from stopline_local.controlplane import ControlPlane, wait_until
from stopline_local.kubelet import LocalKubelet

pytestmark = pytest.mark.e2e

EPOCHS = 10
LOGGED = re.compile(r"epoch (\d+) step \d+ val_loss ([0-9.e+-]+)")


def trainer_curve(kubelet: LocalKubelet, namespace: str, name: str) -> list[tuple[int, float]]:
    """(epoch, val_loss) as the example trainer logged them, from every pod the job had, in order."""
    logs = sorted((kubelet.root / "logs").glob(f"{namespace}_{name}-*.log"))
    return [(int(epoch), float(value)) for log in logs for epoch, value in LOGGED.findall(log.read_text())]


def test_a_job_stopped_by_hand_resumes_by_hand_to_its_end_with_every_epoch_once(
    story: ControlPlane, namespace: str, kubelet: LocalKubelet
) -> None:
    job = training_job(
        "mlp", args=("--epochs", str(EPOCHS), "--steps-per-epoch", "10", "--sleep-per-step", "0.05")
    )
    job["spec"].update(maxEpochs=EPOCHS, criteria=[])
    job["spec"]["metrics"]["interval"] = "1s"
    apply(story, namespace, job)
    epoch_reached(story, namespace, "mlp", 2)
    story.kubectl("annotate", "tj", "mlp", "-n", namespace, "stopline.dev/stop=enough for now")
    stopped = finish(story, kubelet, namespace, "mlp")
    assert stopped["status"]["phase"] == "Stopped", stopped["status"]
    saved = stopped["status"]["checkpoint"]
    assert saved["epoch"] < EPOCHS

    story.kubectl("annotate", "tj", "mlp", "-n", namespace, "stopline.dev/resume=worth more epochs")
    wait_until(lambda: status(story, namespace, "mlp").get("resumeCount") == 1, DEADLINE_S, "mlp: resumed")
    finished = finish(story, kubelet, namespace, "mlp")
    final = finished["status"]
    assert final["phase"] == "Succeeded", final
    entry = final["resumes"][0]
    assert entry["fromEpoch"] == saved["epoch"] and entry["message"] == "worth more epochs"
    assert (entry["stoppedBy"]["type"], entry["reason"]) == ("Manual", "Manual")
    assert final["progress"]["epoch"] == EPOCHS
    # every epoch once: each logged once over both runs, and status.curve holds each one's value
    logged = trainer_curve(kubelet, namespace, "mlp")
    assert sorted(epoch for epoch, _ in logged) == list(range(1, EPOCHS + 1)), logged
    assert final["curve"] == pytest.approx([value for _, value in sorted(logged)], abs=6e-6)
    assert not final.get("gpuSecondsSaved")  # the resumed epochs count as run: it ran to maxEpochs
    assert final["checkpoint"]["step"] > saved["step"]  # the final weights, after the resume
    load_weights(final["checkpoint"], kubelet.claim_folder(namespace, CLAIM) / "runs" / "mlp")
    wait_until(event_posted(story, namespace, "mlp", "Resumed", "Normal"), DEADLINE_S, "the Resumed Event")
    assert "ResumeRefused" not in {event["reason"] for event in events(story, namespace, "mlp")}
    lines = story.kubectl("get", "tj", "mlp", "-n", namespace).stdout.splitlines()
    at = lines[0].index("RESUMED")  # columns by position: an empty REASON leaves no word
    assert lines[1][at:].split()[0] == "1" and " Succeeded " in lines[1], lines
    assert get(story, namespace, "tj", "mlp")["status"]["resumeCount"] == 1
