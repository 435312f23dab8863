"""The frozen, shared random factors of TeRA: a core tensor and one factor matrix per mode.

They are regenerated from ``projection_prng_key`` on a CPU generator, one independent stream per tensor plan, so the
factors of a shape do not depend on which other shapes a model has.  A short checksum of the float32 values lets a
reload that regenerates different numbers (another PyTorch version, another key) fail loudly.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass

import torch

from .tensorize import TensorPlan


@dataclass
class SharedFactors:
    """``core`` has shape ``plan.ranks``; ``factors[n]`` has shape ``(plan.modes[n], plan.ranks[n])``."""

    core: torch.Tensor
    factors: list[torch.Tensor]


def _seed(prng_key: int, plan: TensorPlan) -> int:
    return (int(prng_key) * 1_000_003 + zlib.crc32(plan.key.encode())) % (2**63)


def generate_factors(plan: TensorPlan, prng_key: int) -> SharedFactors:
    """Draw the core and factor matrices of ``plan`` in float32 on the CPU.

    Scaling: core entries ~ N(0, 1/d_in) and factor entries ~ N(0, 1/R_n), so every entry of ``dW`` has variance
    ``1/d_in`` when all scaling vectors are one (Kaiming-like with gain 1), whatever the shape, ranks or order: a
    learning rate found on one shape carries over to another.
    """
    generator = torch.Generator(device="cpu").manual_seed(_seed(prng_key, plan))
    core = torch.randn(plan.ranks, generator=generator) / math.sqrt(plan.d_in)
    factors = [
        torch.randn((size, rank), generator=generator) / math.sqrt(rank) for size, rank in zip(plan.modes, plan.ranks)
    ]
    return SharedFactors(core=core, factors=factors)


def checksum(shared: SharedFactors) -> str:
    """A 16-hex-digit digest of the float32 values of the core and factors."""
    digest = hashlib.sha256()
    for tensor in (shared.core, *shared.factors):
        digest.update(tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
