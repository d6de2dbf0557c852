"""Typed, defaulted views of a TrainingJob spec, validated like the CRD (crds/trainingjob.yaml) validates it.

The operator and `stopline replay` read specs only through `parse_spec`; every error names the field path
and says what to write instead. Each criterion parses its own object of spec.criteria[] (its Kind in
stopline.criteria.kinds); this module reads the rest. Pure: no kopf, no Kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from stopline.criteria.forecast import MAX_NEIGHBOURS, ForecastCriterion
from stopline.criteria.kinds import BY_KEY, BY_SPEC, KINDS, Criterion
from stopline.criteria.plateau import PlateauCriterion
from stopline.criteria.resume import DEFAULT_PROBABILITY as DEFAULT_RESUME_PROBABILITY
from stopline.criteria.resume import ResumeSettings, Unseen
from stopline.fields import MAX_EPOCHS as MAX_EPOCHS
from stopline.fields import METRIC, MODES, Duration, Fields, show
from stopline.fields import Mode as Mode
from stopline.fields import Objective as Objective
from stopline.fields import SpecError as SpecError
from stopline.fields import parse_duration as parse_duration
from stopline.fields import rfc3339 as rfc3339

CRITERION_KINDS = tuple(BY_KEY)
_PROMETHEUS_KINDS = "/".join(kind.key for kind in KINDS if kind.reads_prometheus)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_URL = re.compile(r"^https?://")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
GPU_RESOURCE = "nvidia.com/gpu"
MAX_PLATEAU_WINDOWS = 10_000  # summed over the criteria: status keeps every value of each window


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
    resume_policy: ResumeSettings | None = None  # spec.resumePolicy: the study may resume its sweep stops

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


def parse_spec(raw: object, path: str = "spec") -> TrainingJobSpec:
    """Validate and default a TrainingJob's spec (the dict under `spec:`); raises SpecError."""
    fields = Fields(
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
            "resumePolicy",
        ),
    )
    target, selector = _target(fields), _selector(fields)
    if target is not None and selector is not None:
        raise SpecError(fields.at("targetSelector"), "cannot be set with spec.targetRef: set one of them")
    if target is not None or selector is not None:
        for owned in _TARGET_OWNS:
            if fields.has(owned) and fields.raw.get(owned) not in _DEFAULTS.get(owned, ()):
                raise SpecError(fields.at(owned), _TARGET_OWNS[owned])
    replicas = fields.integer("replicas", 1, 1024, default=1)
    objective = _objective(fields)
    metrics = _metrics(fields.child("metrics", ("port", "path", "interval", "staleAfter", "prometheus")))
    criteria = _criteria(fields, objective)
    needs_prometheus = [c.name for c in criteria if BY_SPEC[type(c)].reads_prometheus]
    if needs_prometheus and metrics.prometheus_url is None:
        raise SpecError(
            f"{path}.metrics.prometheus.url",
            f"is required: criteria {', '.join(needs_prometheus)} ({_PROMETHEUS_KINDS}) read Prometheus; "
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
        resume_policy=_resume_policy(fields.child("resumePolicy", RESUME_FIELDS), objective, criteria),
    )


_TARGET_OWNS = {
    "template": "cannot be set with spec.targetRef or spec.targetSelector: set exactly one, the pod template "
    "stopline runs or the existing workloads it governs",
    "replicas": "cannot be set with spec.targetRef or spec.targetSelector: a target's own spec says how many "
    "pods it runs",
    "failurePolicy": "cannot be set with spec.targetRef or spec.targetSelector: a target's own failure "
    "policy restarts it",
    "resumePolicy": "cannot be set with spec.targetRef or spec.targetSelector yet: stopline resumes only a "
    "TrainingJob that runs its own Job (spec.template); resume the workloads with the tool that made them",
}
_DEFAULTS: dict[str, tuple[object, ...]] = {  # what the apiserver fills in for every TrainingJob
    "replicas": (1,),
    "failurePolicy": ({}, {"maxRestarts": 0}),
}
_API_VERSION = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?v[0-9]+((alpha|beta)[0-9]+)?$")
_KIND = re.compile(r"^[A-Z][A-Za-z0-9]{0,62}$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # an object's name (DNS-1123 subdomain)


def _target(spec: Fields) -> TargetRef | None:
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


def _selector(spec: Fields) -> TargetSelector | None:
    """spec.targetSelector: a kind and the labels its workloads of a sweep carry (at least one)."""
    fields = spec.child("targetSelector", ("apiVersion", "kind", "matchLabels"))
    if fields is None:
        return None
    labels = fields.raw.get("matchLabels")
    if not isinstance(labels, Mapping) or not labels or len(labels) > MAX_MATCH_LABELS:
        raise SpecError(
            fields.at("matchLabels"),
            f"must map 1 to {MAX_MATCH_LABELS} label keys to values (the labels every workload of the sweep "
            "carries), got " + show(labels),
        )
    pairs = []
    for key, value in labels.items():
        if not isinstance(key, str) or len(key) > 317 or not _LABEL_KEY.match(key):
            raise SpecError(fields.at("matchLabels"), f"{key!r} is not a label key")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise SpecError(fields.at(f"matchLabels.{key}"), f"must be a label value, got {show(value)}")
        pairs.append((key, value))
    return TargetSelector(
        api_version=fields.string("apiVersion", _API_VERSION, 253),
        kind=fields.string("kind", _KIND, 63),
        match_labels=tuple(sorted(pairs)),
    )


def _template(spec: Fields) -> Mapping[str, object]:
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


def _objective(spec: Fields) -> Objective:
    objective = spec.child("objective", ("metric", "mode"), required=True)
    assert objective is not None
    return Objective(objective.string("metric", METRIC, 128), objective.choice("mode", MODES, "min"))


def _metrics(fields: Fields | None) -> Metrics:
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


def _prometheus_url(prometheus: Fields) -> str:
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


def _criteria(spec: Fields, objective: Objective) -> tuple[Criterion, ...]:
    raw = spec.raw.get("criteria")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(spec.at("criteria"), f"must be a list of criteria, got {show(raw)}")
    if len(raw) > 32:
        raise SpecError(spec.at("criteria"), f"must have at most 32 criteria, got {len(raw)}")
    criteria: list[Criterion] = []
    for index, item in enumerate(raw):
        criterion = _criterion(
            Fields(item, f"{spec.at('criteria')}[{index}]", ("name", *CRITERION_KINDS)), objective
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


def _criterion(item: Fields, objective: Objective) -> Criterion:
    name = item.string("name", _NAME, 63)
    keys = [key for key in CRITERION_KINDS if key in item.raw]
    if len(keys) != 1:
        found = " and ".join(keys) if keys else "none"
        kinds_text = ", ".join(CRITERION_KINDS[:-1]) + f" or {CRITERION_KINDS[-1]}"
        raise SpecError(item.path, f"must set exactly one kind of {kinds_text}; found {found}")
    kind = BY_KEY[keys[0]]
    body = item.raw[kind.key] if item.raw[kind.key] is not None else {}
    criterion: Criterion = kind.parse(name, Fields(body, item.at(kind.key), kind.fields), objective)
    return criterion


def _checkpoint(spec: Fields) -> Checkpoint:
    fields = spec.child("checkpoint", ("pvc", "objectStore", "keepBest", "resume"), required=True)
    assert fields is not None
    if fields.has("pvc") == fields.has("objectStore"):
        raise SpecError(fields.path, "set exactly one checkpoint target: pvc or objectStore")
    target: PVCTarget | ObjectStoreTarget
    pvc = fields.child("pvc", ("claimName", "path"))
    if pvc is not None:
        path = pvc.raw.get("path", "")
        if not isinstance(path, str) or len(path) > 1024 or path.startswith("/") or ".." in path.split("/"):
            raise SpecError(pvc.at("path"), f"must be a relative path without '..', got {show(path)}")
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


def _stop_policy(fields: Fields | None) -> StopPolicy:
    if fields is None:
        return StopPolicy()
    return StopPolicy(
        grace_period=fields.duration("gracePeriod", "10m", at_most="24h"),
        ack_timeout=fields.duration("ackTimeout", "30s", at_most="1h"),
        dry_run=fields.boolean("dryRun", False),
    )


def _failure_policy(fields: Fields | None) -> FailurePolicy:
    if fields is None:
        return FailurePolicy()
    return FailurePolicy(max_restarts=fields.integer("maxRestarts", 0, MAX_RESTARTS, default=0))


RESUME_FIELDS = ("probability", "maxConcurrent", "unseen", "minJobs", "similarity", "neighbours")
UNSEEN: tuple[Unseen, ...] = ("evidence", "resume", "keep")


def _resume_policy(
    fields: Fields | None, objective: Objective, criteria: tuple[Criterion, ...]
) -> ResumeSettings | None:
    """spec.resumePolicy: the bound and K of the study's resume rule (stopline.criteria.resume). Its bound
    may not be below a forecast criterion's: a job resumed at a chance its forecast stops at would be
    stopped again at its next epoch."""
    if fields is None:
        return None
    probability = fields.number("probability", 0, 0.5, exclusive=True, default=DEFAULT_RESUME_PROBABILITY)
    for criterion in criteria:
        if isinstance(criterion, ForecastCriterion) and probability < criterion.probability:
            raise SpecError(
                fields.at("probability"),
                f"must be at least criterion {criterion.name}'s forecast probability "
                f"({criterion.probability:g}), else a resumed job is stopped again at its next epoch; got "
                f"{probability:g}: raise it, or lower the forecast's",
            )
    return ResumeSettings(
        mode=objective.mode,
        probability=probability,
        max_resumes=fields.integer("maxConcurrent", 1, 1024, default=1),
        similarity=fields.number("similarity", 0, 100, exclusive=True, default=2.0),
        neighbours=fields.integer("neighbours", 1, MAX_NEIGHBOURS, default=20),
        min_jobs=fields.integer("minJobs", 1, 10000, default=5),
        unseen=fields.choice("unseen", UNSEEN, "evidence"),
    )
