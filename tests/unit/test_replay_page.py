"""`stopline replay --html`: the page holds --json's figures, escapes every name, fetches nothing, and a
real headless Chromium (Debian's, which CI installs) renders one curve per job of a real sweep."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from pages import Page, dom_in_chromium
from stopline import replay
from stopline.cli import main
from stopline.replay import page as page_module

REPO = Path(__file__).resolve().parents[2]
RECOMMENDED = REPO / "examples" / "recommended-policy.yaml"
BENCH_CURVES = REPO / "bench" / "policy" / "curves" / "curves.csv.gz"
# Three small sweeps of the shared curves (132 jobs, ~2,500 rows): stops by forecast and rungs happen there.
TASKS = (
    "algoperf_v05/criteo1tb_layernorm_jax",
    "algoperf_v05/ogbg_gelu_jax",
    "algoperf_v05/criteo1tb_embed_init_pytorch",
)
JOB = """\
apiVersion: stopline.dev/v1alpha1
kind: TrainingJob
metadata: {name: sweep}
spec:
  template: {spec: {containers: [{name: trainer}]}}
  objective: {metric: val_loss, mode: min}
  criteria:
  - {name: impatient, patience: {patience: 2}}
  checkpoint: {pvc: {claimName: ckpt}}
"""
HOSTILE = '<script>alert(1)</script>"&'  # printable, so the reader accepts it: the page must escape it
CURVES = f"""\
job,epoch,val_loss
a,1,1.0
a,2,0.8
a,3,0.7
"{HOSTILE.replace('"', '""')}",1,0.9
"{HOSTILE.replace('"', '""')}",2,0.9
"{HOSTILE.replace('"', '""')}",3,0.9
"{HOSTILE.replace('"', '""')}",4,0.5
"""


def figures_of(summary: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The page's figures of one sweep as --json has them."""
    return {
        "jobs": summary["jobs"],
        "stopped": sum(job["stopped"] for job in jobs),
        "epochs-run": summary["epochsRun"],
        "epochs-available": summary["epochsAvailable"],
        "epochs-saved": summary["epochsAvailable"] - summary["epochsRun"],
        "fraction-saved": summary["fractionSaved"],
        "regret": summary["regret"],
        "best-job": (summary["bestOverall"] or {}).get("job"),
        "best-job-without-stopping": (summary["bestOverallIfNoStopping"] or {}).get("job"),
    }


def replay_both(capsys: pytest.CaptureFixture[str], job: Path, curves: Path, page: Path) -> dict[str, Any]:
    assert main(["replay", "--job", str(job), "--curves", str(curves), "--json", "--html", str(page)]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def small_sweep(tmp_path: Path) -> tuple[Path, Path, Path]:
    job, curves = tmp_path / "job.yaml", tmp_path / "curves.csv"
    job.write_text(JOB, encoding="utf-8")
    curves.write_text(CURVES, encoding="utf-8")
    return job, curves, tmp_path / "sweep.html"


def test_the_page_holds_the_figures_and_the_curves_json_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job, curves, page_file = small_sweep(tmp_path)
    result = replay_both(capsys, job, curves, page_file)
    page = Page(page_file.read_text(encoding="utf-8"))
    assert page.figures["sweep-0-figures"] == figures_of(result["summary"], result["jobs"])
    assert page.figures["sweep-0-figures"]["stopped"] == 1
    sweep = page.sections["sweep-0"]
    assert sorted(curve["data-job"] for curve in sweep["curves"]) == sorted(["a", HOSTILE])
    assert [(stop["data-job"], stop["data-epoch"], stop["data-criterion"]) for stop in sweep["stops"]] == [
        (HOSTILE, "3", "impatient")
    ]
    assert sweep["resumed"] == []  # replay has no resume rule (yet): no mark, the table says "-"


def test_every_name_from_the_input_is_escaped_and_the_page_fetches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job, curves, page_file = small_sweep(tmp_path)
    replay_both(capsys, job, curves, page_file)
    text = page_file.read_text(encoding="utf-8")
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;" in text
    assert Page(text).tags <= {
        *("html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "i", "ul", "li"),
        *("section", "dl", "dt", "dd", "svg", "line", "text", "g", "polyline", "circle", "path"),
        *("table", "tr", "th", "td"),
    }
    for fetch in ("src=", "href=", "url(", "@import", "<link", "http:", "https:"):
        assert fetch not in text
    assert "Content-Security-Policy\" content=\"default-src 'none'" in text


def test_a_resumed_job_is_marked_at_the_epoch_it_came_back(tmp_path: Path) -> None:
    job, curves, _ = small_sweep(tmp_path)
    result = replay.replay(job, curves)
    page = Page(replay.render_html(result, "sweep", resumed={(None, HOSTILE): 3}))
    (mark,) = page.sections["sweep-0"]["resumed"]
    assert (mark["data-job"], mark["data-epoch"]) == (HOSTILE, "3")


def test_a_page_that_cannot_be_written_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job, curves, _ = small_sweep(tmp_path)
    page = tmp_path / "no-such-folder" / "sweep.html"
    assert main(["replay", "--job", str(job), "--curves", str(curves), "--html", str(page)]) == 2
    assert capsys.readouterr().err == (
        f"stopline replay: error: {page}: cannot write the page (No such file or directory); check the path\n"
    )


def test_headless_chromium_renders_one_curve_per_job_of_real_sweeps_and_the_figures_of_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    curves = tmp_path / "curves.csv"
    with gzip.open(BENCH_CURVES, "rt", encoding="utf-8") as source, curves.open("w") as sink:
        for number, line in enumerate(source):
            if number == 0 or line.startswith(tuple(f"{task}," for task in TASKS)):
                sink.write(line)
    page_file = tmp_path / "sweeps.html"
    result = replay_both(capsys, RECOMMENDED, curves, page_file)
    dom = dom_in_chromium(page_file, tmp_path / "profile")
    page = Page(dom)
    assert len(page.sections) == len(TASKS) == len(result["tasks"])
    for number, task in enumerate(result["tasks"]):
        assert page.figures[f"sweep-{number}-figures"] == figures_of(task["summary"], task["jobs"])
        sweep = page.sections[f"sweep-{number}"]
        # one curve per job (the best drawn last, on top), one stop mark per stopped job
        assert sorted(curve["data-job"] for curve in sweep["curves"]) == sorted(
            job["job"] for job in task["jobs"]
        )
        stopped = [
            (job["job"], str(job["stopEpoch"]), job["criterion"]) for job in task["jobs"] if job["stopped"]
        ]
        marks = [(mark["data-job"], mark["data-epoch"], mark["data-criterion"]) for mark in sweep["stops"]]
        assert sorted(marks) == sorted(stopped)
    summary = result["summary"]
    assert page.figures["overall"] == {
        "tasks": summary["tasks"],
        "jobs": summary["jobs"],
        "stopped": sum(job["stopped"] for task in result["tasks"] for job in task["jobs"]),
        "epochs-run": summary["epochsRun"],
        "epochs-available": summary["epochsAvailable"],
        "epochs-saved": summary["epochsAvailable"] - summary["epochsRun"],
        "fraction-saved": summary["fractionSaved"],
        "fraction-saved-mean-of-tasks": summary["fractionSavedMeanOfTasks"],
        "regret-max": summary["regretMax"],
        "worst-task": summary["worstTask"],
        "tasks-over-half-percent": summary["tasksOverHalfPercent"],
    }
    assert page.figures["overall"]["stopped"] > 0  # the page shows stops, not only finished curves


def test_a_long_curve_is_thinned_on_the_page_but_keeps_its_ends(tmp_path: Path) -> None:
    job, curves, _ = small_sweep(tmp_path)
    curves.write_text("job,epoch,val_loss\n" + "".join(f"long,{e},{1 / e}\n" for e in range(1, 1001)))
    page = Page(replay.render_html(replay.replay(job, curves), "sweep"))
    (curve,) = page.sections["sweep-0"]["curves"]
    points = curve["points"].split()
    assert len(points) <= page_module.MAX_POINTS + 1
    assert points[0].split(",")[0] == f"{page_module.LEFT:.1f}"  # epoch 1, at the plot's left edge
    assert points[-1].split(",")[0] == f"{page_module.WIDTH - page_module.RIGHT:.1f}"  # epoch 1000
