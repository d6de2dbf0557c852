"""`stopline study`: a live study as it stands, from its TrainingJobs' status: replay's table, --json, page.

What each job really did: status.curve (the objective by epoch), status.phase, status.stopReason (the epoch
and the criterion that stopped it), status.resumes (where a person or the study's resume rule took a stop
back), status.checkpoint's epoch (the weights it kept) and spec.maxEpochs (what a stop saved). Every field
is remote input: each is read by a total parser, text is bounded, and a job whose status cannot be read (a
curve of strings or too long, a stopReason that is not an object, an objective that is not the study's) is
left out with its name and the reason, never an exception; so is a sweep's own TrainingJob
(spec.targetSelector), which runs no trainer: its members do. Pure: the caller lists the TrainingJobs
(stopline.cli).

Unlike a replay, a live study does not know what a stopped job would have reached, so its regret is null
and its epochs saved are only the stopped jobs' (a running job's remaining epochs are still to run).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stopline.criteria.state import is_better
from stopline.fields import MAX_EPOCHS, Mode
from stopline.replay.page import Figure, JobView, PageView, Stop, SweepView, best_text
from stopline.replay.render import aligned
from stopline.replay.sweep import Best
from stopline.vocabulary import TERMINAL_PHASES

MAX_CURVE = 10_000  # the CRD's maxItems of status.curve: a longer one is not a TrainingJob's
MAX_RESUMES = 100  # the CRD's maxItems of status.resumes
MAX_NAME = 253  # a Kubernetes name
MAX_WORD = 128  # a criterion's name, a phase, a reason type, a metric
MAX_MESSAGE = 1024  # as an Event's message
NO_NAME = "(no name)"
UNKNOWN_REGRET = (
    "regret is null: a live study does not know what a stopped job would have reached (those epochs never "
    "ran); epochs saved count the stopped jobs' epochs left to spec.maxEpochs"
)


@dataclass(frozen=True)
class Resumed:
    """One entry of status.resumes: the epoch it resumed from, who resumed it, the rule's chance."""

    from_epoch: int | None
    reason: str | None
    probability: float | None

    def as_json(self) -> dict[str, object]:
        return {"fromEpoch": self.from_epoch, "reason": self.reason, "probability": self.probability}


@dataclass(frozen=True)
class LiveJob:
    """One TrainingJob as its status tells it."""

    name: str
    phase: str | None
    values: tuple[tuple[int, float], ...]  # the finite values of status.curve by epoch
    epochs_run: int
    max_epochs: int | None
    stop: Stop | None
    reason: str | None  # status.stopReason.type
    weights_epoch: int | None
    resumes: tuple[Resumed, ...] = ()

    @property
    def epochs_available(self) -> int:
        """What the job may run: spec.maxEpochs (never less than it ran), else the epochs it ran."""
        return max(self.max_epochs or 0, self.epochs_run)

    @property
    def running(self) -> bool:
        return self.stop is None and self.phase not in TERMINAL_PHASES

    @property
    def saved(self) -> int:
        return self.epochs_available - self.epochs_run if self.stop else 0

    def best(self, metric: str, mode: Mode) -> Best | None:
        found: Best | None = None
        for epoch, value in self.values:
            if found is None or is_better(value, found.value, mode):
                found = Best(metric, value, epoch)
        return found


@dataclass(frozen=True)
class Skipped:
    job: str
    why: str


@dataclass(frozen=True)
class Study:
    """The jobs of one study (or selector) in one namespace, by name, and those left out."""

    name: str  # the study, or the label selector that chose the jobs
    namespace: str
    metric: str
    mode: Mode
    jobs: tuple[LiveJob, ...]
    skipped: tuple[Skipped, ...]

    def best_overall(self) -> tuple[str, Best] | None:
        winner: tuple[str, Best] | None = None
        for job in self.jobs:
            best = job.best(self.metric, self.mode)
            if best is not None and (winner is None or is_better(best.value, winner[1].value, self.mode)):
                winner = (job.name, best)
        return winner

    def as_json(self) -> dict[str, object]:
        """replay's --json of one sweep (regret and the best without stopping null: not known live), each
        job with its phase, and the study's counts of stopped, running and skipped jobs."""
        run = sum(job.epochs_run for job in self.jobs)
        available = sum(job.epochs_available for job in self.jobs)
        saved = sum(job.saved for job in self.jobs)
        best = self.best_overall()
        return {
            "jobs": [self._job_json(job) for job in self.jobs],
            "summary": {
                "jobs": len(self.jobs),
                "epochsRun": run,
                "epochsAvailable": available,
                "fractionSaved": round(saved / available, 6) if available else 0.0,
                "bestOverall": _best_json(best[1], job=best[0]) if best else None,
                "bestOverallIfNoStopping": None,
                "regret": None,
                "study": self.name,
                "namespace": self.namespace,
                "stopped": sum(1 for job in self.jobs if job.stop),
                "running": sum(1 for job in self.jobs if job.running),
                "resumedJobs": sum(1 for job in self.jobs if job.resumes),
                "epochsSaved": saved,
                "skipped": [{"job": skip.job, "why": skip.why} for skip in self.skipped],
            },
        }

    def _job_json(self, job: LiveJob) -> dict[str, object]:
        best = job.best(self.metric, self.mode)
        return {
            "job": job.name,
            "stopped": job.stop is not None,
            "stopEpoch": job.stop.epoch if job.stop else None,
            "epochsRun": job.epochs_run,
            "epochsAvailable": job.epochs_available,
            "reason": job.reason,
            "criterion": job.stop.criterion if job.stop else None,
            "message": job.stop.message if job.stop else None,
            "best": _best_json(best) if best else None,
            "phase": job.phase,
            "running": job.running,
            "weightsEpoch": job.weights_epoch,
            "maxEpochs": job.max_epochs,
            "resumes": [resumed.as_json() for resumed in job.resumes],
        }

    def notes(self) -> tuple[str, ...]:
        return (
            *(f"{skip.job}: left out, {skip.why}" for skip in self.skipped),
            UNKNOWN_REGRET,
        )

    def page(self, title: str) -> PageView:
        summary = self.as_json()["summary"]
        assert isinstance(summary, dict)
        best = self.best_overall()
        figures = (
            Figure("jobs", "jobs", summary["jobs"]),
            Figure("stopped", "stopped jobs", summary["stopped"]),
            Figure("running", "running jobs", summary["running"]),
            Figure("resumed-jobs", "resumed jobs", summary["resumedJobs"]),
            Figure("epochs-run", "epochs run", summary["epochsRun"]),
            Figure("epochs-available", "epochs to maxEpochs", summary["epochsAvailable"]),
            Figure("epochs-saved", "epochs saved", summary["epochsSaved"]),
            Figure("fraction-saved", "saved", summary["fractionSaved"]),
            Figure("best-job", "best job kept", best[0] if best else None, best_text(best)),
            Figure("skipped", "jobs left out", len(self.skipped)),
        )
        jobs = tuple(
            JobView(
                job.name,
                job.values,
                job.epochs_run,
                job.epochs_available,
                job.best(self.metric, self.mode),
                job.stop,
                resumed_at=job.resumes[-1].from_epoch if job.resumes else None,
                running=job.running,
                phase=job.phase or "-",
                weights_epoch=job.weights_epoch,
            )
            for job in self.jobs
        )
        heading = f"{len(self.jobs)} jobs"
        sweep = SweepView(
            heading, None, self.metric, self.mode, figures, None, jobs, best[0] if best else None
        )
        subject = f"objective: {self.metric} ({self.mode}), TrainingJobs {self.name} in {self.namespace}"
        return PageView(title, subject, (), (sweep,), self.notes())

    def table(self) -> str:
        """replay's table with each job's phase and the epoch of its weights."""
        header = ("job", "phase", "stop", "epochs", "reason", "criterion", "weights", f"best {self.metric}")
        rows = [
            (
                job.name,
                job.phase or "-",
                str(job.stop.epoch) if job.stop else "-",
                f"{job.epochs_run}/{job.epochs_available}",
                job.reason or "-",
                job.stop.criterion if job.stop else "-",
                str(job.weights_epoch) if job.weights_epoch is not None else "-",
                _best_cell(job.best(self.metric, self.mode)),
            )
            for job in self.jobs
        ]
        lines = aligned([header, *rows])
        stops = [f"  {job.name}: {job.stop.message}" for job in self.jobs if job.stop and job.stop.message]
        summary = self.as_json()["summary"]
        assert isinstance(summary, dict)
        lines += ["", "why:", *stops] if stops else []
        lines += [
            "",
            f"{len(self.jobs)} jobs ({summary['stopped']} stopped, {summary['running']} running, "
            f"{summary['resumedJobs']} resumed), "
            f"{summary['epochsRun']} of {summary['epochsAvailable']} epochs run, "
            f"{summary['epochsSaved']} saved ({summary['fractionSaved']:.1%})",
        ]
        best = self.best_overall()
        lines += (
            [f"best: {self.metric} {best[1].value:.6g} ({best[0]}, epoch {best[1].epoch})"] if best else []
        )
        return "\n".join(lines + [f"note: {note}" for note in self.notes()])


def read_study(items: Sequence[object], name: str, namespace: str) -> Study:
    """The study from the TrainingJobs the apiserver listed: the objective most of them share (the first
    by name on a tie) is the study's; a job with another, or a status no parser can read, is skipped."""
    read: list[tuple[LiveJob, tuple[str, Mode]]] = []
    skipped: list[Skipped] = []
    for item in items:
        job_name = _name(item)
        try:
            read.append(_job(item, job_name))
        except _LeftOut as error:
            skipped.append(Skipped(job_name, str(error)))
    read.sort(key=lambda pair: pair[0].name)
    objectives = Counter(objective for _, objective in read)
    order = [objective for _, objective in read]
    metric, mode = max(objectives, key=lambda o: (objectives[o], -order.index(o))) if read else ("-", "min")
    jobs = []
    for job, objective in read:
        if objective == (metric, mode):
            jobs.append(job)
        else:
            skipped.append(Skipped(job.name, f"its objective {objective[0]} ({objective[1]}) is not the "
                                             f"study's, {metric} ({mode})"))  # fmt: skip
    return Study(name, namespace, metric, mode, tuple(jobs), tuple(sorted(skipped, key=lambda s: s.job)))


class _LeftOut(ValueError):
    """A TrainingJob left out, saying why: its spec or status no parser can read, or it is a sweep."""


def _name(item: object) -> str:
    metadata = item.get("metadata") if isinstance(item, Mapping) else None
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return _text(name, MAX_NAME) or NO_NAME


def _job(item: object, name: str) -> tuple[LiveJob, tuple[str, Mode]]:
    if not isinstance(item, Mapping) or name == NO_NAME:
        raise _LeftOut("not a TrainingJob with a metadata.name")
    spec, status = _object(item.get("spec")), item.get("status", {})
    if "targetSelector" in spec:
        raise _LeftOut("a sweep (spec.targetSelector): its member TrainingJobs are the jobs")
    objective = _object(spec.get("objective"))
    metric = objective.get("metric")
    if not isinstance(metric, str) or not metric:
        raise _LeftOut("spec.objective.metric is not a metric's name")
    mode: Mode = "max" if objective.get("mode") == "max" else "min"
    if not isinstance(status, Mapping):
        raise _LeftOut(f"status is {_kind(status)}, not an object")
    curve, values = _curve(status.get("curve"))
    reason = status.get("stopReason")
    if reason is not None and not isinstance(reason, Mapping):
        raise _LeftOut(f"status.stopReason is {_kind(reason)}, not an object")
    weights = _epoch(_object(status.get("checkpoint")).get("epoch"))
    reported = _epoch(_object(status.get("progress")).get("epoch"))
    decided = _epoch(reason.get("epoch")) if reason is not None else None
    run = max(curve, reported or 0, decided or 0, weights or 0)
    stop = None
    if reason is not None:
        criterion, message = (
            _text(reason.get("criterion"), MAX_WORD),
            _text(reason.get("message"), MAX_MESSAGE),
        )
        stop = Stop(decided or weights or run, criterion or "-", message or "")
    job = LiveJob(
        name,
        _text(status.get("phase"), MAX_WORD),
        values,
        run,
        _epoch(spec.get("maxEpochs")),
        stop,
        _text(reason.get("type"), MAX_WORD) if reason is not None else None,
        weights,
        _resumes(status.get("resumes")),
    )
    return job, (_word(metric, MAX_WORD), mode)


def _object(raw: object) -> Mapping[str, object]:
    """A field that should be an object: itself, else an empty one (its fields then read as absent)."""
    return raw if isinstance(raw, Mapping) else {}


def _text(raw: object, limit: int) -> str | None:
    """A text field: bounded and printable (_word), or None when it is absent, empty or not a string."""
    return _word(raw, limit) if isinstance(raw, str) and raw else None


def _curve(raw: object) -> tuple[int, tuple[tuple[int, float], ...]]:
    """status.curve: the epochs it covers and its finite values by epoch (null, NaN or Inf: no value)."""
    if raw is None:
        return 0, ()
    if not isinstance(raw, list):
        raise _LeftOut(f"status.curve is {_kind(raw)}, not a list")
    if len(raw) > MAX_CURVE:
        raise _LeftOut(f"status.curve has {len(raw)} values, more than the {MAX_CURVE} a TrainingJob keeps")
    values = []
    for index, value in enumerate(raw):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _LeftOut(f"status.curve[{index}] is {_kind(value)}, not a number or null")
        if math.isfinite(value):
            values.append((index + 1, float(value)))
    return len(raw), tuple(values)


def _resumes(raw: object) -> tuple[Resumed, ...]:
    """status.resumes: at most MAX_RESUMES entries, each read field by field (an entry that is not an
    object, or a field of the wrong kind, reads as absent)."""
    if not isinstance(raw, list):
        return ()
    found = []
    for entry in raw[-MAX_RESUMES:]:
        fields = _object(entry)
        chance = fields.get("probability")
        usable = isinstance(chance, int | float) and not isinstance(chance, bool) and 0 <= chance <= 1
        probability = float(chance) if usable and isinstance(chance, int | float) else None
        found.append(
            Resumed(_epoch(fields.get("fromEpoch")), _text(fields.get("reason"), MAX_WORD), probability)
        )
    return tuple(found)


def _epoch(raw: object) -> int | None:
    """An epoch from a status or spec field: an integer from 1 to MAX_EPOCHS, else none."""
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= MAX_EPOCHS else None


def _kind(value: object) -> str:
    return {str: "a string", dict: "an object", list: "a list", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _word(text: str, limit: int) -> str:
    """Remote text for a page or a terminal: control characters as U+FFFD, at most `limit` characters."""
    shown = "".join(c if c.isprintable() or c == " " else "\ufffd" for c in text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "\u2026"


def _best_cell(best: Best | None) -> str:
    return f"{best.value:.6g} (epoch {best.epoch})" if best else "-"


def _best_json(best: Best, **job: str) -> dict[str, object]:
    return job | {"metric": best.metric, "value": best.value, "epoch": best.epoch}
