"""Typed, defaulted views of a TrainingJob spec, validated like the CRD (crds/trainingjob.yaml) validates it.

The operator and `stopline replay` read specs only through `parse_spec`; every error names the field path
and says what to write instead. Pure: no kopf, no Kubernetes client.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar
from urllib.parse import urlsplit

Mode = Literal["min", "max"]
MODES: tuple[Mode, ...] = ("min", "max")
CRITERION_KINDS = (
    "patience",
    "threshold",
    "divergence",
    "plateau",
    "budget",
    "cohort",
    "rungs",
    "forecast",
    "gpuIdle",
    "promql",
)
_METRIC = re.compile(r"^[A-Za-z_][A-Za-z0-9_:./-]*$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_URL = re.compile(r"^https?://")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
GPU_RESOURCE = "nvidia.com/gpu"
# Bounds the CRD sets too: finite, generous; epochs also bound `stopline replay`'s curves.
MAX_EPOCHS = 1_000_000
MAX_PLATEAU_WINDOWS = 10_000  # summed over the criteria: status keeps every value of each window
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


def rfc3339(seconds: float) -> str:
    """A time as the status writes it: RFC 3339 in UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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


@dataclass(frozen=True)
class PatienceCriterion:
    """Keras/Lightning EarlyStopping: stop after `patience` evaluations without an improvement > min_delta."""

    name: str
    metric: str
    mode: Mode
    patience: int = 3
    min_delta: float = 0.0
    min_delta_mode: Literal["absolute", "relative"] = "absolute"
    warmup_epochs: int = 0
    smoothing: float | None = None


@dataclass(frozen=True)
class ThresholdCriterion:
    """Lightning stopping_threshold: stop once the metric is strictly better than `value`."""

    name: str
    metric: str
    mode: Mode
    value: float
    warmup_epochs: int = 0
    smoothing: float | None = None


@dataclass(frozen=True)
class DivergenceCriterion:
    """Lightning divergence_threshold and check_finite: strictly worse than `value`, or NaN/Inf."""

    name: str
    metric: str
    mode: Mode
    value: float | None = None
    non_finite: bool = True
    warmup_epochs: int = 0


@dataclass(frozen=True)
class PlateauCriterion:
    """Converged: the relative change over the last `window` evaluations is below max_relative_change."""

    name: str
    metric: str
    mode: Mode
    max_relative_change: float
    window: int = 5
    warmup_epochs: int = 0
    smoothing: float | None = None


@dataclass(frozen=True)
class BudgetCriterion:
    """Stop when any limit is reached: wall-clock since the trainer started, GPU-hours, epochs."""

    name: str
    max_duration: Duration | None = None
    max_gpu_hours: float | None = None
    max_epochs: int | None = None


@dataclass(frozen=True)
class CohortCriterion:
    """Median stopping rule (Vizier/SageMaker) over the other jobs of the study."""

    name: str
    metric: str
    mode: Mode
    study: str | None = None
    percentile: float = 50.0
    min_jobs: int = 5
    warmup_epochs: int = 0
    compare: Literal["best", "current"] = "best"
    reference: Literal["runningAverage", "value"] = "runningAverage"
    include_stopped: bool = True


@dataclass(frozen=True)
class RungsCriterion:
    """Asynchronous successive halving in stop mode (Ray Tune's ASHAScheduler, Optuna's
    SuccessiveHalvingPruner): at rung epochs r, r*eta, r*eta^2, ... a job goes on only in the best 1/eta
    of the study's jobs that reached the rung."""

    name: str
    metric: str
    mode: Mode
    study: str | None = None
    min_epochs: int = 1
    reduction_factor: int = 3
    min_jobs: int = 5
    compare: Literal["best", "current"] = "best"
    cut: Literal["quantile", "rank"] = "quantile"
    include_stopped: bool = True


ForecastReference = Literal["best", "percentile", "target"]


@dataclass(frozen=True)
class ForecastCriterion:
    """Learning-curve forecast: the job's final value predicted from how the study's finished jobs whose
    curves were like its own went on; stop when P(final beats the reference) < probability."""

    name: str
    metric: str
    mode: Mode
    study: str | None = None
    probability: float = 0.01
    reference: ForecastReference = "best"
    percentile: float = 10.0
    target: float | None = None
    similarity: float = 2.0
    neighbours: int = 20
    min_jobs: int = 5
    warmup_epochs: int = 0


@dataclass(frozen=True)
class GPUIdleCriterion:
    """GPU utilisation below the bound for `for_`, while the step did not advance."""

    name: str
    utilization_below: float = 5.0
    for_: Duration = Duration("15m", 900.0)


@dataclass(frozen=True)
class PromQLCriterion:
    """A PromQL query that kept returning a non-empty result for `for_`."""

    name: str
    query: str
    for_: Duration = Duration("0s", 0.0)


Criterion = (
    PatienceCriterion
    | ThresholdCriterion
    | DivergenceCriterion
    | PlateauCriterion
    | BudgetCriterion
    | CohortCriterion
    | RungsCriterion
    | ForecastCriterion
    | GPUIdleCriterion
    | PromQLCriterion
)


@dataclass(frozen=True)
class Metrics:
    port: int = 8000
    path: str = "/metrics"
    interval: Duration = Duration("15s", 15.0)
    stale_after: Duration = Duration("15m", 900.0)
    prometheus_url: str | None = None


@dataclass(frozen=True)
class PVCTarget:
    claim_name: str
    path: str = ""


@dataclass(frozen=True)
class ObjectStoreTarget:
    uri: str
    endpoint: str | None = None
    region: str | None = None
    credentials_secret: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    target: PVCTarget | ObjectStoreTarget
    keep_best: bool = False
    resume: bool = True


@dataclass(frozen=True)
class StopPolicy:
    grace_period: Duration = Duration("10m", 600.0)
    ack_timeout: Duration = Duration("30s", 30.0)
    dry_run: bool = False


MAX_RESTARTS = 100


@dataclass(frozen=True)
class FailurePolicy:
    """A rank that fails restarts the whole job from its last checkpoint, at most max_restarts times."""

    max_restarts: int = 0


@dataclass(frozen=True)
class TargetRef:
    """An existing workload in the TrainingJob's namespace that stopline governs instead of making a Job:
    its kind decides the adapter (stopline.targets) that reads, suspends and finds its trainer pods."""

    api_version: str
    kind: str
    name: str

    def describe(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class TargetSelector:
    """Every workload of a kind in the namespace whose labels match: a sweep an HPO tool makes. Each gets a
    TrainingJob of its own (a member, with this spec and a targetRef), judged in one cohort."""

    api_version: str
    kind: str
    match_labels: tuple[tuple[str, str], ...]

    @property
    def label_selector(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.match_labels)

    def describe(self) -> str:
        return f"{self.kind}s labelled {self.label_selector}"


@dataclass(frozen=True)
class TrainingJobSpec:
    objective: Objective
    checkpoint: Checkpoint
    template: Mapping[str, object] | None = None  # exactly one of template, target and selector
    target: TargetRef | None = None
    selector: TargetSelector | None = None
    replicas: int = 1
    max_epochs: int | None = None
    metrics: Metrics = Metrics()
    criteria: tuple[Criterion, ...] = ()
    stop_policy: StopPolicy = StopPolicy()
    failure_policy: FailurePolicy = FailurePolicy()

    @property
    def gpus(self) -> int:
        """GPUs the job holds: replicas x the nvidia.com/gpu limits of the pod's containers (at least 1)."""
        containers = _mapping(_mapping(self.template).get("spec")).get("containers")
        per_pod = 0
        for container in containers if isinstance(containers, list) else []:
            limits = _mapping(_mapping(_mapping(container).get("resources")).get("limits"))
            count = limits.get(GPU_RESOURCE, 0)
            per_pod += int(count) if isinstance(count, int | str) and _GPU_COUNT.fullmatch(str(count)) else 0
        return self.replicas * max(per_pod, 1)

    @property
    def watched_metrics(self) -> frozenset[str]:
        """The objective's metric and every metric a criterion watches: the metrics this spec reads."""
        watched = (getattr(criterion, "metric", None) for criterion in self.criteria)
        return frozenset({self.objective.metric, *(name for name in watched if isinstance(name, str))})


_GPU_COUNT = re.compile(r"[0-9]{1,6}")  # ASCII digits only: str.isdigit() takes "²", which int() refuses


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


class _Fields:
    """Reads one object of the spec: typed getters that check the CRD's rules and name the field path."""

    def __init__(self, raw: object, path: str, allowed: Sequence[str]) -> None:
        if not isinstance(raw, Mapping):
            raise SpecError(path, f"must be an object (a YAML mapping), got {_show(raw)}")
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
            raise SpecError(self.at(key), f"must be an integer {bounds}, got {_show(value)}")
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
            raise SpecError(self.at(key), f"{wanted}, got {_show(value)}")
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
            raise SpecError(self.at(key), f"must be a non-empty string, got {_show(value)}")
        if len(value) > max_length:
            raise SpecError(self.at(key), f"must be at most {max_length} characters, got {len(value)}")
        if pattern is not None and not pattern.search(value):
            raise SpecError(self.at(key), f"must match {pattern.pattern}, got {value!r}")
        return value

    def optional_string(
        self, key: str, pattern: re.Pattern[str] | None = None, max_length: int = 1 << 20
    ) -> str | None:
        return self.string(key, pattern, max_length) if self.has(key) else None

    def choice(self, key: str, choices: Sequence[_Choice], default: _Choice) -> _Choice:
        if not self.has(key):
            return default
        value = self.raw[key]
        for choice in choices:
            if value == choice:
                return choice
        raise SpecError(self.at(key), f"must be one of {', '.join(choices)}, got {_show(value)}")

    def boolean(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        value = self.raw[key]
        if not isinstance(value, bool):
            raise SpecError(self.at(key), f"must be true or false, got {_show(value)}")
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
            raise SpecError(self.at(key), f"must be {example} (a string), got {_show(text)}")
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

    def child(self, key: str, allowed: Sequence[str], *, required: bool = False) -> _Fields | None:
        if not self.has(key):
            if required:
                raise SpecError(self.at(key), "is required")
            return None
        return _Fields(self.raw[key], self.at(key), allowed)


def _show(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def parse_spec(raw: object, path: str = "spec") -> TrainingJobSpec:
    """Validate and default a TrainingJob's spec (the dict under `spec:`); raises SpecError."""
    fields = _Fields(
        raw,
        path,
        (
            "replicas",
            "maxEpochs",
            "template",
            "targetRef",
            "targetSelector",
            "objective",
            "metrics",
            "criteria",
            "checkpoint",
            "stopPolicy",
            "failurePolicy",
        ),
    )
    target, selector = _target(fields), _selector(fields)
    if target is not None and selector is not None:
        raise SpecError(fields.at("targetSelector"), "cannot be set with spec.targetRef: set one of them")
    if target is not None or selector is not None:
        for owned in ("template", "replicas", "failurePolicy"):
            if fields.has(owned) and fields.raw.get(owned) not in _DEFAULTS.get(owned, ()):
                raise SpecError(fields.at(owned), _TARGET_OWNS[owned])
    replicas = fields.integer("replicas", 1, 1024, default=1)
    objective = _objective(fields)
    metrics = _metrics(fields.child("metrics", ("port", "path", "interval", "staleAfter", "prometheus")))
    criteria = _criteria(fields, objective)
    needs_prometheus = [c.name for c in criteria if isinstance(c, GPUIdleCriterion | PromQLCriterion)]
    if needs_prometheus and metrics.prometheus_url is None:
        raise SpecError(
            f"{path}.metrics.prometheus.url",
            f"is required: criteria {', '.join(needs_prometheus)} (gpuIdle/promql) read Prometheus; "
            "set spec.metrics.prometheus.url",
        )
    return TrainingJobSpec(
        template=_template(fields) if target is None and selector is None else None,
        target=target,
        selector=selector,
        objective=objective,
        checkpoint=_checkpoint(fields),
        replicas=replicas,
        max_epochs=fields.optional_integer("maxEpochs", 1, MAX_EPOCHS),
        metrics=metrics,
        criteria=criteria,
        stop_policy=_stop_policy(fields.child("stopPolicy", ("gracePeriod", "ackTimeout", "dryRun"))),
        failure_policy=_failure_policy(fields.child("failurePolicy", ("maxRestarts",))),
    )


_TARGET_OWNS = {
    "template": "cannot be set with spec.targetRef or spec.targetSelector: set exactly one, the pod template "
    "stopline runs or the existing workloads it governs",
    "replicas": "cannot be set with spec.targetRef or spec.targetSelector: a target's own spec says how many "
    "pods it runs",
    "failurePolicy": "cannot be set with spec.targetRef or spec.targetSelector: a target's own failure "
    "policy restarts it",
}
_DEFAULTS: dict[str, tuple[object, ...]] = {  # what the apiserver fills in for every TrainingJob
    "replicas": (1,),
    "failurePolicy": ({}, {"maxRestarts": 0}),
}
_API_VERSION = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+((alpha|beta)[0-9]+)?$")
_KIND = re.compile(r"^[A-Z][A-Za-z0-9]{0,62}$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # an object's name (DNS-1123 subdomain)


def _target(spec: _Fields) -> TargetRef | None:
    """spec.targetRef: an existing workload of this namespace, by apiVersion, kind and name."""
    ref = spec.child("targetRef", ("apiVersion", "kind", "name"))
    if ref is None:
        return None
    return TargetRef(
        api_version=ref.string("apiVersion", _API_VERSION, 253),
        kind=ref.string("kind", _KIND, 63),
        name=ref.string("name", _SUBDOMAIN, 253),
    )


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
MAX_MATCH_LABELS = 16


def _selector(spec: _Fields) -> TargetSelector | None:
    """spec.targetSelector: a kind and the labels its workloads of a sweep carry (at least one)."""
    fields = spec.child("targetSelector", ("apiVersion", "kind", "matchLabels"))
    if fields is None:
        return None
    labels = fields.raw.get("matchLabels")
    if not isinstance(labels, Mapping) or not labels or len(labels) > MAX_MATCH_LABELS:
        raise SpecError(
            fields.at("matchLabels"),
            f"must map 1 to {MAX_MATCH_LABELS} label keys to values (the labels every workload of the sweep "
            "carries), got " + _show(labels),
        )
    pairs = []
    for key, value in labels.items():
        if not isinstance(key, str) or len(key) > 317 or not _LABEL_KEY.match(key):
            raise SpecError(fields.at("matchLabels"), f"{key!r} is not a label key")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise SpecError(fields.at(f"matchLabels.{key}"), f"must be a label value, got {_show(value)}")
        pairs.append((key, value))
    return TargetSelector(
        api_version=fields.string("apiVersion", _API_VERSION, 253),
        kind=fields.string("kind", _KIND, 63),
        match_labels=tuple(sorted(pairs)),
    )


def _template(spec: _Fields) -> Mapping[str, object]:
    if not spec.has("template"):
        raise SpecError(
            spec.at("template"),
            "is required: set spec.template (the trainer pod stopline runs), spec.targetRef (an existing "
            "workload it governs) or spec.targetSelector (every workload of a sweep)",
        )
    template = spec.child("template", ("metadata", "spec"), required=True)
    assert template is not None
    pod_spec = template.raw.get("spec")
    if not isinstance(pod_spec, Mapping):
        raise SpecError(template.at("spec"), "is required: the trainer pod spec (a core/v1 PodSpec)")
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise SpecError(template.at("spec.containers"), "must list at least one container")
    for index, container in enumerate(containers):
        if (
            not isinstance(container, Mapping)
            or not isinstance(container.get("name"), str)
            or not container["name"]
        ):
            raise SpecError(template.at(f"spec.containers[{index}].name"), "is required (a non-empty string)")
    return template.raw


def _objective(spec: _Fields) -> Objective:
    objective = spec.child("objective", ("metric", "mode"), required=True)
    assert objective is not None
    return Objective(objective.string("metric", _METRIC, 128), objective.choice("mode", MODES, "min"))


def _metrics(fields: _Fields | None) -> Metrics:
    if fields is None:
        return Metrics()
    prometheus = fields.child("prometheus", ("url",))
    return Metrics(
        port=fields.integer("port", 1, 65535, default=8000),
        path=fields.string("path", re.compile("^/"), 1024, default="/metrics"),
        interval=fields.duration("interval", "15s", at_least="1s"),
        stale_after=fields.duration("staleAfter", "15m", at_most="168h"),
        prometheus_url=_prometheus_url(prometheus) if prometheus is not None else None,
    )


def _prometheus_url(prometheus: _Fields) -> str:
    """The operator GETs <url>/api/v1/query from inside the cluster, for whoever wrote the spec: only a
    plain server address is taken, so the spec cannot choose the request's path, query or credentials."""
    text = prometheus.string("url", _URL, 2048)
    problem = _server_address_problem(text)
    if problem is not None:
        raise SpecError(prometheus.at("url"), f"{problem}, got {text!r}")
    return text


def _server_address_problem(text: str) -> str | None:
    example = "such as http://prometheus.monitoring:9090 or https://example.org/prometheus"
    if any(c.isspace() or not c.isprintable() or c == "\\" for c in text):
        return "must not contain spaces, control characters or backslashes"
    try:
        parts = urlsplit(text)
        addressed = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # the port is not a number within 0..65535, or the brackets of an IPv6 host are open
        addressed = False
    if not addressed:
        return f"must be an http:// or https:// address with a host and a valid port, {example}"
    if "@" in parts.netloc:
        return "must not carry a user or password: the operator sends no credentials to Prometheus"
    if "?" in text:
        return "must have no query ('?'): the operator appends /api/v1/query to the path and sets the query"
    if "#" in text:
        return "must have no fragment ('#')"
    return None


def _criteria(spec: _Fields, objective: Objective) -> tuple[Criterion, ...]:
    raw = spec.raw.get("criteria")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(spec.at("criteria"), f"must be a list of criteria, got {_show(raw)}")
    if len(raw) > 32:
        raise SpecError(spec.at("criteria"), f"must have at most 32 criteria, got {len(raw)}")
    criteria: list[Criterion] = []
    for index, item in enumerate(raw):
        criterion = _criterion(
            _Fields(item, f"{spec.at('criteria')}[{index}]", ("name", *CRITERION_KINDS)), objective
        )
        for earlier_index, earlier in enumerate(criteria):
            if earlier.name == criterion.name:
                raise SpecError(
                    f"{spec.at('criteria')}[{index}].name",
                    f"{criterion.name!r} is already the name of criteria[{earlier_index}]; "
                    "names must be unique",
                )
        criteria.append(criterion)
    windows = sum(c.window for c in criteria if isinstance(c, PlateauCriterion))
    if windows > MAX_PLATEAU_WINDOWS:
        raise SpecError(
            spec.at("criteria"),
            f"the plateau windows add up to {windows}; keep their sum at most {MAX_PLATEAU_WINDOWS} "
            "(status keeps every value of each window)",
        )
    return tuple(criteria)


def _criterion(item: _Fields, objective: Objective) -> Criterion:
    name = item.string("name", _NAME, 63)
    kinds = [kind for kind in CRITERION_KINDS if kind in item.raw]
    if len(kinds) != 1:
        found = " and ".join(kinds) if kinds else "none"
        kinds_text = ", ".join(CRITERION_KINDS[:-1]) + f" or {CRITERION_KINDS[-1]}"
        raise SpecError(item.path, f"must set exactly one kind of {kinds_text}; found {found}")
    kind = kinds[0]
    body = item.raw[kind] if item.raw[kind] is not None else {}
    path = item.at(kind)
    if kind == "patience":
        fields = _Fields(
            body,
            path,
            ("metric", "mode", "patience", "minDelta", "minDeltaMode", "warmupEpochs", "smoothing"),
        )
        metric, mode = _metric_mode(fields, objective)
        return PatienceCriterion(
            name,
            metric,
            mode,
            patience=fields.integer("patience", 1, 100000, default=3),
            min_delta=fields.number("minDelta", 0, 1_000_000_000_000, default=0.0),
            min_delta_mode=fields.choice("minDeltaMode", ("absolute", "relative"), "absolute"),
            warmup_epochs=_warmup(fields),
            smoothing=_smoothing(fields),
        )
    if kind == "threshold":
        fields = _Fields(body, path, ("metric", "mode", "value", "warmupEpochs", "smoothing"))
        metric, mode = _metric_mode(fields, objective)
        return ThresholdCriterion(
            name,
            metric,
            mode,
            fields.number("value"),
            warmup_epochs=_warmup(fields),
            smoothing=_smoothing(fields),
        )
    if kind == "divergence":
        fields = _Fields(body, path, ("metric", "mode", "value", "nonFinite", "warmupEpochs"))
        metric, mode = _metric_mode(fields, objective)
        value = fields.optional_number("value")
        non_finite = fields.boolean("nonFinite", True)
        if value is None and not non_finite:
            raise SpecError(
                path, "set value, or keep nonFinite true; otherwise this criterion can never fire"
            )
        return DivergenceCriterion(name, metric, mode, value, non_finite, _warmup(fields))
    if kind == "plateau":
        fields = _Fields(
            body, path, ("metric", "mode", "window", "maxRelativeChange", "warmupEpochs", "smoothing")
        )
        metric, mode = _metric_mode(fields, objective)
        return PlateauCriterion(
            name,
            metric,
            mode,
            max_relative_change=fields.number("maxRelativeChange", 0, exclusive=True),
            window=fields.integer("window", 2, 10000, default=5),
            warmup_epochs=_warmup(fields),
            smoothing=_smoothing(fields),
        )
    if kind == "budget":
        fields = _Fields(body, path, ("maxDuration", "maxGPUHours", "maxEpochs"))
        if not any(fields.has(key) for key in ("maxDuration", "maxGPUHours", "maxEpochs")):
            raise SpecError(path, "set at least one of maxDuration, maxGPUHours, maxEpochs")
        return BudgetCriterion(
            name,
            max_duration=fields.optional_duration("maxDuration"),
            max_gpu_hours=fields.optional_number("maxGPUHours", 0, 100_000_000, exclusive=True),
            max_epochs=fields.optional_integer("maxEpochs", 1, MAX_EPOCHS),
        )
    if kind == "cohort":
        allowed = (
            "metric",
            "mode",
            "study",
            "percentile",
            "minJobs",
            "warmupEpochs",
            "compare",
            "reference",
            "includeStopped",
        )
        fields = _Fields(body, path, allowed)
        metric, mode = _metric_mode(fields, objective)
        return CohortCriterion(
            name,
            metric,
            mode,
            study=fields.optional_string("study", max_length=63),
            percentile=fields.number("percentile", 0, 100, default=50.0),
            min_jobs=fields.integer("minJobs", 1, 10000, default=5),
            warmup_epochs=_warmup(fields),
            compare=fields.choice("compare", ("best", "current"), "best"),
            reference=fields.choice("reference", ("runningAverage", "value"), "runningAverage"),
            include_stopped=fields.boolean("includeStopped", True),
        )
    if kind == "rungs":
        return _rungs(name, _Fields(body, path, RUNGS_FIELDS), objective)
    if kind == "forecast":
        return _forecast(name, _Fields(body, path, FORECAST_FIELDS), objective)
    if kind == "gpuIdle":
        fields = _Fields(body, path, ("utilizationBelow", "for"))
        below = fields.number("utilizationBelow", 0, 100, default=5.0)
        return GPUIdleCriterion(name, below, fields.duration("for", "15m"))
    fields = _Fields(body, path, ("query", "for"))
    return PromQLCriterion(
        name, fields.string("query", max_length=4096), fields.duration("for", "0s", positive=False)
    )


RUNGS_FIELDS = (
    "metric",
    "mode",
    "study",
    "minEpochs",
    "reductionFactor",
    "minJobs",
    "compare",
    "cut",
    "includeStopped",
)
FORECAST_FIELDS = (
    "metric",
    "mode",
    "study",
    "probability",
    "reference",
    "percentile",
    "target",
    "similarity",
    "neighbours",
    "minJobs",
    "warmupEpochs",
)
MAX_NEIGHBOURS = 1000


def _rungs(name: str, fields: _Fields, objective: Objective) -> RungsCriterion:
    metric, mode = _metric_mode(fields, objective)
    return RungsCriterion(
        name,
        metric,
        mode,
        study=fields.optional_string("study", max_length=63),
        min_epochs=fields.integer("minEpochs", 1, MAX_EPOCHS, default=1),
        reduction_factor=fields.integer("reductionFactor", 2, 100, default=3),
        min_jobs=fields.integer("minJobs", 1, 10000, default=5),
        compare=fields.choice("compare", ("best", "current"), "best"),
        cut=fields.choice("cut", ("quantile", "rank"), "quantile"),
        include_stopped=fields.boolean("includeStopped", True),
    )


def _forecast(name: str, fields: _Fields, objective: Objective) -> ForecastCriterion:
    metric, mode = _metric_mode(fields, objective)
    references: tuple[ForecastReference, ...] = ("best", "percentile", "target")
    reference = fields.choice("reference", references, "best")
    target = fields.optional_number("target")
    if reference == "target" and target is None:
        raise SpecError(fields.at("target"), "is required with reference target: the value to beat")
    return ForecastCriterion(
        name,
        metric,
        mode,
        study=fields.optional_string("study", max_length=63),
        probability=fields.number("probability", 0, 0.5, exclusive=True, default=0.01),
        reference=reference,
        percentile=fields.number("percentile", 0, 100, default=10.0),
        target=target,
        similarity=fields.number("similarity", 0, 100, exclusive=True, default=2.0),
        neighbours=fields.integer("neighbours", 1, MAX_NEIGHBOURS, default=20),
        min_jobs=fields.integer("minJobs", 1, 10000, default=5),
        warmup_epochs=_warmup(fields),
    )


def _metric_mode(fields: _Fields, objective: Objective) -> tuple[str, Mode]:
    """Every criterion's metric and mode default to spec.objective."""
    metric = fields.string("metric", _METRIC, 128, default=objective.metric)
    return metric, fields.choice("mode", MODES, objective.mode)


def _warmup(fields: _Fields) -> int:
    return fields.integer("warmupEpochs", 0, MAX_EPOCHS, default=0)


def _smoothing(fields: _Fields) -> float | None:
    """EMA weight of the newest value in (0, 1]; 1 is the same as no smoothing."""
    weight = fields.optional_number("smoothing", 0, 1, exclusive=True)
    return None if weight == 1.0 else weight


def _checkpoint(spec: _Fields) -> Checkpoint:
    fields = spec.child("checkpoint", ("pvc", "objectStore", "keepBest", "resume"), required=True)
    assert fields is not None
    if fields.has("pvc") == fields.has("objectStore"):
        raise SpecError(fields.path, "set exactly one checkpoint target: pvc or objectStore")
    target: PVCTarget | ObjectStoreTarget
    pvc = fields.child("pvc", ("claimName", "path"))
    if pvc is not None:
        path = pvc.raw.get("path", "")
        if not isinstance(path, str) or len(path) > 1024 or path.startswith("/") or ".." in path.split("/"):
            raise SpecError(pvc.at("path"), f"must be a relative path without '..', got {_show(path)}")
        target = PVCTarget(pvc.string("claimName", max_length=253), path)
    else:
        store = fields.child("objectStore", ("uri", "endpoint", "region", "credentialsSecret"))
        assert store is not None
        target = ObjectStoreTarget(
            uri=store.string("uri", _S3_URI, 1024),
            endpoint=store.optional_string("endpoint", _URL, 2048),
            region=store.optional_string("region", max_length=64),
            credentials_secret=store.optional_string("credentialsSecret", max_length=253),
        )
    return Checkpoint(target, fields.boolean("keepBest", False), fields.boolean("resume", True))


def _stop_policy(fields: _Fields | None) -> StopPolicy:
    if fields is None:
        return StopPolicy()
    return StopPolicy(
        grace_period=fields.duration("gracePeriod", "10m", at_most="24h"),
        ack_timeout=fields.duration("ackTimeout", "30s", at_most="1h"),
        dry_run=fields.boolean("dryRun", False),
    )


def _failure_policy(fields: _Fields | None) -> FailurePolicy:
    if fields is None:
        return FailurePolicy()
    return FailurePolicy(max_restarts=fields.integer("maxRestarts", 0, MAX_RESTARTS, default=0))
