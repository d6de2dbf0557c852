"""`stopline replay --html`: one self-contained page of a replay, every job's curve and each sweep's figures.

Inline SVG and CSS only: no script, font, image or link, and a Content-Security-Policy that forbids any
fetch, so the page reads the same offline and in a mail attachment. Every name from the input (a task, a
job, a criterion) is escaped: curves files are hostile input. The figures are --json's, each in an element
with a stable id and data- attributes holding the JSON value, so a test (or a script) reads them back.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stopline.fields import Mode
from stopline.replay.curves import ReplayError
from stopline.replay.sweep import SAFE_REGRET, Best, JobResult, Replay, Sweep

MAX_POINTS = 400  # per curve: a longer one is thinned evenly (its first, stop and last epochs kept)
WIDTH, HEIGHT = 760, 320
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 12, 34  # the plot's margins inside the SVG
_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:800px;color:#222;background:#fff}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:2em}
dl.figures{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{color:#555}dd{margin:0}
svg{background:#fafafa;border:1px solid #ddd}
.curve{fill:none;stroke-width:1.2}.run{stroke:#4a78b5}.stopped .run{stroke:#999}
.unrun{stroke:#bbb;stroke-dasharray:3 3}.best .run{stroke:#d9480f;stroke-width:2.5}
.stop{fill:#c92a2a}.resumed{fill:#2b8a3e}.best-point{fill:#d9480f}
.axis{stroke:#888}.tick{font-size:11px;fill:#555}
table{border-collapse:collapse;margin-top:1em}
td,th{padding:.15em .6em;text-align:left;border-bottom:1px solid #eee}
td.n{text-align:right}.legend span{margin-right:1.2em}.swatch{display:inline-block;width:1.4em;height:3px;
vertical-align:middle;margin-right:.3em}
"""


Scale = Callable[[float], float]  # an axis: a data value to an SVG coordinate


@dataclass(frozen=True)
class Figure:
    """One figure of a summary: its data- name, label, JSON value, and its text where not the value's."""

    name: str
    label: str
    value: object
    shown: str | None = None


@dataclass(frozen=True)
class JobView:
    """One job as the page draws it: its replay, and the epoch a resume rule brought it back at (a job
    stopped then resumed shows both marks; a replay without a resume rule has none)."""

    result: JobResult
    resumed_at: int | None = None


def render_html(
    result: Replay, title: str, resumed: Mapping[tuple[str | None, str], int] | None = None
) -> str:
    """The page; `resumed` gives the epoch each (task, job) was resumed at, where one was."""
    resumed = resumed or {}
    sections = [
        _sweep_section(
            number,
            sweep,
            [JobView(job, resumed.get((sweep.task, job.job))) for job in sweep.results],
            result.by_task,
        )
        for number, sweep in enumerate(result.sweeps)
    ]
    notes = "".join(f"<li>{_text(note)}</li>" for note in result.notes)
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_text(title)}</h1><p>objective: {_text(result.metric)} ({result.mode}), "
        f"job: {_text(result.job_file)}</p>"
        + (_overall(result) if result.by_task else "")
        + _LEGEND
        + "".join(sections)
        + (f"<h2>notes</h2><ul>{notes}</ul>" if notes else "")
        + "</body></html>\n"
    )


def write_html(path: Path, page: str) -> None:
    """Write the page; a path that cannot be written is a ReplayError (one line, exit 2), not a traceback."""
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ReplayError(f"{path}: cannot write the page ({error.strerror}); check the path") from None


_LEGEND = (
    '<p class="legend"><span><i class="swatch" style="background:#4a78b5"></i>ran to its end</span>'
    '<span><i class="swatch" style="background:#999"></i>ran until stopped</span>'
    '<span><i class="swatch" style="background:#bbb"></i>the epochs a stop saved</span>'
    '<span><i class="swatch" style="background:#d9480f"></i>the best job kept</span>'
    '<span style="color:#c92a2a">&#9679; stopped</span><span style="color:#2b8a3e">&#9650; resumed</span></p>'
)


def _overall(result: Replay) -> str:
    """Over all tasks, the summary --json prints (as docs/policy.md's front counts it)."""
    summary = result.as_json()["summary"]
    assert isinstance(summary, dict)
    stopped = sum(1 for sweep in result.sweeps for job in sweep.results if job.decision is not None)
    figures = [
        Figure("tasks", "tasks", summary["tasks"]),
        Figure("jobs", "jobs", summary["jobs"]),
        Figure("stopped", "stopped jobs", stopped),
        Figure("epochs-run", "epochs run", summary["epochsRun"]),
        Figure("epochs-available", "epochs without stopping", summary["epochsAvailable"]),
        Figure("epochs-saved", "epochs saved", _saved(summary)),
        Figure("fraction-saved", "saved", summary["fractionSaved"]),
        Figure("fraction-saved-mean-of-tasks", "saved (mean of tasks)", summary["fractionSavedMeanOfTasks"]),
        Figure("regret-max", "worst task's regret", summary["regretMax"]),
        Figure("worst-task", "worst task", summary["worstTask"]),
        Figure(
            "tasks-over-half-percent", f"tasks over {SAFE_REGRET:.1%} regret", summary["tasksOverHalfPercent"]
        ),
    ]
    return "<h2>all tasks</h2>" + _figures("overall", figures)


def _saved(summary: Mapping[str, object]) -> int:
    run, available = summary["epochsRun"], summary["epochsAvailable"]
    assert isinstance(run, int) and isinstance(available, int)
    return available - run


def _figures(element_id: str, figures: Sequence[Figure]) -> str:
    """A <dl> whose data- attributes hold the JSON values and whose text says them for a person."""
    data = "".join(f' data-{f.name}="{_text(json.dumps(f.value))}"' for f in figures)
    rows = "".join(
        f'<dt>{_text(f.label)}</dt><dd data-figure="{f.name}">{_text(f.shown or _shown(f))}</dd>'
        for f in figures
    )
    return f'<dl class="figures" id="{element_id}"{data}>{rows}</dl>'


def _shown(figure: Figure) -> str:
    if figure.value is None:
        return "-"
    if isinstance(figure.value, float) and figure.name.startswith(("fraction", "regret")):
        return f"{figure.value:.2%}"
    return str(figure.value)


def _sweep_section(number: int, sweep: Sweep, jobs: Sequence[JobView], by_task: bool) -> str:
    summary = sweep.as_json()["summary"]
    assert isinstance(summary, dict)
    stopped = sum(1 for job in sweep.results if job.decision is not None)
    kept = sweep.best_overall(stopping=True)
    unstopped = sweep.best_overall(stopping=False)
    figures = [
        Figure("jobs", "jobs", summary["jobs"]),
        Figure("stopped", "stopped jobs", stopped),
        Figure("epochs-run", "epochs run", summary["epochsRun"]),
        Figure("epochs-available", "epochs without stopping", summary["epochsAvailable"]),
        Figure("epochs-saved", "epochs saved", _saved(summary)),
        Figure("fraction-saved", "saved", summary["fractionSaved"]),
        Figure("regret", "regret", summary["regret"]),
        Figure("best-job", "best job kept", kept[0] if kept else None, _best_text(kept)),
        Figure("best-job-without-stopping", "best without stopping", unstopped[0] if unstopped else None,
               _best_text(unstopped)),
    ]  # fmt: skip
    heading = f"task {sweep.task} ({len(sweep.results)} jobs)" if by_task else f"{len(sweep.results)} jobs"
    verdict = sweep.verdict()
    task = f' data-task="{_text(sweep.task)}"' if sweep.task is not None else ""
    return (
        f'<section class="sweep" id="sweep-{number}"{task}><h2>{_text(heading)}</h2>'
        + _figures(f"sweep-{number}-figures", figures)
        + (f"<p>{_text(verdict)}</p>" if verdict else "")
        + _chart(sweep, jobs, kept[0] if kept else None)
        + _table(sweep, jobs)
        + "</section>"
    )


def _best_text(found: tuple[str, Best] | None) -> str:
    return f"{found[0]}: {found[1].value:.6g} (epoch {found[1].epoch})" if found else "-"


def _chart(sweep: Sweep, jobs: Sequence[JobView], best_job: str | None) -> str:
    """One SVG: each job's curve (the epochs it ran solid, those its stop saved dashed), a dot where it was
    stopped, a triangle where it was resumed, the best job's curve on top."""
    values = [value for job in jobs for _, value in job.result.values if math.isfinite(value)]
    last_epoch = max((job.result.epochs_available for job in jobs), default=1)
    low, high = _range(values, sweep.mode)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(epoch: float) -> float:
        return LEFT + plot_w * ((epoch - 1) / (last_epoch - 1) if last_epoch > 1 else 0.5)

    def y(value: float) -> float:
        clamped = min(max(value, low), high)
        return TOP + plot_h * (1 - (clamped - low) / (high - low))

    ordered = sorted(jobs, key=lambda job: job.result.job == best_job)  # the best drawn last, on top
    curves = "".join(_job_marks(job, job.result.job == best_job, x, y) for job in ordered)
    axes = (
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"/>'
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>'
        f'<text class="tick" x="{LEFT}" y="{HEIGHT - 18}">1</text>'
        f'<text class="tick" x="{LEFT + plot_w}" y="{HEIGHT - 18}" text-anchor="end">{last_epoch}</text>'
        f'<text class="tick" x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">epoch</text>'
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end">{high:.4g}</text>'
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">{low:.4g}</text>'
        f'<text class="tick" x="12" y="{TOP + plot_h / 2}" transform="rotate(-90 12 {TOP + plot_h / 2})" '
        f'text-anchor="middle">{_text(sweep.metric)}</text>'
    )
    label = f"{sweep.metric} by epoch, one curve per job"
    return (
        f'<svg class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{_text(label)}">{axes}{curves}</svg>'
    )


def _range(values: Sequence[float], mode: Mode) -> tuple[float, float]:
    """The y range: every value on the good side (the best is never cut), and on the bad side up to the
    90th percentile, so early epochs and diverged jobs do not flatten the finish (they run along the edge)."""
    if not values:
        return 0.0, 1.0
    ordered = sorted(values)
    if mode == "min":
        low, high = ordered[0], ordered[math.ceil(0.9 * (len(ordered) - 1))]
    else:
        low, high = ordered[int(0.1 * (len(ordered) - 1))], ordered[-1]
    if high == low:
        return low - 1, high + 1
    pad = (high - low) * 0.03
    return low - pad, high + pad


def _job_marks(job: JobView, best: bool, x: Scale, y: Scale) -> str:
    result = job.result
    stopped = result.decision is not None
    points = [(epoch, value) for epoch, value in result.values if math.isfinite(value)]
    keep = {result.epochs_run, *(epoch for epoch in (job.resumed_at,) if epoch is not None)}
    run = _thin([p for p in points if p[0] <= result.epochs_run], keep)
    unrun = _thin([p for p in points if p[0] >= result.epochs_run], keep) if stopped else []
    classes = "job" + (" stopped" if stopped else "") + (" best" if best else "")
    name = _text(result.job)
    why = f", stopped at epoch {result.epochs_run} by {result.decision.criterion}" if result.decision else ""
    marks = f"<title>{name}{_text(why)}</title>"
    if len(unrun) > 1:
        marks += f'<polyline class="unrun curve-rest" points="{_points(unrun, x, y)}" fill="none"/>'
    marks += f'<polyline class="curve run" data-job="{name}" points="{_points(run, x, y)}"/>'
    # a mark at an epoch with no finite value (a diverged job) sits on the chart's top edge
    value_at = dict(points)
    if result.decision is not None:
        cx, cy = x(result.epochs_run), y(value_at.get(result.epochs_run, math.inf))
        marks += (
            f'<circle class="stop" r="3.5" cx="{cx:.1f}" cy="{cy:.1f}" data-job="{name}" '
            f'data-epoch="{result.epochs_run}" data-criterion="{_text(result.decision.criterion)}"/>'
        )
    if job.resumed_at is not None:
        cx, cy = x(job.resumed_at), y(value_at.get(job.resumed_at, math.inf))
        marks += (
            f'<path class="resumed" d="M{cx:.1f},{cy - 5:.1f}L{cx + 4.5:.1f},{cy + 3:.1f}L{cx - 4.5:.1f},'
            f'{cy + 3:.1f}Z" data-job="{name}" data-epoch="{job.resumed_at}"/>'
        )
    if best and result.best is not None:
        marks += (
            f'<circle class="best-point" r="4.5" cx="{x(result.best.epoch):.1f}" '
            f'cy="{y(result.best.value):.1f}" data-job="{name}" data-epoch="{result.best.epoch}"/>'
        )
    return f'<g class="{classes}">{marks}</g>'


def _thin(points: list[tuple[int, float]], keep: set[int]) -> list[tuple[int, float]]:
    """At most about MAX_POINTS points, evenly spaced, and always the first, last and `keep` epochs."""
    if len(points) <= MAX_POINTS:
        return points
    step = math.ceil(len(points) / MAX_POINTS)
    last = len(points) - 1
    return [p for i, p in enumerate(points) if i % step == 0 or i == last or p[0] in keep]


def _points(points: Sequence[tuple[int, float]], x: Scale, y: Scale) -> str:
    return " ".join(f"{x(epoch):.1f},{y(value):.1f}" for epoch, value in points)


def _table(sweep: Sweep, jobs: Sequence[JobView]) -> str:
    header = (
        "<tr><th>job</th><th>stopped at</th><th>resumed at</th><th>epochs</th><th>criterion</th>"
        f"<th>best {_text(sweep.metric)}</th></tr>"
    )
    rows = "".join(
        f'<tr data-job="{_text(job.result.job)}"><td>{_text(job.result.job)}</td>'
        f'<td class="n">{job.result.epochs_run if job.result.decision else "-"}</td>'
        f'<td class="n">{job.resumed_at if job.resumed_at is not None else "-"}</td>'
        f'<td class="n">{job.result.epochs_run}/{job.result.epochs_available}</td>'
        f"<td>{_criterion(job.result)}</td>"
        f"<td>{_best(job.result)}</td></tr>"
        for job in jobs
    )
    return f'<table class="jobs">{header}{rows}</table>'


def _criterion(result: JobResult) -> str:
    decision = result.decision
    if decision is None:
        return "-"
    return f'<span title="{_text(decision.message)}">{_text(decision.criterion)}</span>'


def _best(result: JobResult) -> str:
    return f"{result.best.value:.6g} (epoch {result.best.epoch})" if result.best else "-"


def _text(text: str) -> str:
    """Text and attribute values: &, <, >, " and ' escaped, so no name from the input can open markup."""
    return html.escape(text, quote=True)
