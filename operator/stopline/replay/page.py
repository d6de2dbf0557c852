"""`stopline replay --html` and `stopline study --html`: one self-contained page of a sweep, every job's curve
and each sweep's figures.

A replay (`page_of_replay`) and a live study (stopline.replay.live) fill the same model, a PageView of
SweepViews of JobViews, which `render_page` draws. Inline SVG and CSS only: no script, font, image or link,
and a Content-Security-Policy that forbids any fetch, so the page reads the same offline and in a mail
attachment. Every name from the input (a task, a job, a criterion) is escaped: curves files and a
TrainingJob's status are hostile input. The figures are --json's, each in an element with a stable id and
data- attributes holding the JSON value, so a test (or a script) reads them back.
"""

from __future__ import annotations

import html
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stopline.fields import Mode
from stopline.replay.curves import ReplayError
from stopline.replay.sweep import SAFE_REGRET, Best, JobResult, Replay, Sweep
from stopline.vocabulary import CANCELLED, FAILED

FAILED_PHASES = frozenset({FAILED, CANCELLED})  # a live job that ended without running to its end or a stop

MAX_POINTS = 400  # per curve: a longer one is thinned evenly (its first, stop and last epochs kept)
WIDTH, HEIGHT = 760, 320
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 12, 34  # the plot's margins inside the SVG
_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:800px;color:#222;background:#fff}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:2em}
dl.figures{display:grid;grid-template-columns:max-content auto;gap:.1em 1em}dt{color:#555}dd{margin:0}
svg{background:#fafafa;border:1px solid #ddd}
.curve{fill:none;stroke-width:1.2}.run{stroke:#4a78b5}.stopped .run{stroke:#999}.running .run{stroke:#7048e8}
.failed .run{stroke:#c92a2a;stroke-dasharray:1 2}
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
class Stop:
    """Where a job was stopped (the epoch its mark sits at) and by what: the criterion's name, its words."""

    epoch: int
    criterion: str
    message: str


@dataclass(frozen=True)
class JobView:
    """One job as the page draws it. `values` is the objective by epoch; those past `epochs_run` are the
    epochs a stop saved (a replay knows them, drawn dashed). A resumed job shows both marks; `phase` and
    `weights_epoch` (status.checkpoint's) are a live TrainingJob's, each a column when any job has one."""

    job: str
    values: tuple[tuple[int, float], ...]
    epochs_run: int
    epochs_available: int
    best: Best | None
    stop: Stop | None = None
    resumed_at: int | None = None
    running: bool = False
    phase: str | None = None
    weights_epoch: int | None = None


@dataclass(frozen=True)
class SweepView:
    """One sweep's section: its heading, figures (in data- attributes), verdict, chart and table."""

    heading: str
    task: str | None
    metric: str
    mode: Mode
    figures: tuple[Figure, ...]
    verdict: str | None
    jobs: tuple[JobView, ...]
    best_job: str | None


@dataclass(frozen=True)
class PageView:
    """The page: a title, a line saying what was judged, the figures over all sweeps (none for one), the
    sweeps and the notes."""

    title: str
    subject: str
    overall: tuple[Figure, ...]
    sweeps: tuple[SweepView, ...]
    notes: tuple[str, ...]


def render_html(
    result: Replay, title: str, resumed: Mapping[tuple[str | None, str], int] | None = None
) -> str:
    """A replay's page; `resumed` gives the epoch each (task, job) was resumed at, where one was (else the
    last resume the replay simulated)."""
    return render_page(page_of_replay(result, title, resumed or {}))


def page_of_replay(result: Replay, title: str, resumed: Mapping[tuple[str | None, str], int]) -> PageView:
    sweeps = tuple(
        _sweep_view(sweep, [_job_view(job, resumed.get((sweep.task, job.job), _resumed_at(job)))
                            for job in sweep.results], result.by_task)
        for sweep in result.sweeps
    )  # fmt: skip
    return PageView(
        title,
        f"objective: {result.metric} ({result.mode}), job: {result.job_file}",
        _overall(result) if result.by_task else (),
        sweeps,
        result.notes,
    )


def render_page(view: PageView) -> str:
    """The page of a PageView: every text from the input escaped, nothing fetched."""
    sections = "".join(_sweep_section(number, sweep) for number, sweep in enumerate(view.sweeps))
    running = any(job.running for sweep in view.sweeps for job in sweep.jobs)
    failed = any(not job.stop and job.phase in FAILED_PHASES for sweep in view.sweeps for job in sweep.jobs)
    notes = "".join(f"<li>{_text(note)}</li>" for note in view.notes)
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{_text(view.title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_text(view.title)}</h1><p>{_text(view.subject)}</p>"
        + ("<h2>all tasks</h2>" + _figures("overall", view.overall) if view.overall else "")
        + _legend(running, failed)
        + sections
        + (f"<h2>notes</h2><ul>{notes}</ul>" if notes else "")
        + "</body></html>\n"
    )


def write_html(path: Path, page: str) -> None:
    """Write the page; a path that cannot be written is a ReplayError (one line, exit 2), not a traceback."""
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ReplayError(f"{path}: cannot write the page ({error.strerror}); check the path") from None


def _legend(running: bool, failed: bool) -> str:
    return (
        '<p class="legend"><span><i class="swatch" style="background:#4a78b5"></i>ran to its end</span>'
        '<span><i class="swatch" style="background:#999"></i>ran until stopped</span>'
        '<span><i class="swatch" style="background:#bbb"></i>the epochs a stop saved</span>'
        '<span><i class="swatch" style="background:#d9480f"></i>the best job kept</span>'
        + ('<span><i class="swatch" style="background:#7048e8"></i>running now</span>' if running else "")
        + (
            '<span><i class="swatch" style="background:#c92a2a"></i>failed or cancelled</span>'
            if failed
            else ""
        )
        + '<span style="color:#c92a2a">&#9679; stopped</span>'
        + '<span style="color:#2b8a3e">&#9650; resumed</span></p>'
    )


def _overall(result: Replay) -> tuple[Figure, ...]:
    """Over all tasks, the summary --json prints (as docs/policy.md's front counts it)."""
    summary = result.as_json()["summary"]
    assert isinstance(summary, dict)
    stopped = sum(1 for sweep in result.sweeps for job in sweep.results if job.decision is not None)
    return (
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
        *_resume_figures(summary),
    )


def _resume_figures(summary: Mapping[str, object]) -> tuple[Figure, ...]:
    """The resumes' figures --json has where a resume rule was simulated (none otherwise)."""
    if "resumedJobs" not in summary:
        return ()
    return (
        Figure("resumed-jobs", "resumed jobs", summary["resumedJobs"]),
        Figure("resumes", "resumes", summary["resumes"]),
        Figure("resumed-epochs", "epochs run after a resume", summary["resumedEpochs"]),
    )


def _resumed_at(result: JobResult) -> int | None:
    """The epoch the job was last resumed from, where the replay resumed it."""
    return result.resumes[-1].from_epoch if result.resumes else None


def _saved(summary: Mapping[str, object]) -> int:
    run, available = summary["epochsRun"], summary["epochsAvailable"]
    assert isinstance(run, int) and isinstance(available, int)
    return available - run


def _job_view(result: JobResult, resumed_at: int | None) -> JobView:
    decision = result.decision
    stop = Stop(result.epochs_run, decision.criterion, decision.message) if decision else None
    return JobView(
        result.job, result.values, result.epochs_run, result.epochs_available, result.best, stop, resumed_at
    )


def _sweep_view(sweep: Sweep, jobs: Sequence[JobView], by_task: bool) -> SweepView:
    summary = sweep.as_json()["summary"]
    assert isinstance(summary, dict)
    stopped = sum(1 for job in sweep.results if job.decision is not None)
    kept = sweep.best_overall(stopping=True)
    unstopped = sweep.best_overall(stopping=False)
    figures = (
        Figure("jobs", "jobs", summary["jobs"]),
        Figure("stopped", "stopped jobs", stopped),
        Figure("epochs-run", "epochs run", summary["epochsRun"]),
        Figure("epochs-available", "epochs without stopping", summary["epochsAvailable"]),
        Figure("epochs-saved", "epochs saved", _saved(summary)),
        Figure("fraction-saved", "saved", summary["fractionSaved"]),
        Figure("regret", "regret", summary["regret"]),
        Figure("best-job", "best job kept", kept[0] if kept else None, best_text(kept)),
        Figure("best-job-without-stopping", "best without stopping", unstopped[0] if unstopped else None,
               best_text(unstopped)),
        *_resume_figures(summary),
    )  # fmt: skip
    heading = f"task {sweep.task} ({len(sweep.results)} jobs)" if by_task else f"{len(sweep.results)} jobs"
    return SweepView(
        heading, sweep.task, sweep.metric, sweep.mode, figures, sweep.verdict(), tuple(jobs),
        kept[0] if kept else None,
    )  # fmt: skip


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


def _sweep_section(number: int, sweep: SweepView) -> str:
    task = f' data-task="{_text(sweep.task)}"' if sweep.task is not None else ""
    return (
        f'<section class="sweep" id="sweep-{number}"{task}><h2>{_text(sweep.heading)}</h2>'
        + _figures(f"sweep-{number}-figures", sweep.figures)
        + (f"<p>{_text(sweep.verdict)}</p>" if sweep.verdict else "")
        + _chart(sweep)
        + _table(sweep)
        + "</section>"
    )


def best_text(found: tuple[str, Best] | None) -> str:
    """The best job and its value, as a figure's text."""
    return f"{found[0]}: {found[1].value:.6g} (epoch {found[1].epoch})" if found else "-"


def _chart(sweep: SweepView) -> str:
    """One SVG: each job's curve (the epochs it ran solid, those its stop saved dashed), a dot where it was
    stopped, a triangle where it was resumed, the best job's curve on top."""
    jobs = sweep.jobs
    values = [value for job in jobs for _, value in job.values if math.isfinite(value)]
    last_epoch = max((job.epochs_available for job in jobs), default=1)
    low, high = _range(values, sweep.mode)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(epoch: float) -> float:
        return LEFT + plot_w * ((epoch - 1) / (last_epoch - 1) if last_epoch > 1 else 0.5)

    def y(value: float) -> float:
        clamped = min(max(value, low), high)
        return TOP + plot_h * (1 - (clamped / 2 - low / 2) / (high / 2 - low / 2))

    ordered = sorted(jobs, key=lambda job: job.job == sweep.best_job)  # the best drawn last, on top
    curves = "".join(_job_marks(job, job.job == sweep.best_job, x, y) for job in ordered)
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
    # in halves: the span of a curve at +-1e308 (any finite value is remote input) does not overflow
    pad = max(1.0, abs(low) / 2**20) if high == low else (high / 2 - low / 2) * 0.06
    return max(low - pad, -sys.float_info.max), min(high + pad, sys.float_info.max)


def _job_marks(job: JobView, best: bool, x: Scale, y: Scale) -> str:
    stop = job.stop
    points = [(epoch, value) for epoch, value in job.values if math.isfinite(value)]
    keep = {job.epochs_run, *(epoch for epoch in (job.resumed_at, stop and stop.epoch) if epoch)}
    run = _thin([p for p in points if p[0] <= job.epochs_run], keep)
    unrun = _thin([p for p in points if p[0] >= job.epochs_run], keep) if stop else []
    failed = not stop and job.phase in FAILED_PHASES
    classes = (
        "job"
        + (" stopped" if stop else "")
        + (" running" if job.running else "")
        + (" failed" if failed else "")
        + (" best" if best else "")
    )
    name = _text(job.job)
    why = (
        f", stopped at epoch {stop.epoch} by {stop.criterion}"
        if stop
        else ", running"
        if job.running
        else f", {_text(job.phase or '')}"
        if failed
        else ""
    )
    marks = f"<title>{name}{_text(why)}</title>"
    if len(unrun) > 1:
        marks += f'<polyline class="unrun curve-rest" points="{_points(unrun, x, y)}" fill="none"/>'
    marks += f'<polyline class="curve run" data-job="{name}" points="{_points(run, x, y)}"/>'
    # a mark at an epoch with no finite value (a diverged job) sits on the chart's top edge
    value_at = dict(points)
    if stop is not None:
        cx, cy = x(max(stop.epoch, 1)), y(value_at.get(stop.epoch, math.inf))  # 0: before its first epoch
        marks += (
            f'<circle class="stop" r="3.5" cx="{cx:.1f}" cy="{cy:.1f}" data-job="{name}" '
            f'data-epoch="{stop.epoch}" data-criterion="{_text(stop.criterion)}"/>'
        )
    if job.resumed_at is not None:
        cx, cy = x(job.resumed_at), y(value_at.get(job.resumed_at, math.inf))
        marks += (
            f'<path class="resumed" d="M{cx:.1f},{cy - 5:.1f}L{cx + 4.5:.1f},{cy + 3:.1f}L{cx - 4.5:.1f},'
            f'{cy + 3:.1f}Z" data-job="{name}" data-epoch="{job.resumed_at}"/>'
        )
    if best and job.best is not None:
        marks += (
            f'<circle class="best-point" r="4.5" cx="{x(job.best.epoch):.1f}" '
            f'cy="{y(job.best.value):.1f}" data-job="{name}" data-epoch="{job.best.epoch}"/>'
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


def _table(sweep: SweepView) -> str:
    """One row per job; a live study's also say each job's phase and the epoch of the weights it kept."""
    live = any(job.phase is not None for job in sweep.jobs)
    header = (
        "<tr><th>job</th>"
        + ("<th>phase</th>" if live else "")
        + "<th>stopped at</th><th>resumed at</th><th>epochs</th><th>criterion</th>"
        + ("<th>weights at</th>" if live else "")
        + f"<th>best {_text(sweep.metric)}</th></tr>"
    )
    rows = "".join(
        f'<tr data-job="{_text(job.job)}"><td>{_text(job.job)}</td>'
        + (f"<td>{_text(job.phase or '-')}</td>" if live else "")
        + f'<td class="n">{job.stop.epoch if job.stop else "-"}</td>'
        f'<td class="n">{_number(job.resumed_at)}</td>'
        f'<td class="n">{job.epochs_run}/{job.epochs_available}</td>'
        f"<td>{_criterion(job.stop)}</td>"
        + (f'<td class="n">{_number(job.weights_epoch)}</td>' if live else "")
        + f"<td>{_best(job.best)}</td></tr>"
        for job in sweep.jobs
    )
    return f'<table class="jobs">{header}{rows}</table>'


def _number(epoch: int | None) -> str:
    return "-" if epoch is None else str(epoch)


def _criterion(stop: Stop | None) -> str:
    if stop is None:
        return "-"
    return f'<span title="{_text(stop.message)}">{_text(stop.criterion)}</span>'


def _best(best: Best | None) -> str:
    return f"{best.value:.6g} (epoch {best.epoch})" if best else "-"


def _text(text: str) -> str:
    """Text and attribute values: &, <, >, " and ' escaped, so no name from the input can open markup."""
    return html.escape(text, quote=True)
