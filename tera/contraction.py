"""The two ways of applying a TeRA update, and the custom backward of the merged-weight one.

Notation: ``dW = scale * G x_1 U_1 ... x_N U_N`` reshaped to ``d_out x d_in`` with ``U_n = A_n diag(lambda_n)``
(diagonal on the rank side) or ``U_n = diag(lambda_n) A_n`` (mode side).  ``G`` and ``A_n`` are frozen and shared.

* :func:`factorised_delta` contracts the input with the factors and the core; it never builds ``dW``.  Its core step
  costs ``tokens x prod(R)`` multiply-adds, so it is cheap for shrunk cores and for few tokens.
* :func:`merged_linear` builds ``dW`` with a chain of mode products (each a plain matmul on a contiguous view), adds
  it to ``W`` and runs ONE matmul.  Its backward recomputes ``dW`` instead of keeping a ``d_out x d_in`` tensor alive
  between forward and backward, computes ``dL/dW_eff = g^T x`` once and maps it onto the lambdas through the chain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .tensorize import TensorPlan

RANK_SIDE = "rank"
MODE_SIDE = "mode"


def scaled_factors(
    factors: Sequence[torch.Tensor], lambdas: Sequence[torch.Tensor], placement: str
) -> list[torch.Tensor]:
    """``U_n = A_n diag(lambda_n)`` (rank side) or ``diag(lambda_n) A_n`` (mode side), in the factors' dtype."""
    if placement == RANK_SIDE:
        return [a * lam.to(a.dtype)[None, :] for a, lam in zip(factors, lambdas)]
    return [lam.to(a.dtype)[:, None] * a for a, lam in zip(factors, lambdas)]


def mode_product(tensor: torch.Tensor, shape: list[int], mode: int, matrix: torch.Tensor) -> torch.Tensor:
    """Multiply mode ``mode`` of ``tensor`` (logical shape ``shape``) by ``matrix`` (new_size x old_size).

    Works on a contiguous ``(lead, old, trail)`` view, so no permute copies are made; ``shape`` is updated in place.
    """
    lead = math.prod(shape[:mode])
    trail = math.prod(shape[mode + 1 :])
    if trail == 1:
        out = tensor.reshape(lead, shape[mode]) @ matrix.t()
    elif lead == 1:
        out = matrix @ tensor.reshape(shape[mode], trail)
    else:
        out = torch.matmul(matrix, tensor.reshape(lead, shape[mode], trail))
    shape[mode] = matrix.shape[0]
    return out


def materialise(plan: TensorPlan, core: torch.Tensor, mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """``G x_1 U_1 ... x_N U_N`` as a ``d_out x d_in`` matrix (unscaled)."""
    shape = list(core.shape)
    tensor = core
    for mode, mat in enumerate(mats):
        tensor = mode_product(tensor, shape, mode, mat)
    return tensor.reshape(plan.d_out, plan.d_in)


def delta_weight(
    plan: TensorPlan,
    core: torch.Tensor,
    factors: Sequence[torch.Tensor],
    lambdas: Sequence[torch.Tensor],
    placement: str,
    scale: float,
) -> torch.Tensor:
    """The scaled update ``dW`` (differentiable with respect to the lambdas)."""
    return materialise(plan, core, scaled_factors(factors, lambdas, placement)) * scale


def factorised_delta(
    plan: TensorPlan,
    x: torch.Tensor,
    core: torch.Tensor,
    factors: Sequence[torch.Tensor],
    lambdas: Sequence[torch.Tensor],
    placement: str,
    scale: float,
) -> torch.Tensor:
    """``x dW^T`` without building ``dW``: input factors, then the core as one matmul, then output factors."""
    mats = scaled_factors(factors, lambdas, placement)
    p = plan.num_out_modes
    lead_shape = x.shape[:-1]
    tokens = math.prod(lead_shape)
    shape = [tokens, *plan.in_modes]
    h = x.reshape(tokens, plan.d_in)
    for q, mat in enumerate(mats[p:]):
        h = mode_product(h, shape, 1 + q, mat.t())
    core_matrix = core.reshape(math.prod(plan.out_ranks), math.prod(plan.in_ranks))
    h = h.reshape(tokens, -1) @ core_matrix.t()
    shape = [tokens, *plan.out_ranks]
    for o, mat in enumerate(mats[:p]):
        h = mode_product(h, shape, 1 + o, mat)
    return (h.reshape(*lead_shape, plan.d_out)) * scale


class _MergedLinear(torch.autograd.Function):
    """``y = x (W + dW)^T + b`` with ``dW`` recomputed in backward rather than stored."""

    @staticmethod
    def forward(ctx, x, weight, bias, core, plan, placement, scale, num_factors, *factors_and_lambdas):
        factors = factors_and_lambdas[:num_factors]
        lambdas = factors_and_lambdas[num_factors:]
        with torch.no_grad():
            merged = weight + delta_weight(plan, core, factors, lambdas, placement, scale).to(weight.dtype)
            out = F.linear(x, merged, bias)
        ctx.save_for_backward(x, weight, core, *factors_and_lambdas)
        ctx.plan, ctx.placement, ctx.scale, ctx.num_factors = plan, placement, scale, num_factors
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, core, *rest = ctx.saved_tensors
        factors, lambdas = rest[: ctx.num_factors], rest[ctx.num_factors :]
        needs = ctx.needs_input_grad
        lambda_needs = needs[8 + ctx.num_factors :]
        plan = ctx.plan
        g2 = grad_out.reshape(-1, plan.d_out)
        x2 = x.reshape(-1, plan.d_in).to(g2.dtype)

        with torch.enable_grad():
            leaves = [lam.detach().requires_grad_(need) for lam, need in zip(lambdas, lambda_needs)]
            delta = delta_weight(plan, core, factors, leaves, ctx.placement, ctx.scale)

        grad_x = grad_w = grad_b = None
        if needs[0]:
            merged = weight + delta.detach().to(weight.dtype)
            grad_x = (g2 @ merged.to(g2.dtype)).reshape(x.shape).to(x.dtype)
            del merged
        grad_lambdas: list[torch.Tensor | None] = [None] * len(lambdas)
        if needs[1] or any(lambda_needs):
            grad_merged = g2.t() @ x2  # dL/d(W + dW): the one extra matmul a full core costs
            if needs[1]:
                grad_w = grad_merged.to(weight.dtype)
            wanted = [leaf for leaf in leaves if leaf.requires_grad]
            if wanted:
                grads = iter(torch.autograd.grad(delta, wanted, grad_outputs=grad_merged.to(delta.dtype)))
                grad_lambdas = [next(grads) if leaf.requires_grad else None for leaf in leaves]
        if ctx.has_bias and needs[2]:
            grad_b = g2.sum(0)
        return (grad_x, grad_w, grad_b, None, None, None, None, None, *([None] * ctx.num_factors), *grad_lambdas)


def merged_linear(
    plan: TensorPlan,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    core: torch.Tensor,
    factors: Sequence[torch.Tensor],
    lambdas: Sequence[torch.Tensor],
    placement: str,
    scale: float,
) -> torch.Tensor:
    """``F.linear(x, W + dW, b)`` with a memory-lean custom backward (see module docstring)."""
    return _MergedLinear.apply(x, weight, bias, core, plan, placement, scale, len(factors), *factors, *lambdas)
