"""The trainer's settings, read once from the env the operator injects (DESIGN.md, "Trainer contract")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MIN_S3_PART_SIZE = 5 * 1024 * 1024  # S3 refuses smaller non-final parts
TOKEN_VARIABLE = "STOPLINE_CONTROL_TOKEN"

_taken_token = ""  # the token taken out of this process's environment by the first from_env()


class ConfigError(ValueError):
    """A variable of the environment contract has a value the trainer cannot use; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value}: must be >= {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


@dataclass(frozen=True)
class Config:
    """Everything the in-pod half needs; tests build one directly instead of patching os.environ."""

    job: str = ""
    namespace: str = ""
    metrics_port: int = 8000
    bind_address: str = "0.0.0.0"
    checkpoint_uri: str = ""
    control_token: str = field(default="", repr=False)  # a repr is printed and logged; the token never is
    rank: int = 0  # the global rank: torchrun's RANK for its workers, else the pod's
    world_size: int = 1
    local_rank: int = 0  # within the pod: torchrun's LOCAL_RANK; only local rank 0 serves the endpoint
    local_world_size: int = 1  # processes in this pod: torchrun's LOCAL_WORLD_SIZE
    node_rank: int | None = None  # torchrun's GROUP_RANK (its --node-rank); None without torchrun
    pod_index: int | None = None  # JOB_COMPLETION_INDEX, the rank label of the pod (an Indexed Job's)
    termination_log: Path = Path("/dev/termination-log")
    objective: str = "val_loss"
    objective_mode: Literal["min", "max"] = "min"
    keep_best: bool = False
    resume: bool = True  # spec.checkpoint.resume: false starts fresh whatever the folder holds
    resume_other_jobs: bool = False  # resume from a manifest another job or namespace wrote
    s3_part_size: int = 64 * 1024 * 1024

    @property
    def serves_endpoint(self) -> bool:
        """One endpoint per pod: the process of local rank 0 (the only process, without torchrun)."""
        return self.local_rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read `env`, by default the process environment, whose control token is then taken out of it."""
        token = _take_process_token() if env is None else env.get(TOKEN_VARIABLE, "")
        env = os.environ if env is None else env
        mode = env.get("STOPLINE_OBJECTIVE_MODE", "min").strip() or "min"
        if mode not in ("min", "max"):
            raise ConfigError(f"STOPLINE_OBJECTIVE_MODE={mode!r}: expected min or max")
        rank = _int(env, "RANK", 0)
        world_size = _int(env, "WORLD_SIZE", 1, minimum=1)
        if rank >= world_size:
            raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={world_size}")
        local_rank, local_world_size, node_rank = 0, 1, None  # one process per pod: RANK is the pod's
        if launched_by_torchrun(env):  # torchrun replaced RANK and WORLD_SIZE with its workers' own
            node_rank = _int(env, "GROUP_RANK", 0)
            local_rank = _int(env, "LOCAL_RANK", 0)
            local_world_size = _int(env, "LOCAL_WORLD_SIZE", 1, minimum=1)
            if local_rank >= local_world_size:
                raise ConfigError(f"LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world_size}")
        return cls(
            job=env.get("STOPLINE_JOB", ""),
            namespace=env.get("STOPLINE_NAMESPACE", ""),
            metrics_port=_int(env, "STOPLINE_METRICS_PORT", 8000),
            bind_address=env.get("STOPLINE_BIND_ADDRESS", "").strip() or "0.0.0.0",
            checkpoint_uri=env.get("STOPLINE_CHECKPOINT_URI", "").strip(),
            control_token=token,
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
            local_world_size=local_world_size,
            node_rank=node_rank,
            pod_index=_int(env, "JOB_COMPLETION_INDEX", 0) if env.get("JOB_COMPLETION_INDEX") else None,
            termination_log=Path(env.get("STOPLINE_TERMINATION_LOG", "") or "/dev/termination-log"),
            objective=env.get("STOPLINE_OBJECTIVE", "").strip() or "val_loss",
            objective_mode="max" if mode == "max" else "min",
            keep_best=_bool(env, "STOPLINE_KEEP_BEST", False),
            resume=_bool(env, "STOPLINE_RESUME", True),
            resume_other_jobs=_bool(env, "STOPLINE_RESUME_OTHER_JOBS", False),
            s3_part_size=_int(env, "STOPLINE_S3_PART_SIZE", 64 * 1024 * 1024, minimum=MIN_S3_PART_SIZE),
        )


def launched_by_torchrun(env: Mapping[str, str]) -> bool:
    """torchrun (torch.distributed.run) sets TORCHELASTIC_RUN_ID and LOCAL_RANK for each worker it starts."""
    return "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env


def _take_process_token() -> str:
    """Remove the token from os.environ, so child processes (DataLoader workers, trackers that record the
    environment) never inherit it; a later from_env() in this process still gets it."""
    global _taken_token
    token = os.environ.pop(TOKEN_VARIABLE, None)
    if token is not None:
        _taken_token = token
    return _taken_token
