"""`stopline replay`: run a TrainingJob's criteria over recorded learning curves, as if they were a sweep.

The jobs of the CSV form a sequential sweep in order of first appearance: job k's cohort is jobs 1..k-1,
each with the epochs it actually ran (a job that was not stopped completed, so its last value is final).
Each epoch is fed to the same engine the operator calls, one call per epoch, with the cumulative
`seconds` column (if any) as the clock.

A job is named by a `job` column, or by `config` as public curve collections name it; with a `task`
column, each task is a sweep of its own (a config is unique within its task only), replayed and summed
up on its own, then over all tasks as docs/policy.md does. `epoch_seconds` is read as `seconds`.

The CSV is hostile input like any other: it is read as a stream (a `.gz` is decompressed as it is read)
and refused past CURVES_MAX_BYTES, CURVES_MAX_LINES or a line of LINE_MAX_BYTES. Epochs are ASCII integers
1..EPOCH_MAX; `seconds` (per epoch) a finite decimal in 0..EPOCH_SECONDS_MAX; metric cells a decimal
number, `nan`, `inf` or `-inf` (a trainer can report those, and the divergence criterion fires on them),
or empty. Job names are printed in the table, so a name with a control or invisible character (NUL, an
ANSI escape, a bidi override) is refused rather than printed. Every refusal is a ReplayError: one line
naming the file, the line and the column, and what to write instead.

The cohort, rungs and forecast criteria compare every epoch of a job with every earlier job of its sweep,
so a sweep's cost grows with the square of its jobs. Past PEER_COMPARISONS_MAX such comparisons a replay is
refused: at once when the file is sure to pass it, else before the job that could.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
import re
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stopline import api
from stopline.criteria import CohortCurve, Decision, Observation, evaluate
from stopline.criteria.state import is_better

SECONDS = "seconds"
TASK = "task"
SAFE_REGRET = 0.005  # a sweep that lost more than 0.5% of its best is counted, as docs/policy.md does
JOB_COLUMNS = ("job", "config")  # the first one the header has names the jobs
SECONDS_COLUMNS = (SECONDS, "epoch_seconds")
MiB = 1 << 20
# A TrainingJob the apiserver accepts is under 1.5 MiB (its object size limit).
JOB_MAX_BYTES = 2 * MiB
# Limits on the curves once decompressed. CURVES_MAX_BYTES bounds the time spent reading; a row kept
# costs ~330 bytes with one metric (887k rows peaked at 291 MB), so CURVES_MAX_LINES bounds memory, and
# the time blank lines take at a byte each. A line over LINE_MAX_BYTES is no curve row (and a cell of it
# stays under csv's own 128 KiB limit).
CURVES_MAX_BYTES = 256 * MiB
CURVES_MAX_LINES = 2_000_000
LINE_MAX_BYTES = 64 * 1024
EPOCH_MAX = api.MAX_EPOCHS
EPOCH_SECONDS_MAX = 1e9
# One comparison: one epoch of a job fed to one cohort, rungs or forecast criterion, against the curve of
# one earlier job of its sweep; a sweep of n jobs of e epochs makes up to e * n^2 / 2. The cost is the
# rules' own: the forecast refits from every finished job at every epoch (the nearest by the largest gap
# over up to five epochs, docs/policy.md), which no view sorted on one epoch narrows when the jobs tie
# there. At 1 to 4 microseconds a comparison (2 shared cores), this bounds a replay to about a quarter of
# an hour; all of bench/policy/curves with a val_acc objective makes 1.2e8 (2 minutes).
PEER_COMPARISONS_MAX = 250_000_000
_EPOCH = re.compile(r"[0-9]{1,7}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
NOT_REPLAYED = (
    "stale, gpuIdle and promql criteria cannot fire in replay (they watch a live trainer, GPUs, Prometheus)"
)


class ReplayError(Exception):
    """Bad input; the message is one line naming the file, the line or field, and the fix.

    Control and invisible characters of the message (quoted input, a path) are written as escapes, so
    the message stays one line and cannot drive the terminal.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_escaped(message))


def _escaped(text: str) -> str:
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@dataclass
class Curve:
    """One job of the file: metric values by epoch, and the seconds each epoch took (when recorded)."""

    job: str
    task: str | None = None
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
class Sweep:
    """The jobs of one task (of the whole file, without a task column), replayed in order."""

    task: str | None
    metric: str
    mode: api.Mode
    results: tuple[JobResult, ...]

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

    def regret(self) -> float | None:
        """How much worse the best value the sweep kept is than the best it would have had without
        stopping, relative to the latter (docs/policy.md's regret, on best values): 0 when no stop cost it."""
        return _regret(self.best_overall(stopping=True), self.best_overall(stopping=False), self.mode)

    def verdict(self) -> str | None:
        """In words, whether the stops cost the sweep its best model, and which stop did."""
        kept, unstopped = self.best_overall(stopping=True), self.best_overall(stopping=False)
        regret = _regret(kept, unstopped, self.mode)
        if regret is None or kept is None or unstopped is None:
            return None
        if regret <= 0:
            return f"the stops kept the sweep's best ({unstopped[0]}): no stopped job would have beaten it"
        lost = next(result for result in self.results if result.job == unstopped[0])
        return (
            f"the stops lost the sweep's best: {lost.job} was stopped at epoch {lost.epochs_run} and "
            f"would have reached {unstopped[1].value:.6g}; the best kept, {kept[1].value:.6g}, is "
            f"{regret:.2%} worse"
        )

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
                "regret": _rounded(self.regret()),
            },
        }


@dataclass(frozen=True)
class Replay:
    """One sweep, or one per task; over tasks, the figures docs/policy.md's front uses."""

    job_file: str
    metric: str
    mode: api.Mode
    sweeps: tuple[Sweep, ...]
    notes: tuple[str, ...]
    by_task: bool

    def worst_task(self) -> tuple[str, float] | None:
        regrets = [
            (sweep.task or "", regret) for sweep in self.sweeps if (regret := sweep.regret()) is not None
        ]
        return max(regrets, key=lambda pair: pair[1]) if regrets else None

    def tasks_over(self, regret: float) -> int:
        return sum(1 for sweep in self.sweeps if (lost := sweep.regret()) is not None and lost > regret)

    def mean_saved(self) -> float:
        """Saved per task, averaged: each sweep weighs the same however long its curves."""
        return sum(sweep.fraction_saved for sweep in self.sweeps) / len(self.sweeps) if self.sweeps else 0.0

    def as_json(self) -> dict[str, object]:
        if not self.by_task:
            return self.sweeps[0].as_json()
        worst = self.worst_task()
        run = sum(sweep.epochs_run for sweep in self.sweeps)
        available = sum(sweep.epochs_available for sweep in self.sweeps)
        return {
            "tasks": [{"task": sweep.task} | sweep.as_json() for sweep in self.sweeps],
            "summary": {
                "tasks": len(self.sweeps),
                "jobs": sum(len(sweep.results) for sweep in self.sweeps),
                "epochsRun": run,
                "epochsAvailable": available,
                "fractionSaved": round(1 - run / available, 6) if available else 0.0,
                "fractionSavedMeanOfTasks": round(self.mean_saved(), 6),
                "regretMax": _rounded(worst[1] if worst else None),
                "worstTask": worst[0] if worst else None,
                "tasksOverHalfPercent": self.tasks_over(SAFE_REGRET),
            },
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _regret(
    kept: tuple[str, Best] | None, unstopped: tuple[str, Best] | None, mode: api.Mode
) -> float | None:
    if kept is None or unstopped is None:
        return None
    gap = kept[1].value - unstopped[1].value
    gap = gap if mode == "min" else -gap
    return gap / abs(unstopped[1].value) if unstopped[1].value else gap


def _best_json(best: Best | None) -> dict[str, object] | None:
    return {"metric": best.metric, "value": best.value, "epoch": best.epoch} if best else None


def load_job(path: Path) -> api.TrainingJobSpec:
    """The spec of a TrainingJob manifest, validated by stopline.api."""
    with _open(path) as stream:
        data = _read(path, None, lambda: stream.read(JOB_MAX_BYTES + 1))
    if len(data) > JOB_MAX_BYTES:
        raise ReplayError(
            f"{path}: larger than {JOB_MAX_BYTES // MiB} MiB, and a TrainingJob manifest is far smaller; "
            "check the path"
        )
    text = _decode(path, None, data, "utf-8-sig")
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise ReplayError(
            f"{path}:{where} not valid YAML ({getattr(error, 'problem', error)}); fix the syntax"
        ) from None
    except (ValueError, TypeError, AttributeError, RecursionError) as error:
        # PyYAML's constructors raise these on some input: 2001-13-14, a bad !!timestamp, deep nesting.
        raise ReplayError(
            f"{path}: not valid YAML ({type(error).__name__}: {error}); fix the value"
        ) from None
    jobs = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "TrainingJob"]
    if len(jobs) != 1:
        raise ReplayError(f"{path}: expected one TrainingJob manifest (kind: TrainingJob), found {len(jobs)}")
    try:
        return api.parse_spec(jobs[0].get("spec"))
    except api.SpecError as error:
        raise ReplayError(f"{path}: {error}") from None


def _open(path: Path) -> io.BufferedIOBase:
    """The file's bytes as a stream: a .gz is decompressed as it is read, so only what is read is held."""
    try:
        return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")
    except FileNotFoundError:
        raise ReplayError(f"{path}: no such file; check the path") from None
    except OSError as error:
        raise ReplayError(
            f"{path}: cannot read it ({error.strerror}); check the path and permissions"
        ) from None


def _where(line: int | None) -> str:
    return f" line {line}:" if line is not None else ""


def _read(path: Path, line: int | None, read: Callable[[], bytes]) -> bytes:
    """One read of `path`; a corrupt gzip stream or an I/O error is a ReplayError naming the line."""
    try:
        return read()
    except (OSError, EOFError, zlib.error) as error:
        where = _where(line)
        if path.name.endswith(".gz"):
            raise ReplayError(
                f"{path}:{where} not a whole gzip file ({error}); compress it again, or pass the plain .csv"
            ) from None
        raise ReplayError(f"{path}:{where} cannot read it ({error}); check the file") from None


def _decode(path: Path, line: int | None, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise ReplayError(
            f"{path}:{_where(line)} not UTF-8 text ({error.reason} at byte {error.start}); "
            "save the file as UTF-8"
        ) from None


def _lines(path: Path, stream: io.BufferedIOBase) -> Iterator[str]:
    """The curves file's text lines, read one at a time and each decoded on its own (errors name it)."""
    total = 0
    for number in itertools.count(1):
        data = _read(path, number, lambda: stream.readline(LINE_MAX_BYTES + 1))
        if not data:
            return
        total += len(data)
        if number > CURVES_MAX_LINES:
            raise ReplayError(
                f"{path}: line {number}: more than {CURVES_MAX_LINES} lines; replay fewer jobs at a time "
                "(split the file by job)"
            )
        if total > CURVES_MAX_BYTES:
            raise ReplayError(
                f"{path}: line {number}: more than {CURVES_MAX_BYTES // MiB} MiB"
                f"{' once decompressed' if path.name.endswith('.gz') else ''}; replay fewer jobs at a time "
                "(split the file by job)"
            )
        if len(data) > LINE_MAX_BYTES:
            raise ReplayError(
                f"{path}: line {number}: longer than {LINE_MAX_BYTES} bytes{_column_reached(data)}; "
                "a curves row is a job name and numbers: check that this is the curves CSV"
            )
        yield _decode(path, number, data, "utf-8-sig" if number == 1 else "utf-8")


def _column_reached(data: bytes) -> str:
    """Which column an over-long line has reached by its first LINE_MAX_BYTES, when csv can tell."""
    try:
        cells = next(csv.reader([data[:LINE_MAX_BYTES].decode("utf-8", "replace")]), [])
    except csv.Error:
        return ""
    return f" (column {len(cells)} by then)"


def _rows(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """The non-empty CSV rows and the line each ends on; a CSV syntax error names its line."""
    reader = csv.reader(lines)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise ReplayError(
                f"{path}: line {reader.line_num}: not valid CSV ({error}); check the quotes above: "
                "a quoted cell runs on to its closing quote"
            ) from None
        if row:
            yield reader.line_num, row


def load_curves(path: Path, needed: str, used: Collection[str] = ()) -> tuple[list[Curve], list[str]]:
    """Curves by (task, job) in order of first appearance, and the metric columns; `needed` must be one.
    Only `needed` and the `used` columns are read as numbers: another column (a learning-rate schedule's
    name, a note) is not what the criteria watch, so its text is left alone."""
    with _open(path) as stream:
        return _parse_curves(path, _rows(path, _lines(path, stream)), needed, {needed, *used})


@dataclass(frozen=True)
class _Header:
    """What each column of the header is: the job's name, its task (optional), epoch, seconds, metrics."""

    columns: list[str]
    job: str
    task: str | None
    seconds: str | None
    metrics: list[str]


def _parse_curves(
    path: Path, rows: Iterator[tuple[int, list[str]]], needed: str, used: set[str]
) -> tuple[list[Curve], list[str]]:
    header_line, cells = next(rows, (1, []))
    if not any(cell.strip() for cell in cells):
        raise ReplayError(f"{path}: empty file; expected a header line job,epoch,<metric>,... and rows")
    header = _header(path, header_line, [cell.strip() for cell in cells], needed)
    curves: dict[tuple[str | None, str], Curve] = {}
    first_line: dict[tuple[str | None, str, int], int] = {}
    for line, row in rows:
        if len(row) != len(header.columns):
            raise ReplayError(
                f"{path}: line {line}: {len(row)} cells, the header has {len(header.columns)}; fix the row"
            )
        cells_by = dict(zip(header.columns, (cell.strip() for cell in row), strict=True))
        epoch = _epoch(path, line, cells_by["epoch"])
        task = _name(path, line, header.task, cells_by[header.task]) if header.task else None
        key = (task, cells_by[header.job])
        curve = curves.get(key)
        if curve is None:
            curve = curves[key] = Curve(_name(path, line, header.job, key[1]), task)
        if (task, curve.job, epoch) in first_line:
            where = f"task {task!r} " if task is not None else ""
            raise ReplayError(
                f"{path}: line {line}: {where}{header.job} {curve.job!r} epoch {epoch} already appeared on "
                f"line {first_line[task, curve.job, epoch]}; keep one row per {header.job} and epoch"
            )
        first_line[task, curve.job, epoch] = line
        curve.rows[epoch] = {
            metric: _metric(path, line, metric, cells_by[metric])
            for metric in header.metrics
            if metric in used and cells_by[metric] != ""
        }
        if header.seconds and cells_by[header.seconds] != "":
            curve.seconds[epoch] = _seconds(path, line, header.seconds, cells_by[header.seconds])
    if not curves:
        raise ReplayError(f"{path}: no rows after the header; add one row per job and epoch")
    return list(curves.values()), header.metrics


def _header(path: Path, line: int, columns: list[str], needed: str) -> _Header:
    """Each column named once (a repeated name would silently merge), and a job column, epoch and
    `needed` present."""
    numbers: dict[str, int] = {}
    for number, column in enumerate(columns, start=1):
        if column in numbers:
            raise ReplayError(
                f"{path}: line {line}: column {number} is named {column!r} like column {numbers[column]}; "
                "give each column its own name"
            )
        numbers[column] = number
    job = next((column for column in JOB_COLUMNS if column in numbers), None)
    for column in (job or "job", "epoch", needed):
        if column not in numbers:
            raise ReplayError(
                f"{path}: line {line}: missing column {column!r}; the header must be job,epoch,<metric>,... "
                f"(or task,config,epoch,<metric>,...) with the objective metric {needed!r} among the "
                f"metrics (found: {','.join(columns)})"
            )
    assert job is not None
    task = TASK if TASK in numbers else None
    seconds = next((column for column in SECONDS_COLUMNS if column in numbers), None)
    roles = {job, "epoch", task, seconds}
    return _Header(columns, job, task, seconds, [column for column in columns if column not in roles])


def _name(path: Path, line: int, column: str, name: str) -> str:
    """A job's or task's name; it is printed in the table, so it must be plain text."""
    if not name.isprintable():
        raise ReplayError(
            f"{path}: line {line}: column {column!r} is {name!r}, with a control or invisible character; "
            f"write {column} names as plain text (the table prints them)"
        )
    return name


def _epoch(path: Path, line: int, text: str) -> int:
    if not _EPOCH.fullmatch(text) or not 1 <= int(text) <= EPOCH_MAX:
        raise ReplayError(
            f"{path}: line {line}: column 'epoch' is {text!r}; epochs are integers from 1 to {EPOCH_MAX}, "
            "written with the digits 0-9"
        )
    return int(text)


def _metric(path: Path, line: int, column: str, text: str) -> float:
    """A decimal number, or nan/inf/-inf as a trainer may report them (the divergence criterion's case)."""
    if _NON_FINITE.fullmatch(text):
        return float(text)
    return _decimal(
        path,
        line,
        column,
        text,
        "write a decimal number such as 0.25 or 1e-3, nan, inf, or leave the cell empty",
    )


def _seconds(path: Path, line: int, column: str, text: str) -> float:
    """The seconds an epoch took: finite and not negative, or the budget's clock would never add up."""
    fix = f"write the seconds the epoch took, from 0 to {EPOCH_SECONDS_MAX:.0f}, or leave the cell empty"
    seconds = _decimal(path, line, column, text, fix)
    if not 0 <= seconds <= EPOCH_SECONDS_MAX:
        raise ReplayError(f"{path}: line {line}: column {column!r} is {text!r}, out of range; {fix}")
    return seconds


def _decimal(path: Path, line: int, column: str, text: str, fix: str) -> float:
    """A finite number in ASCII decimal notation (no 1_000, no Unicode digits, nothing past a float)."""
    if not _DECIMAL.fullmatch(text):
        raise ReplayError(f"{path}: line {line}: column {column!r} is {text!r}, not a number; {fix}")
    value = float(text)
    if not math.isfinite(value):
        raise ReplayError(
            f"{path}: line {line}: column {column!r} is {text!r}, beyond the largest float; {fix}"
        )
    return value


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


def replay(
    job_file: Path,
    curves_file: Path,
    task: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Replay:
    """Replay the job's criteria over the file's sweeps (only `task`'s when given); `progress` hears the
    jobs replayed so far and the total after each job."""
    spec = load_job(job_file)
    objective = spec.objective
    curves, metrics = load_curves(curves_file, objective.metric, spec.watched_metrics)
    by_task = any(curve.task is not None for curve in curves)
    if task is not None:
        if not by_task:
            raise ReplayError(
                f"{curves_file}: no column {TASK!r}, so --task {task!r} names nothing; drop --task"
            )
        chosen = [curve for curve in curves if curve.task == task]
        if not chosen:
            names = list(dict.fromkeys(str(curve.task) for curve in curves))
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ReplayError(f"{curves_file}: no task {task!r}; the file has {shown}")
        curves = chosen
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
    tasks: dict[str | None, list[Curve]] = {}
    for curve in curves:
        tasks.setdefault(curve.task, []).append(curve)
    done = itertools.count(1)

    def replayed() -> None:
        if progress is not None:
            progress(next(done), len(curves))

    comparisons = _PeerComparisons(curves_file, spec)
    comparisons.foresee(tasks.values())
    sweeps = tuple(_sweep(spec, name, members, replayed, comparisons) for name, members in tasks.items())
    for sweep in sweeps:
        if all(result.best_if_no_stopping is None for result in sweep.results):
            where = f"task {sweep.task}" if sweep.task is not None else curves_file.name
            notes.append(
                f"{where}: no {objective.metric} values, so no job there was judged on the objective; "
                "replay it with a job whose objective is a metric it has"
            )
    return Replay(str(job_file), objective.metric, objective.mode, sweeps, tuple(notes), by_task)


class _PeerComparisons:
    """The comparisons with earlier jobs a replay makes (see PEER_COMPARISONS_MAX): foreseen before any job
    runs, so that a file sure to pass the limit is refused at once, then counted as the jobs run."""

    def __init__(self, curves_file: Path, spec: api.TrainingJobSpec) -> None:
        peer_kinds = api.CohortCriterion | api.RungsCriterion | api.ForecastCriterion
        self.curves_file = curves_file
        self.spec = spec
        self.readers = sum(1 for criterion in spec.criteria if isinstance(criterion, peer_kinds))
        self.metrics = {c.metric for c in spec.criteria if isinstance(c, peer_kinds)}
        self.made = 0

    def foresee(self, sweeps: Iterable[list[Curve]]) -> None:
        """Refuse the file if it passes the limit even when every job stops at its first epoch, counting only
        the earlier curves sure to be kept (a finite value at their first epoch)."""
        least = jobs = 0
        for curves in sweeps:
            kept = 0
            for curve in curves:
                jobs += 1
                first = min(curve.rows)
                if first <= _available(curve, self.spec):
                    least += self.readers * kept
                    kept += sum(math.isfinite(curve.rows[first].get(m, math.nan)) for m in self.metrics)
        if least > PEER_COMPARISONS_MAX:
            raise self._refusal(f"{jobs} jobs, even if each stopped at its first epoch,")

    def allow(self, comparisons: int, task: str | None, number: int, jobs: int, job: str) -> None:
        """Refuse job `number` of its sweep if its `comparisons`, all its epochs run, could pass the limit."""
        if self.made + comparisons > PEER_COMPARISONS_MAX:
            where = f"task {task!r}: " if task is not None else ""
            raise self._refusal(f"{where}job {number} of {jobs} ({job!r})")

    def _refusal(self, what: str) -> ReplayError:
        return ReplayError(
            f"{self.curves_file}: {what} would take the replay past {PEER_COMPARISONS_MAX:,} comparisons "
            "of an epoch with an earlier job's curve (the cohort, rungs and forecast criteria compare each "
            "epoch with every earlier job, so the cost grows with the square of the jobs); replay fewer jobs "
            "at a time (split the file by job)"
        )


def _available(curve: Curve, spec: api.TrainingJobSpec) -> int:
    """The epochs the job would have run: its curve's, up to maxEpochs."""
    return int(min(max(curve.rows), spec.max_epochs or math.inf))


def _fed(curve: Curve, last: int) -> int:
    """How many epochs replay_job feeds the criteria when the job runs to `last`."""
    return sum(1 for epoch in curve.rows if epoch <= last)


def _sweep(
    spec: api.TrainingJobSpec,
    task: str | None,
    curves: list[Curve],
    replayed: Callable[[], None],
    comparisons: _PeerComparisons,
) -> Sweep:
    """One sweep: each job judged against the ones before it, with the epochs they ran."""
    objective = spec.objective
    results: list[JobResult] = []
    cohort: tuple[CohortCurve, ...] = ()
    for number, curve in enumerate(curves, start=1):
        available = _available(curve, spec)
        per_epoch = comparisons.readers * len(cohort)
        comparisons.allow(per_epoch * _fed(curve, available), task, number, len(curves), curve.job)
        run, decision = replay_job(spec, curve, cohort, available)
        comparisons.made += per_epoch * _fed(curve, run)
        results.append(
            JobResult(
                curve.job,
                run,
                available,
                decision,
                _best(curve, objective.metric, objective.mode, run),
                _best(curve, objective.metric, objective.mode, available),
            )
        )
        for metric in comparisons.metrics:
            values = {e: row[metric] for e, row in curve.rows.items() if e <= run and metric in row}
            stopped = decision is not None
            peer = CohortCurve(curve.job, metric, values, stopped=stopped, completed=not stopped)
            if peer.last is not None:  # every criterion skips a curve with no finite value: left out
                cohort += (peer,)
        replayed()
    return Sweep(task, objective.metric, objective.mode, tuple(results))


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
        )
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def _sweep_table(sweep: Sweep) -> list[str]:
    header = ("job", "stop", "epochs", "reason", "criterion", f"best {sweep.metric}")
    rows = [
        (
            job.job,
            str(job.epochs_run) if job.decision else "-",
            f"{job.epochs_run}/{job.epochs_available}",
            job.decision.type if job.decision else "-",
            job.decision.criterion if job.decision else "-",
            f"{job.best.value:.6g} (epoch {job.best.epoch})" if job.best else "-",
        )
        for job in sweep.results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    stops = [f"  {job.job}: {job.decision.message}" for job in sweep.results if job.decision]
    if stops:
        lines += ["", "why:", *stops]
    lines += [
        "",
        f"{len(sweep.results)} jobs, {sweep.epochs_run} of {sweep.epochs_available} epochs run, "
        f"{sweep.fraction_saved:.1%} saved",
    ]
    for label, stopping in (("best with stopping", True), ("best without stopping", False)):
        found = sweep.best_overall(stopping=stopping)
        if found:
            lines.append(f"{label}: {sweep.metric} {found[1].value:.6g} ({found[0]}, epoch {found[1].epoch})")
    verdict = sweep.verdict()
    return lines + ([verdict] if verdict else [])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
