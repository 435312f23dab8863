"""Data-parallel training under ``torchrun`` / ``accelerate launch``: DDP over the trainable parameters only.

``train.batch_size`` stays the global batch: every rank draws the same index list (same seed) and takes its slice,
so N processes see the same examples per step as one. TeRA's shared factors (and VeRA's and RandLoRA's projections)
are buffers generated from a seeded PRNG: identical on every rank (checked once at start) and never all-reduced
(``broadcast_buffers=False``).
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


def check_same_buffers(model: nn.Module) -> None:
    """Raise if any shared frozen random tensor (every PEFT ``BufferDict``: TeRA's factors, VeRA's and RandLoRA's
    projections) differs between ranks; they must come from the same seed."""
    if world_size() == 1:
        return
    from baselines.analysis import shared_buffers

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buffers = shared_buffers(model)
    # One fingerprint per buffer (signed sum, absolute sum, size), so the error can name the buffers that differ.
    local = torch.zeros(len(buffers), 3, dtype=torch.float64, device=device)
    for row, buffer in enumerate(buffers.values()):
        values = buffer.detach().double()
        local[row] = torch.stack([values.sum(), values.abs().sum(), values.new_tensor(float(values.numel()))]).to(
            device
        )
    gathered = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    differ = [
        name for row, name in enumerate(buffers) if any(not torch.equal(g[row], gathered[0][row]) for g in gathered)
    ]
    if differ:
        raise RuntimeError(
            f"The shared frozen adapter buffers {differ} differ between ranks; use the same projection_prng_key "
            f"everywhere."
        )
