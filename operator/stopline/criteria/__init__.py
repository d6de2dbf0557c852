"""The decision engine: pure evaluators of the stop criteria (no I/O, no kopf, time is an argument).

The operator calls only `evaluate(spec, states, observation)`; it returns the new per-criterion states
(status.criteria[]) and the decision, if any (status.stopReason).
"""

from stopline.criteria.decision import REASON_TYPES, Decision, ReasonType
from stopline.criteria.engine import Evaluation, evaluate
from stopline.criteria.observation import CohortCurve, Observation, Request, Samples

__all__ = [
    "REASON_TYPES",
    "CohortCurve",
    "Decision",
    "Evaluation",
    "Observation",
    "ReasonType",
    "Request",
    "Samples",
    "evaluate",
]
