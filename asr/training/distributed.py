"""One process or many under ``torchrun`` (DDP): the process group, the training device, and agreement.

Every helper is a no-op for a single process, so the trainer calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close_distributed(dinfo: DistInfo) -> None:
    if dinfo.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def setup_device(device_name: str, dinfo: DistInfo, num_workers: int) -> torch.device:
    """This rank's device: its own GPU under ``torchrun``, or the CPU with the cores shared between ranks."""
    if device_name == "cuda":
        device = torch.device("cuda", dinfo.local_rank)
        torch.cuda.set_device(device)
        return device
    if "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between the ranks on this machine: oversubscribed OpenMP threads spin against
        # each other and made CPU steps tens of times slower in tests. Data workers mostly wait on a full
        # prefetch queue (under 5 % of a core each on speechocean762), so they get one core per two;
        # leaving a whole core to one worker made 2-core fine-tuning 1.3x slower.
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores = (os.cpu_count() or 1) // ranks_here
        threads = max(1, cores - num_workers // 2)
        torch.set_num_threads(min(torch.get_num_threads(), threads))
    return torch.device(device_name)


def agree(flag: bool, dinfo: DistInfo) -> bool:
    """True on every rank when any rank says so (ranks must stop on the same step)."""
    if dinfo.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_from_main(obj: Any, dinfo: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (each rank passes its own; only rank 0's is kept)."""
    box = [obj]
    if dinfo.world_size > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dinfo: DistInfo) -> None:
    if dinfo.world_size > 1:
        dist.barrier()
