"""Existing workloads a TrainingJob governs through spec.targetRef: one adapter per kind.

Each adapter says, for its kind, what kueue's GenericJob says: which objects stand between the workload and
its pods, which pod is which rank, whether it finished, and how it is suspended. What every kind shares
(reading a target in one go, its batch-Job-shaped summary for the lifecycle, filing its pods, suspending it)
lives in `base`. Adding a kind is one module here (with an ADAPTER), the CRD's enum and the docs.
"""

from __future__ import annotations

import importlib
import pkgutil

from stopline.api import TargetRef
from stopline.targets.base import Adapter, TargetRead, read, suspend

ADAPTERS: dict[tuple[str, str], Adapter] = {}
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        _adapter = importlib.import_module(f"{__name__}.{_module.name}").ADAPTER
        ADAPTERS[_adapter.api_version, _adapter.kind] = _adapter


def adapter_for(ref: TargetRef) -> Adapter | None:
    return ADAPTERS.get((ref.api_version, ref.kind))


def supported() -> str:
    """The kinds spec.targetRef may name, as a user writes them."""
    return ", ".join(f"{kind} ({api})" for api, kind in sorted(ADAPTERS, key=lambda pair: pair[1]))


__all__ = ["ADAPTERS", "Adapter", "TargetRead", "adapter_for", "read", "supported", "suspend"]
