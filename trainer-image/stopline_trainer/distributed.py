"""Agreement between ranks: a stop seen by any rank is seen by all of them at the same step.

torch is an extra: without it (or before anything imported torch.distributed) no process group can
exist, so this process is the only rank and nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .extras import require


def _initialized() -> bool:
    if "torch.distributed" not in sys.modules:  # nobody imported it: no group, and torch stays unloaded
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def active() -> bool:
    if not _initialized():
        return False
    import torch.distributed as dist

    return dist.get_world_size() > 1


def rank(default: int = 0) -> int:
    if not _initialized():
        return default
    import torch.distributed as dist

    return dist.get_rank()


def world_size(default: int = 1) -> int:
    if not _initialized():
        return default
    import torch.distributed as dist

    return dist.get_world_size()


def any_rank(flag: bool) -> bool:
    """All-reduce the flag with MAX; a collective, so every rank must call it at the same point.

    NCCL only reduces CUDA tensors, so the tensor sits on the current device there; gloo uses the CPU.
    """
    if not active():
        return flag
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def init_from_env() -> bool:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT when WORLD_SIZE > 1.

    Picks nccl when CUDA is there (binding this rank to a device first), gloo otherwise.
    Returns whether a group is active.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _initialized():
        return active()
    require("torch", "torch", "joining the ranks' process group (WORLD_SIZE > 1)")
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group("nccl", init_method="env://")
    else:
        dist.init_process_group("gloo", init_method="env://")
    return active()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's picklable `obj`, in rank order (a collective); [obj] in a single process."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def from_rank_0(obj: Any) -> Any:
    """Rank 0's picklable `obj` on every rank (a collective); `obj` itself in a single process."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
