"""The frozen, shared random factors of TeRA: a core tensor and one factor matrix per mode.

They are regenerated from ``projection_prng_key`` on a CPU generator, one independent stream per factor group (the
tensor plan when factors are shared, the plan and the layer's name when they are not), so the factors of one group do
not depend on which other groups a model has.  A short checksum of the float32 values, combined with the config
fields that say how the trained diagonals act on them (:func:`adapter_checksum`), lets a reload that would compute a
different update (another PyTorch version, another key, an edited placement or scaling) fail loudly.
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


def _seed(prng_key: int, stream: str) -> int:
    return (int(prng_key) * 1_000_003 + zlib.crc32(stream.encode())) % (2**63)


def _orthonormal_columns(gaussian: torch.Tensor) -> torch.Tensor:
    """Q of the QR decomposition of a tall Gaussian matrix, with signs fixed by diag(R) so Q is unique.

    Done in float64 and rounded to float32, so different LAPACK builds agree to the last bit in practice.  Returned
    row-major: LAPACK's Q is column-major, and a factor loaded from a file (``save_projection``, PEFT's
    ``low_cpu_mem_usage`` assigning tensors as read) is row-major, so a regenerated factor of another layout would
    take other matmul kernels and give an adapter whose outputs differ in the last bits from the one that was saved.
    """
    q, r = torch.linalg.qr(gaussian.to(torch.float64), mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return (q * signs).to(torch.float32).contiguous()


FACTOR_INITS = ("orthonormal", "identity")


def generate_factors(
    plan: TensorPlan, prng_key: int, stream: str | None = None, factor_init: str = "orthonormal"
) -> SharedFactors:
    """Draw the core and factor matrices of ``plan`` in float32 on the CPU.

    ``stream`` names the random stream (default ``plan.key``: every layer with this plan gets the same factors);
    TeRA without sharing passes a name per layer, so each layer draws its own.

    The core is Gaussian with entries ~ N(0, 1/d_in).  Each factor ``A_n`` (``I_n x R_n``, ``R_n <= I_n``) has
    orthonormal columns scaled by ``sqrt(I_n / R_n)``: entries still have variance ``1/R_n`` as a Gaussian factor
    would, but a Kronecker product of such factors is perfectly conditioned, so the spectrum of ``dW`` is that of the
    core and the trained diagonals, not shrunk by ill-conditioned random factors (products of Gaussian square
    matrices have tiny singular values and would lower the numerical rank).  Every entry of ``dW`` then has variance
    ``1/d_in`` when all diagonals are one (Kaiming-like with gain 1), whatever the shape, ranks or order, so a
    learning rate found on one shape carries over to another. The paper does not say how it draws ``G`` and the
    ``A_n``: this draw is the suite's choice.

    ``factor_init="identity"`` (the paper's Figure 6 ablation) makes every ``A_n`` the first ``R_n`` columns of the
    identity, scaled by ``sqrt(I_n / R_n)`` like the orthonormal ones; the core stays random.
    """
    if factor_init not in FACTOR_INITS:
        raise ValueError(f"factor_init must be one of {FACTOR_INITS}, got {factor_init!r}.")
    generator = torch.Generator(device="cpu").manual_seed(_seed(prng_key, plan.key if stream is None else stream))
    core = torch.randn(plan.ranks, generator=generator) / math.sqrt(plan.d_in)
    if factor_init == "identity":
        factors = [
            torch.eye(size)[:, :rank].contiguous() * math.sqrt(size / rank)
            for size, rank in zip(plan.modes, plan.ranks)
        ]
    else:
        factors = [
            _orthonormal_columns(torch.randn((size, rank), generator=generator)) * math.sqrt(size / rank)
            for size, rank in zip(plan.modes, plan.ranks)
        ]
    return SharedFactors(core=core, factors=factors)


def checksum(shared: SharedFactors) -> str:
    """A 16-hex-digit digest of the float32 values of the core and factors."""
    digest = hashlib.sha256()
    for tensor in (shared.core, *shared.factors):
        digest.update(tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def adapter_checksum(factor_digest: str, placement: str, scaling: float) -> str:
    """The checksum a TeRA config records per factor group: the factors' digest (:func:`checksum`) together with the
    diagonal placement and the scaling, the fields that change ``dW`` for the same trained values without changing
    any tensor shape (so a load with them edited would otherwise succeed and compute another model)."""
    digest = hashlib.sha256(f"{factor_digest}|{placement}|{float(scaling)!r}".encode())
    return digest.hexdigest()[:16]
