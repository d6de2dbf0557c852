"""The table `stopline replay` prints: one row per job, the stop messages, each sweep's summary."""

from __future__ import annotations

from collections.abc import Sequence

from stopline.replay.sweep import SAFE_REGRET, Replay, Sweep


def render_table(result: Replay) -> str:
    """A table a person reads: per sweep one row per job, the stop messages and the sweep's summary;
    with tasks, the summary over them; then what replay cannot do."""
    lines: list[str] = []
    for number, sweep in enumerate(result.sweeps):
        lines += [""] if number else []
        lines += [f"== task {sweep.task} ({len(sweep.results)} jobs)"] if result.by_task else []
        lines += _sweep_table(sweep)
    worst = result.worst_task()
    if result.by_task:
        lines.append("")
        lines.append(
            f"{_count(len(result.sweeps), 'task')}: {result.mean_saved():.1%} of epochs saved (mean of tasks)"
            + (
                f", worst task's regret {worst[1]:.2%} ({worst[0]}), {result.tasks_over(SAFE_REGRET)} over "
                f"{SAFE_REGRET:.1%}"
                if worst
                else ""
            )
            + (f", {_resumed(result.resume_json())}" if result.resumes_simulated else "")
        )
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def _sweep_table(sweep: Sweep) -> list[str]:
    """With a resume rule, a `resumed` column (the epochs each job was resumed from), the rule's words for
    each resume, and the resumes' figures after the sweep's."""
    resumed = sweep.resumes_simulated
    header = (
        ("job", "stop", "epochs", "reason", "criterion")
        + (("resumed",) if resumed else ())
        + (f"best {sweep.metric}",)
    )
    rows = [
        (
            job.job,
            str(job.epochs_run) if job.decision else "-",
            f"{job.epochs_run}/{job.epochs_available}",
            job.decision.type if job.decision else "-",
            job.decision.criterion if job.decision else "-",
        )
        + (
            (",".join(str(r.from_epoch) for r in job.resumes) or "-",)
            if resumed and job.resumes is not None
            else ()
        )
        + ((f"{job.best.value:.6g} (epoch {job.best.epoch})" if job.best else "-"),)
        for job in sweep.results
    ]
    lines = aligned([header, *rows])
    stops = [f"  {job.job}: {job.decision.message}" for job in sweep.results if job.decision]
    resumes = [
        f"  {job.job}: resumed from epoch {resume.from_epoch} to {resume.to_epoch}: {resume.message}"
        for job in sweep.results
        for resume in job.resumes or ()
    ]
    if stops:
        lines += ["", "why:", *stops]
    if resumes:
        lines += ["", "resumed:", *resumes]
    lines += [
        "",
        f"{len(sweep.results)} jobs, {sweep.epochs_run} of {sweep.epochs_available} epochs run, "
        f"{sweep.fraction_saved:.1%} saved" + (f", {_resumed(sweep.resume_json())}" if resumed else ""),
    ]
    for label, stopping in (("best with stopping", True), ("best without stopping", False)):
        found = sweep.best_overall(stopping=stopping)
        if found:
            lines.append(f"{label}: {sweep.metric} {found[1].value:.6g} ({found[0]}, epoch {found[1].epoch})")
    verdict = sweep.verdict()
    return lines + ([verdict] if verdict else [])


def _resumed(figures: dict[str, object]) -> str:
    """The resumes' figures in words: the jobs resumed, the resumes, the epochs they ran (counted as run)."""
    jobs, resumes, epochs = (figures[key] for key in ("resumedJobs", "resumes", "resumedEpochs"))
    assert isinstance(jobs, int) and isinstance(resumes, int)
    return f"{_count(jobs, 'job')} resumed ({_count(resumes, 'resume')}, {epochs} epochs run after a resume)"


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines, each column as wide as its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
