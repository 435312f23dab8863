"""Data-parallel training under ``torchrun`` / ``accelerate launch``: DDP over the trainable parameters only.

``train.batch_size`` stays the global batch: every rank draws the same index list (same seed) and takes its slice,
so N processes see the same examples per step as one. TeRA's shared factors are buffers generated from a seeded
PRNG: identical on every rank (checked once at start) and never all-reduced (``broadcast_buffers=False``).
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> torch.device | None:
    """Join the process group that torchrun describes in the environment; returns this rank's device, or None when
    the run is a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def shard(indices: list[int]) -> list[int]:
    """This rank's part of a global batch (strided, so sizes differ by at most one)."""
    return indices[rank() :: world_size()]


def wrap(model: nn.Module) -> nn.Module:
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, broadcast_buffers=False)


def sync_gradients(forward: nn.Module, sync: bool):
    """DDP all-reduces gradients on every backward unless told not to: skip it on the accumulation micro-steps."""
    if sync or not hasattr(forward, "no_sync"):
        return contextlib.nullcontext()
    return forward.no_sync()


def check_same_buffers(model: nn.Module, prefix: str = "tera_shared") -> None:
    """Raise if the shared frozen TeRA factors differ between ranks (they must come from the same seed)."""
    if world_size() == 1:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.zeros(1, dtype=torch.float64, device=device)
    for name, buffer in model.named_buffers():
        if prefix in name:
            total += buffer.detach().double().abs().sum().to(device) + buffer.numel()
    gathered = [torch.zeros_like(total) for _ in range(world_size())]
    dist.all_gather(gathered, total)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("The shared TeRA factors differ between ranks; use the same projection_prng_key everywhere.")
