"""The curves file and the job manifest, read as hostile input: total, bounded, one-line errors.

The CSV is read as a stream (a `.gz` is decompressed as it is read) and refused past CURVES_MAX_BYTES,
CURVES_MAX_LINES or a line of LINE_MAX_BYTES. Epochs are ASCII integers 1..EPOCH_MAX; `seconds` (per
epoch) a finite decimal in 0..EPOCH_SECONDS_MAX; metric cells a decimal number, `nan`, `inf` or `-inf` (a
trainer can report those, and the divergence criterion fires on them), or empty. Job names are printed in
the table and the page, so a name with a control or invisible character (NUL, an ANSI escape, a bidi
override) is refused rather than printed. Every refusal is a ReplayError: one line naming the file, the
line and the column, and what to write instead.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
import re
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stopline import api

SECONDS = "seconds"
TASK = "task"
SCHEDULE = "schedule"  # a job's schedule label (stopline.dev/schedule): the resume rule's neighbours share it
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
_EPOCH = re.compile(r"[0-9]{1,7}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


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
    schedule: str | None = None


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
    schedule: str | None = None


def _parse_curves(
    path: Path, rows: Iterator[tuple[int, list[str]]], needed: str, used: set[str]
) -> tuple[list[Curve], list[str]]:
    header_line, cells = next(rows, (1, []))
    if not any(cell.strip() for cell in cells):
        raise ReplayError(f"{path}: empty file; expected a header line job,epoch,<metric>,... and rows")
    header = _header(path, header_line, [cell.strip() for cell in cells], needed, used)
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
        if header.schedule and cells_by[header.schedule] != "":
            schedule = _name(path, line, header.schedule, cells_by[header.schedule])
            if curve.schedule is not None and schedule != curve.schedule:
                raise ReplayError(
                    f"{path}: line {line}: {header.job} {curve.job!r} has {header.schedule} {schedule!r}, an "
                    f"earlier row {curve.schedule!r}; give each {header.job} one {header.schedule}"
                )
            curve.schedule = schedule
        if header.seconds and cells_by[header.seconds] != "":
            curve.seconds[epoch] = _seconds(path, line, header.seconds, cells_by[header.seconds])
    if not curves:
        raise ReplayError(f"{path}: no rows after the header; add one row per job and epoch")
    return list(curves.values()), header.metrics


def _header(path: Path, line: int, columns: list[str], needed: str, used: Collection[str] = ()) -> _Header:
    """Each column named once (a repeated name would silently merge), and a job column, epoch and
    `needed` present. A `schedule` column is the jobs' schedule label unless a criterion reads it."""
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
    schedule = SCHEDULE if SCHEDULE in numbers and SCHEDULE not in used else None
    roles = {job, "epoch", task, seconds, schedule}
    metrics = [column for column in columns if column not in roles]
    return _Header(columns, job, task, seconds, metrics, schedule)


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
