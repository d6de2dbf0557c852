"""The vocabulary every spec parser reads with: typed field getters that check the CRD's rules and name the
field path, and the shared types (durations, the objective's mode).

Below both stopline.api (the TrainingJob spec) and the criteria, each of which parses its own part of
spec.criteria[] with these. Pure: no kopf, no Kubernetes client.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

Mode = Literal["min", "max"]
MODES: tuple[Mode, ...] = ("min", "max")
METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_:./-]*$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")  # a label's value, such as a study
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Bounds the CRD sets too: finite, generous; epochs also bound `stopline replay`'s curves.
MAX_EPOCHS = 1_000_000
_Choice = TypeVar("_Choice", bound=str)


class SpecError(ValueError):
    """An invalid spec; the message starts with the field path, e.g. `spec.criteria[1].patience.patience`."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Duration:
    """A CRD duration such as 1h30m: the text the user wrote (for messages) and its length in seconds."""

    text: str
    seconds: float


def rfc3339(seconds: float, timespec: str = "seconds") -> str:
    """A time as the status writes it: RFC 3339 in UTC, to the second (or the `timespec` isoformat takes)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_duration(text: str) -> Duration:
    """Parse `^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$`; ValueError when the text does not match."""
    if not _DURATION.fullmatch(text):
        raise ValueError(text)
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))
    return Duration(text, seconds)


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: Mode = "min"


class Fields:
    """Reads one object of the spec: typed getters that check the CRD's rules and name the field path."""

    def __init__(self, raw: object, path: str, allowed: Sequence[str]) -> None:
        if not isinstance(raw, Mapping):
            raise SpecError(path, f"must be an object (a YAML mapping), got {show(raw)}")
        unknown = sorted(str(key) for key in raw if key not in allowed)
        if unknown:
            raise SpecError(
                f"{path}.{unknown[0]}", f"unknown field; the fields allowed here are {', '.join(allowed)}"
            )
        self.raw: Mapping[str, object] = raw
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def _required(self, key: str) -> object:
        if key not in self.raw or self.raw[key] is None:
            raise SpecError(self.at(key), "is required")
        return self.raw[key]

    def integer(
        self, key: str, minimum: int, maximum: int | None = None, *, default: int | None = None
    ) -> int:
        """The integer at key within the bounds; `default` when the field is absent (else it is required)."""
        if default is not None and not self.has(key):
            return default
        value = self._required(key)
        bounds = f">= {minimum}" if maximum is None else f"within {minimum}..{maximum}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(self.at(key), f"must be an integer {bounds}, got {show(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            raise SpecError(self.at(key), f"must be an integer {bounds}, got {value}")
        return value

    def optional_integer(self, key: str, minimum: int, maximum: int | None = None) -> int | None:
        return self.integer(key, minimum, maximum) if self.has(key) else None

    def number(
        self,
        key: str,
        minimum: float | None = None,
        maximum: float | None = None,
        *,
        exclusive: bool = False,
        default: float | None = None,
    ) -> float:
        if default is not None and not self.has(key):
            return default
        value = self._required(key)
        bound = [f"> {minimum}" if exclusive else f">= {minimum}"] if minimum is not None else []
        bound += [f"<= {maximum}"] if maximum is not None else []
        wanted = "must be a number" + (" " + " and ".join(bound) if bound else "")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise SpecError(self.at(key), f"{wanted}, got {show(value)}")
        too_low = minimum is not None and (value <= minimum if exclusive else value < minimum)
        if too_low or (maximum is not None and value > maximum):
            raise SpecError(self.at(key), f"{wanted}, got {value}")
        return float(value)

    def optional_number(
        self, key: str, minimum: float | None = None, maximum: float | None = None, *, exclusive: bool = False
    ) -> float | None:
        return self.number(key, minimum, maximum, exclusive=exclusive) if self.has(key) else None

    def string(
        self,
        key: str,
        pattern: re.Pattern[str] | None = None,
        max_length: int = 1 << 20,
        *,
        default: str | None = None,
    ) -> str:
        if default is not None and not self.has(key):
            return default
        value = self._required(key)
        if not isinstance(value, str) or not value:
            raise SpecError(self.at(key), f"must be a non-empty string, got {show(value)}")
        if len(value) > max_length:
            raise SpecError(self.at(key), f"must be at most {max_length} characters, got {len(value)}")
        if pattern is not None and not pattern.search(value):
            raise SpecError(self.at(key), f"must match {pattern.pattern}, got {value!r}")
        return value

    def optional_string(
        self, key: str, pattern: re.Pattern[str] | None = None, max_length: int = 1 << 20
    ) -> str | None:
        return self.string(key, pattern, max_length) if self.has(key) else None

    def strings(self, key: str, pattern: re.Pattern[str], max_items: int, max_length: int) -> tuple[str, ...]:
        """A list of distinct strings, each matching `pattern`; absent: none."""
        if not self.has(key):
            return ()
        value = self.raw[key]
        if not isinstance(value, list) or len(value) > max_items:
            raise SpecError(self.at(key), f"must be a list of at most {max_items} names, got {show(value)}")
        for index, item in enumerate(value):
            where = f"{self.at(key)}[{index}]"
            if not isinstance(item, str) or len(item) > max_length or not pattern.search(item):
                wanted = f"must be a name of at most {max_length} characters matching {pattern.pattern}"
                raise SpecError(where, f"{wanted}, got {show(item)}")
            if item in value[:index]:
                raise SpecError(where, f"names {item!r} twice: list each once")
        return tuple(value)

    def choice(self, key: str, choices: Sequence[_Choice], default: _Choice) -> _Choice:
        if not self.has(key):
            return default
        value = self.raw[key]
        for choice in choices:
            if value == choice:
                return choice
        raise SpecError(self.at(key), f"must be one of {', '.join(choices)}, got {show(value)}")

    def boolean(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        value = self.raw[key]
        if not isinstance(value, bool):
            raise SpecError(self.at(key), f"must be true or false, got {show(value)}")
        return value

    def duration(
        self,
        key: str,
        default: str,
        *,
        positive: bool = True,
        at_least: str | None = None,
        at_most: str | None = None,
    ) -> Duration:
        text = self.raw.get(key, default)
        example = "a positive duration such as 15s, 10m or 6h" if positive else "a duration such as 0s or 5m"
        if not isinstance(text, str):
            raise SpecError(self.at(key), f"must be {example} (a string), got {show(text)}")
        try:
            duration = parse_duration(text)
        except ValueError:
            raise SpecError(self.at(key), f"must be {example}, got {text!r}") from None
        if positive and duration.seconds <= 0:
            raise SpecError(self.at(key), f"must be {example}, got {text!r}")
        if at_least is not None and duration.seconds < parse_duration(at_least).seconds:
            raise SpecError(self.at(key), f"must be a duration of at least {at_least}, got {text!r}")
        if at_most is not None and duration.seconds > parse_duration(at_most).seconds:
            raise SpecError(self.at(key), f"must be a duration of at most {at_most}, got {text!r}")
        return duration

    def optional_duration(self, key: str) -> Duration | None:
        return self.duration(key, "") if self.has(key) else None

    def child(self, key: str, allowed: Sequence[str], *, required: bool = False) -> Fields | None:
        if not self.has(key):
            if required:
                raise SpecError(self.at(key), "is required")
            return None
        return Fields(self.raw[key], self.at(key), allowed)


def show(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def metric_mode(fields: Fields, objective: Objective) -> tuple[str, Mode]:
    """Every criterion's metric and mode default to spec.objective."""
    metric = fields.string("metric", METRIC, 128, default=objective.metric)
    return metric, fields.choice("mode", MODES, objective.mode)


def warmup_epochs(fields: Fields) -> int:
    return fields.integer("warmupEpochs", 0, MAX_EPOCHS, default=0)


def smoothing(fields: Fields) -> float | None:
    """EMA weight of the newest value in (0, 1]; 1 is the same as no smoothing."""
    weight = fields.optional_number("smoothing", 0, 1, exclusive=True)
    return None if weight == 1.0 else weight
