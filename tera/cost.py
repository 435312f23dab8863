"""Choose, per layer and call, between the factorised and the merged-weight path.

A rough roofline: each matmul costs ``max(flops / peak_flops, bytes / bandwidth)``.  The mode products of the
materialisation chain have a small inner dimension and are memory-bound, the core step and ``g^T x`` are
compute-bound; the roofline captures exactly that trade-off.  Only the *extra* cost over the frozen base layer is
compared (both paths pay for ``x W^T`` and for the input gradient once).  ``forward_path="auto"`` times both paths on
first use instead (:mod:`tera.autotune`) and falls back to this model only where timing is impossible; set
``forward_path`` in the config to force a path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tensorize import TensorPlan

FACTORISED = "factorised"
MERGED = "merged"


@dataclass(frozen=True)
class DeviceSpeed:
    flops_per_s: float
    bytes_per_s: float


# Order-of-magnitude figures: an H100/H200 in bf16, and a small multi-core CPU in float32.  Only their ratio
# (arithmetic intensity at which a matmul stops being memory-bound) really steers the choice.
DEVICE_SPEEDS = {
    "cuda": DeviceSpeed(flops_per_s=600e12, bytes_per_s=3.0e12),
    "cpu": DeviceSpeed(flops_per_s=100e9, bytes_per_s=15e9),
}


def _matmul(m: int, k: int, n: int, elem: int, speed: DeviceSpeed, batch: int = 1) -> float:
    """``batch`` products of ``(m x k) @ (k x n)`` sharing the left matrix (a mode product), as one call."""
    flops = 2.0 * batch * m * k * n
    moved = elem * (m * k + batch * (k * n + m * n))
    return max(flops / speed.flops_per_s, moved / speed.bytes_per_s)


def _chain(plan: TensorPlan, elem: int, speed: DeviceSpeed) -> float:
    """One pass of the materialisation chain (core -> d_out x d_in)."""
    shape = list(plan.ranks)
    total = 0.0
    for mode, size in enumerate(plan.modes):
        lead, trail = math.prod(shape[:mode]), math.prod(shape[mode + 1 :])
        total += _matmul(size, shape[mode], trail, elem, speed, batch=lead)
        shape[mode] = size
    return total


def _factor_steps(plan: TensorPlan, tokens: int, elem: int, speed: DeviceSpeed) -> float:
    """The input-factor and output-factor mode products of the factorised path, forward only."""
    total = 0.0
    shape = [tokens, *plan.in_modes]
    for q, rank in enumerate(plan.in_ranks):
        lead, trail = math.prod(shape[: 1 + q]), math.prod(shape[2 + q :])
        total += _matmul(rank, shape[1 + q], trail, elem, speed, batch=lead)
        shape[1 + q] = rank
    shape = [tokens, *plan.out_ranks]
    for o, size in enumerate(plan.out_modes):
        lead, trail = math.prod(shape[: 1 + o]), math.prod(shape[2 + o :])
        total += _matmul(size, shape[1 + o], trail, elem, speed, batch=lead)
        shape[1 + o] = size
    return total


def path_costs(plan: TensorPlan, tokens: int, training: bool, device_type: str, elem_bytes: int) -> dict[str, float]:
    """Estimated extra seconds of each path over the frozen base layer for one call with ``tokens`` rows."""
    speed = DEVICE_SPEEDS.get(device_type, DEVICE_SPEEDS["cuda"])
    core = _matmul(tokens, math.prod(plan.in_ranks), math.prod(plan.out_ranks), elem_bytes, speed)
    steps = _factor_steps(plan, tokens, elem_bytes, speed)
    chain = _chain(plan, elem_bytes, speed)
    add = 3 * elem_bytes * plan.d_out * plan.d_in / speed.bytes_per_s  # W + dW: read two, write one
    if training:
        # factorised: core forward + core input-gradient; factor steps forward, input-gradient and lambda-gradient.
        factorised = 2 * core + 3 * steps
        # merged: the chain and W + dW in forward and again in backward, then the lambda gradients: input and
        # output gradient projected onto the factors and one core-sized matmul, or g^T x and the factors applied to
        # its two sides, whichever is cheaper (contraction.rank_lambda_grads).
        through_gx = _matmul(plan.d_out, tokens, plan.d_in, elem_bytes, speed) + _chain(plan, elem_bytes, speed)
        merged = 2 * chain + 2 * add + min(core + steps, through_gx)
    else:
        factorised = core + steps
        merged = chain + add
    return {FACTORISED: factorised, MERGED: merged}


def choose_path(plan: TensorPlan, tokens: int, training: bool, device_type: str, elem_bytes: int) -> str:
    costs = path_costs(plan, tokens, training, device_type, elem_bytes)
    return MERGED if costs[MERGED] < costs[FACTORISED] else FACTORISED
