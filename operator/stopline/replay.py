"""`stopline replay`: run a TrainingJob's criteria over recorded learning curves, as if they were a sweep.

The jobs of the CSV form a sequential sweep in order of first appearance: job k's cohort is jobs 1..k-1,
each with the epochs it actually ran. Each epoch is fed to the same engine the operator calls, one call
per epoch, with the cumulative `seconds` column (if any) as the clock.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stopline import api
from stopline.criteria import CohortCurve, Decision, Observation, evaluate
from stopline.criteria.state import is_better

SECONDS = "seconds"
NOT_REPLAYED = (
    "stale, gpuIdle and promql criteria cannot fire in replay (they watch a live trainer, GPUs, Prometheus)"
)


class ReplayError(Exception):
    """Bad input; the message is one line naming the file, the line or field, and the fix."""


@dataclass
class Curve:
    """One job of the file: metric values by epoch, and the seconds each epoch took (when recorded)."""

    job: str
    rows: dict[int, dict[str, float]] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Best:
    metric: str
    value: float
    epoch: int


@dataclass(frozen=True)
class JobResult:
    job: str
    epochs_run: int
    epochs_available: int
    decision: Decision | None
    best: Best | None
    best_if_no_stopping: Best | None

    def as_json(self) -> dict[str, object]:
        decision = self.decision
        return {
            "job": self.job,
            "stopped": decision is not None,
            "stopEpoch": self.epochs_run if decision is not None else None,
            "epochsRun": self.epochs_run,
            "epochsAvailable": self.epochs_available,
            "reason": decision.type if decision else None,
            "criterion": decision.criterion if decision else None,
            "message": decision.message if decision else None,
            "best": _best_json(self.best),
        }


@dataclass(frozen=True)
class Replay:
    job_file: str
    metric: str
    mode: api.Mode
    results: tuple[JobResult, ...]
    notes: tuple[str, ...]

    @property
    def epochs_run(self) -> int:
        return sum(result.epochs_run for result in self.results)

    @property
    def epochs_available(self) -> int:
        return sum(result.epochs_available for result in self.results)

    @property
    def fraction_saved(self) -> float:
        return 1 - self.epochs_run / self.epochs_available if self.epochs_available else 0.0

    def best_overall(self, *, stopping: bool) -> tuple[str, Best] | None:
        candidates = [
            (result.job, best)
            for result in self.results
            if (best := result.best if stopping else result.best_if_no_stopping) is not None
        ]
        winner: tuple[str, Best] | None = None
        for job, best in candidates:
            if winner is None or is_better(best.value, winner[1].value, self.mode):
                winner = (job, best)
        return winner

    def as_json(self) -> dict[str, object]:
        def overall(stopping: bool) -> dict[str, object] | None:
            found = self.best_overall(stopping=stopping)
            return {"job": found[0]} | (_best_json(found[1]) or {}) if found else None

        return {
            "jobs": [result.as_json() for result in self.results],
            "summary": {
                "jobs": len(self.results),
                "epochsRun": self.epochs_run,
                "epochsAvailable": self.epochs_available,
                "fractionSaved": round(self.fraction_saved, 6),
                "bestOverall": overall(True),
                "bestOverallIfNoStopping": overall(False),
            },
        }


def _best_json(best: Best | None) -> dict[str, object] | None:
    return {"metric": best.metric, "value": best.value, "epoch": best.epoch} if best else None


def load_job(path: Path) -> api.TrainingJobSpec:
    """The spec of a TrainingJob manifest, validated by stopline.api."""
    text = _read_text(path)
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise ReplayError(
            f"{path}:{where} not valid YAML ({getattr(error, 'problem', error)}); fix the syntax"
        ) from None
    jobs = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "TrainingJob"]
    if len(jobs) != 1:
        raise ReplayError(f"{path}: expected one TrainingJob manifest (kind: TrainingJob), found {len(jobs)}")
    try:
        return api.parse_spec(jobs[0].get("spec"))
    except api.SpecError as error:
        raise ReplayError(f"{path}: {error}") from None


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such file; check the path") from None
    except OSError as error:
        raise ReplayError(
            f"{path}: cannot read it ({error.strerror}); check the path and permissions"
        ) from None
    try:
        data = gzip.decompress(raw) if path.name.endswith(".gz") else raw
        return data.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ReplayError(
            f"{path}: not a UTF-8 text file{' (gzip)' if path.name.endswith('.gz') else ''}: {error}"
        ) from None


def load_curves(path: Path, needed: str) -> tuple[list[Curve], list[str]]:
    """Curves by job in order of first appearance, and the metric columns; `needed` must be a column."""
    reader = csv.reader(io.StringIO(_read_text(path)))
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise ReplayError(f"{path}: empty file; expected a header line job,epoch,<metric>,... and rows")
    columns = [cell.strip() for cell in header]
    for column in ("job", "epoch", needed):
        if column not in columns:
            raise ReplayError(
                f"{path}: line 1: missing column {column!r}; the header must be job,epoch,<metric>,... "
                f"with the objective metric {needed!r} among the metrics (found: {','.join(columns)})"
            )
    metrics = [column for column in columns if column not in ("job", "epoch", SECONDS)]
    curves: dict[str, Curve] = {}
    first_line: dict[tuple[str, int], int] = {}
    for line, row in _numbered(reader):
        if len(row) != len(columns):
            raise ReplayError(
                f"{path}: line {line}: {len(row)} cells, the header has {len(columns)}; fix the row"
            )
        cells = dict(zip(columns, (cell.strip() for cell in row), strict=True))
        epoch = _epoch(path, line, cells["epoch"])
        curve = curves.setdefault(cells["job"], Curve(cells["job"]))
        if (cells["job"], epoch) in first_line:
            raise ReplayError(
                f"{path}: line {line}: job {cells['job']!r} epoch {epoch} already appeared on line "
                f"{first_line[cells['job'], epoch]}; keep one row per job and epoch"
            )
        first_line[cells["job"], epoch] = line
        curve.rows[epoch] = {
            metric: _number(path, line, metric, cells[metric]) for metric in metrics if cells[metric] != ""
        }
        if cells.get(SECONDS, "") != "":
            curve.seconds[epoch] = _number(path, line, SECONDS, cells[SECONDS])
    if not curves:
        raise ReplayError(f"{path}: no rows after the header; add one row per job and epoch")
    return list(curves.values()), metrics


def _numbered(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str]]]:
    for line, row in enumerate(reader, start=2):
        if row:
            yield line, row


def _epoch(path: Path, line: int, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ReplayError(f"{path}: line {line}: column 'epoch' is {text!r}; epochs are integers from 1")
    return int(text)


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ReplayError(
            f"{path}: line {line}: column {column!r} is {text!r}, not a number; "
            "write a number, nan, or leave the cell empty"
        ) from None


def _best(curve: Curve, metric: str, mode: api.Mode, last_epoch: int) -> Best | None:
    best: Best | None = None
    for epoch in sorted(curve.rows):
        value = curve.rows[epoch].get(metric)
        usable = epoch <= last_epoch and value is not None and math.isfinite(value)
        if usable and value is not None and (best is None or is_better(value, best.value, mode)):
            best = Best(metric, value, epoch)
    return best


def replay_job(
    spec: api.TrainingJobSpec, curve: Curve, cohort: tuple[CohortCurve, ...], available: int
) -> tuple[int, Decision | None]:
    """Feed the job's epochs one call at a time; a decision on epoch e's values means the job ran e epochs."""
    states: Mapping[str, Mapping[str, object]] = {}
    clock = 0.0
    for epoch in sorted(e for e in curve.rows if e <= available):
        clock += curve.seconds.get(epoch, 0.0)
        observation = Observation(
            now=clock, samples={epoch: curve.rows[epoch]}, started_at=0.0, gpus=spec.gpus, cohort=cohort
        )
        evaluation = evaluate(spec, states, observation)
        if evaluation.decision is not None:
            return epoch, evaluation.decision
        states = evaluation.states
    return available, None


def replay(job_file: Path, curves_file: Path) -> Replay:
    spec = load_job(job_file)
    objective = spec.objective
    curves, metrics = load_curves(curves_file, objective.metric)
    notes = [NOT_REPLAYED]
    for criterion in spec.criteria:
        metric = getattr(criterion, "metric", None)
        if metric is not None and metric not in metrics:
            notes.append(
                f"criterion {criterion.name}: no column {metric!r} in {curves_file.name}, so it never fired"
            )
    if not any(curve.seconds for curve in curves) and any(
        isinstance(c, api.BudgetCriterion) and (c.max_duration or c.max_gpu_hours) for c in spec.criteria
    ):
        notes.append(f"no {SECONDS!r} values: maxDuration and maxGPUHours were not replayed")
    cohort_metrics = {c.metric for c in spec.criteria if isinstance(c, api.CohortCriterion)}
    results: list[JobResult] = []
    cohort: list[CohortCurve] = []
    for curve in curves:
        available = min(max(curve.rows), spec.max_epochs or math.inf)
        run, decision = replay_job(spec, curve, tuple(cohort), int(available))
        results.append(
            JobResult(
                curve.job,
                run,
                int(available),
                decision,
                _best(curve, objective.metric, objective.mode, run),
                _best(curve, objective.metric, objective.mode, int(available)),
            )
        )
        for metric in cohort_metrics:
            values = {e: row[metric] for e, row in curve.rows.items() if e <= run and metric in row}
            cohort.append(CohortCurve(curve.job, metric, values, stopped=decision is not None))
    return Replay(str(job_file), objective.metric, objective.mode, tuple(results), tuple(notes))


def render_table(result: Replay) -> str:
    """A table a person reads: one row per job, the stop messages, then the sweep summary."""
    header = ("job", "stop", "epochs", "reason", "criterion", f"best {result.metric}")
    rows = [
        (
            job.job,
            str(job.epochs_run) if job.decision else "-",
            f"{job.epochs_run}/{job.epochs_available}",
            job.decision.type if job.decision else "-",
            job.decision.criterion if job.decision else "-",
            f"{job.best.value:.6g} (epoch {job.best.epoch})" if job.best else "-",
        )
        for job in result.results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    stops = [f"  {job.job}: {job.decision.message}" for job in result.results if job.decision]
    if stops:
        lines += ["", "why:", *stops]
    lines += [
        "",
        f"{len(result.results)} jobs, {result.epochs_run} of {result.epochs_available} epochs run, "
        f"{result.fraction_saved:.1%} saved",
    ]
    for label, stopping in (("best with stopping", True), ("best without stopping", False)):
        found = result.best_overall(stopping=stopping)
        if found:
            lines.append(
                f"{label}: {result.metric} {found[1].value:.6g} ({found[0]}, epoch {found[1].epoch})"
            )
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)
