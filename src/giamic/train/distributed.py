"""Several processes through ``torch.distributed`` (DistributedDataParallel), not a home-made
launcher (docs/reproducing.md, "Several GPUs or machines").

Launch with torchrun, which sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``::

    torchrun --nproc_per_node 4 -m giamic cv DATA_DIR --out runs/full

How the work is divided (``giamic.train.recipe.TrainingRecipe``):

* every process runs the same (variant, seed, fold) units in the same order;
* each global batch of ``train.batch_size`` utterances is cut into ``world_size`` contiguous shards,
  and each process scales its loss by ``n_local * world_size / n_global`` so that DDP's gradient
  *average* equals the gradient of the global batch mean, exactly as in one process (also for the
  short last batch of an epoch);
* evaluation is sharded the same way and the logits are gathered, so every process takes the same
  early-stopping decision;
* only rank 0 writes files (checkpoints, logs, model directories, reports); the output directory
  must be on a file system every process sees (resume reads it back on every rank).
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
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group torchrun (or a test's spawn) described in the environment; a plain
    single-process run returns ``DistInfo()`` with the chosen device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local)
    if world > 1:
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=device)
    return DistInfo(device=device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled by torch.distributed over the process group,
    between our own processes only; nothing from disk)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: list, info: DistInfo) -> list:
    """This rank's contiguous share of ``items`` (sizes differ by at most one)."""
    n, w, r = len(items), info.world_size, info.rank
    start = r * n // w
    return items[start:(r + 1) * n // w]


def cleanup() -> None:
    """Leave the process group (torchrun runs), so every process exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
