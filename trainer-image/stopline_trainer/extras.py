"""The optional parts and the extra that brings each: `torch` (checkpoints, agreement across ranks),
`lightning` (the callback), `s3` (boto3), `hf` (the Hugging Face Trainer callback; safetensors).

The base install (prometheus-client only) imports without any of them, serves /metrics and /stop, takes
report() and answers should_stop() in a single process; a part that needs an extra says which to install
when it is used, not when stopline_trainer is imported.
"""

from __future__ import annotations

import importlib.util


class MissingExtra(ModuleNotFoundError):
    """A part of stopline_trainer was used without the extra that installs what it needs."""

    def __init__(self, extra: str, module: str, needed_for: str) -> None:
        super().__init__(
            f"{needed_for} needs {module}, which is not installed: pip install 'stopline-trainer[{extra}]'",
            name=module,
        )
        self.extra = extra


def require(extra: str, module: str, needed_for: str) -> None:
    """Raise MissingExtra unless `module` can be imported (cheap once it is: sys.modules answers)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing (module "lightning.pytorch", no lightning)
        found = False
    if not found:
        raise MissingExtra(extra, module, needed_for)
