"""Multi-process training with `torchrun` (DDP): process group set-up from torchrun's environment, rank-0 helpers.

`torchrun --nproc_per_node=N -m automedsam_training.cli train CONFIG` sets RANK, WORLD_SIZE and LOCAL_RANK; each
process then trains on its share of every batch (`DistributedSampler`), DDP averages the gradients, and only rank 0
writes logs, checkpoints and the exported model. The backend is NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """This process's rank among `world` processes (rank 0, world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True with more than one process."""
        return self.world > 1

    @classmethod
    def from_environment(cls, device_type: str) -> DistributedContext:
        """Join the process group torchrun describes in the environment (no-op for a single process)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
        return cls(rank, world, local_rank)

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: its own GPU (LOCAL_RANK) under DDP on CUDA."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        """Wait for every process (no-op for one process)."""
        if self.active:
            dist.barrier()

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """True if `flag` is true on any process."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def average(self, values: list[float], device: torch.device) -> list[float]:
        """The mean of `values` over all processes (element-wise)."""
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return (tensor / self.world).tolist()

    def broadcast(self, values: list[float], device: torch.device) -> list[float]:
        """Rank 0's `values` on every process."""
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def close(self) -> None:
        """Leave the process group."""
        if self.active and dist.is_initialized():
            dist.destroy_process_group()
