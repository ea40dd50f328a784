"""Data-parallel helpers: the same ``n3deploy train`` runs alone or under ``torchrun``.

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the process group is
initialised with NCCL on CUDA and gloo on CPU; each rank draws its own patches and
DistributedDataParallel averages the gradients. Only rank 0 writes files and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DistInfo", "setup_distributed", "teardown_distributed", "replicas_in_sync", "broadcast_flag"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by ``torchrun``; pick this rank's device.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun ``cuda`` means ``cuda:LOCAL_RANK``).

    Returns:
        ``(info, torch_device)``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), torch.device(device)
    import torch.distributed as dist

    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return info, dev


def teardown_distributed() -> None:
    """Destroy the process group if one is active."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's value of ``flag`` on every rank (e.g. 'stop now')."""
    if not info.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def replicas_in_sync(module: torch.nn.Module, info: DistInfo, device: torch.device) -> bool:
    """True when every rank holds bit-identical parameters (a cheap checksum all-gather)."""
    if not info.enabled:
        return True
    import torch.distributed as dist

    with torch.no_grad():
        sums = torch.stack(
            [torch.stack([p.double().sum(), p.double().abs().sum()]) for p in module.parameters()]
        ).to(device)
    gathered = [torch.empty_like(sums) for _ in range(info.world_size)]
    dist.all_gather(gathered, sums)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])
