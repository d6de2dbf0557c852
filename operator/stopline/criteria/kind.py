"""One registration per kind of criterion: its key in spec.criteria[], its spec, its parser, its evaluator.

Each criterion module declares its Kind beside the code it names; `kinds.KINDS` lists them, and
stopline.api (parsing spec.criteria[]) and the engine (running them) iterate over that list, so a new
criterion touches its own module, its line in the registry's list and union, the CRD and the docs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from stopline.criteria.decision import JSONState, Outcome
from stopline.criteria.observation import Observation
from stopline.fields import Fields, Objective


class Named(Protocol):
    """What every parsed criterion has: the unique name status.criteria[] and stop reasons use."""

    @property
    def name(self) -> str: ...


C = TypeVar("C", bound=Named)


@dataclass(frozen=True)
class Kind(Generic[C]):
    """`key` is the criterion's field in the CRD (e.g. `patience`); `fields` those its object allows, in the
    order the error for an unknown one lists them; `parse` reads that object (its path is the kind's, the
    objective gives metric and mode their defaults); `evaluate` decides on one observation."""

    key: str
    spec: type[C]
    fields: tuple[str, ...]
    parse: Callable[[str, Fields, Objective], C]
    evaluate: Callable[[C, Observation, JSONState | None], Outcome]
    reads_prometheus: bool = False  # spec.metrics.prometheus.url is then required
