"""torchrun support: which process this is, and the process group for pool-wide stages.

`torchrun --nproc_per_node=N -m influence_distillation select …` starts N copies. Every copy loads the data and the
model; the pool-wide stages (JVP embeddings, landmark / exact / LESS gradients, baseline forward passes) are cut into
fixed shards that the ranks share round-robin and write to a common stage folder; after a barrier rank 0 reads every
shard and does the rest (influence, propagation, selection, outputs) alone. gloo on CPU, nccl on CUDA when each rank
has a GPU of its own (more ranks than GPUs share the GPUs, over gloo). The single-process path is the same code with
rank 0 of 1. Multi-node runs use torchrun's usual rendezvous flags and need the run folder on a shared filesystem.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

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

    def shards(self, count: int) -> list[int]:
        """The shard indices this rank computes: every world_size-th, starting at its rank."""
        return list(range(self.rank, count, self.world_size))


def from_environment() -> DistInfo:
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def backend_for(local_world_size: int) -> str:
    """nccl when every rank on this machine has a GPU of its own (nccl refuses two ranks on one GPU), else gloo."""
    return "nccl" if torch.cuda.is_available() and local_world_size <= torch.cuda.device_count() else "gloo"


def initialize(info: DistInfo) -> None:
    """Join the process group torchrun set up, also with one rank (so a one-GPU machine exercises nccl); no-op for a
    process that torchrun did not start."""
    launched = info.world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
        backend = backend_for(int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size)))
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=6))


def barrier(info: DistInfo) -> None:
    if info.world_size > 1 and dist.is_initialized():
        dist.barrier()


def broadcast(info: DistInfo, value):
    """Rank 0's `value` on every rank (a decision that must not depend on floating-point agreement)."""
    if info.world_size > 1 and dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def finalize(info: DistInfo) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: DistInfo, requested: str) -> str:
    """With several ranks on CUDA, each rank uses its own GPU; more ranks than GPUs share them round-robin."""
    if requested == "auto" and torch.cuda.is_available() and info.world_size > 1:
        return f"cuda:{info.local_rank % torch.cuda.device_count()}"
    return requested


def backend_name() -> str | None:
    """The process group's backend, for the manifest (None for a single process)."""
    return dist.get_backend() if dist.is_initialized() else None
