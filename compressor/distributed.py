"""torchrun support: one process per rank, DistributedDataParallel for the fine-tuning passes.

``compress`` started by ``torchrun --nproc_per_node=N`` initialises the process group from the
environment (gloo on CPU, nccl on CUDA). Every rank runs the same recipe on its slice of each
global batch; DDP averages the gradients, so all ranks hold the same weights and compute the
same masks (masks are broadcast from rank 0 after each update to rule out any drift). Only
rank 0 writes checkpoints and artifacts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_from_env", "current", "broadcast_tensors"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistInfo:
    """Join the torchrun process group if this process was started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def current() -> DistInfo:
    """The process group this process is in (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def broadcast_tensors(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (bool via uint8)."""
    if not current().enabled:
        return
    for t in tensors:
        buf = t.to(torch.uint8) if t.dtype == torch.bool else t
        dist.broadcast(buf, src)
        if buf is not t:
            t.copy_(buf.to(t.dtype))
