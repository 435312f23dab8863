"""The two ways of applying a TeRA update, and the custom backward of the merged-weight one.

Notation: ``dW = scale * G x_1 U_1 ... x_N U_N`` reshaped to ``d_out x d_in`` with ``U_n = A_n diag(lambda_n)``
(diagonal on the rank side) or ``U_n = diag(lambda_n) A_n`` (mode side).  ``G`` and ``A_n`` are frozen and shared.

* :func:`factorised_delta` contracts the input with the factors and the core; it never builds ``dW``.  Its core step
  costs ``tokens x prod(R)`` multiply-adds, so it is cheap for shrunk cores and for few tokens.
* :func:`merged_linear` builds ``dW`` with a chain of mode products (each a plain matmul on a contiguous view), adds
  it to ``W`` and runs ONE matmul.  Its backward recomputes ``W + dW`` for the input gradient instead of keeping a
  ``d_out x d_in`` tensor alive between forward and backward.  For rank-side diagonals the lambda gradients come from
  one core-sized matmul of the output gradient and the input, both projected onto the frozen factors
  (:func:`rank_lambda_grads`): no ``g^T x``, no autograd through a second chain.  On a 2-core CPU at 512 tokens this
  cut a 512 x 512 layer's forward + backward from 2.6x to 1.65x full fine-tuning's.
* :func:`rowwise_factorised_delta` is the factorised path with each batch row's own diagonals, as per-row scalings of
  the intermediates: one contraction for the rows of every adapter sharing the factors (mixed-adapter batches).

On CPU the merged path writes its weight-sized temporaries (the chain's intermediates, ``W + dW``, the weighted
core-sized product, ``g^T x`` where the lambda gradients go through it) into a per-thread :class:`Scratch` of reused
buffers instead of fresh allocations: glibc hands out blocks that large with ``mmap``, so every fresh one costs page
faults and zero-filling, per layer and pass. The buffers are shared by every layer (a few of the largest adapted
weight's size, not one per layer), so the memory rule holds; :func:`release_scratch` frees them.  CUDA's caching
allocator already reuses blocks, so CUDA skips this.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .tensorize import TensorPlan

RANK_SIDE = "rank"


def cast(tensor: torch.Tensor, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """``tensor`` in ``dtype`` (and on ``device``); no dispatcher call when it already is (these paths run per layer
    and step)."""
    if tensor.dtype == dtype and (device is None or tensor.device == device):
        return tensor
    return tensor.to(dtype=dtype) if device is None else tensor.to(device=device, dtype=dtype)


class Scratch(threading.local):
    """Reused buffers for the merged path's weight-sized temporaries, one set per thread (so two threads running the
    model never write into each other's), keyed by a slot name, dtype and device; each grows to the largest use."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def take(self, slot: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat buffer of ``numel`` elements for ``slot``: valid until the next ``take`` of the same slot."""
        key = (slot, dtype, device)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self.buffers.pop(key, None)  # free the smaller one first
            # A normal tensor even under inference_mode, so that later training steps may write into it.
            with torch.inference_mode(False):
                buffer = torch.empty(numel, dtype=dtype, device=device)
            self.buffers[key] = buffer
        return buffer[:numel]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


_SCRATCH = Scratch()


def scratch() -> Scratch:
    """This thread's buffers for the merged path (see the module docstring)."""
    return _SCRATCH


def release_scratch() -> None:
    """Free this thread's merged-path buffers (they are rebuilt on the next CPU forward that needs them)."""
    _SCRATCH.buffers.clear()


def uses_scratch(tensor: torch.Tensor) -> bool:
    """Whether the merged path writes its temporaries for ``tensor``'s device into :class:`Scratch` buffers."""
    return tensor.device.type == "cpu"


def scaled_factors(
    factors: Sequence[torch.Tensor], lambdas: Sequence[torch.Tensor], placement: str
) -> list[torch.Tensor]:
    """``U_n = A_n diag(lambda_n)`` (rank side) or ``diag(lambda_n) A_n`` (mode side), in the factors' dtype."""
    # Few dispatcher calls matter here: this runs twice per layer and step, on tiny tensors.
    lambdas = [cast(lam, a.dtype) for a, lam in zip(factors, lambdas)]
    if placement == RANK_SIDE:
        return [a * lam for a, lam in zip(factors, lambdas)]  # broadcast over rows: A_n diag(lambda_n)
    return [lam.unsqueeze(1) * a for a, lam in zip(factors, lambdas)]


def mode_product(
    tensor: torch.Tensor, shape: list[int], mode: int, matrix: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Multiply mode ``mode`` of ``tensor`` (logical shape ``shape``) by ``matrix`` (new_size x old_size).

    Works on a contiguous ``(lead, old, trail)`` view, so no permute copies are made; ``shape`` is updated in place.
    ``out``: a flat buffer of the result's size to write into instead of a new tensor.
    """
    lead = math.prod(shape[:mode])
    trail = math.prod(shape[mode + 1 :])
    new = matrix.shape[0]
    if trail == 1:
        result = torch.mm(tensor.reshape(lead, shape[mode]), matrix.t(), out=_view(out, lead, new))
    elif lead == 1:
        result = torch.mm(matrix, tensor.reshape(shape[mode], trail), out=_view(out, new, trail))
    else:
        result = torch.matmul(matrix, tensor.reshape(lead, shape[mode], trail), out=_view(out, lead, new, trail))
    shape[mode] = new
    return result


def _view(buffer: torch.Tensor | None, *shape: int) -> torch.Tensor | None:
    return None if buffer is None else buffer.view(*shape)


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


def project(h: torch.Tensor, modes: Sequence[int], mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply ``mats[k]`` (new x old) to mode ``k`` of every row of ``h`` (``rows x prod(modes)``); rows x prod(new)."""
    rows = h.shape[0]
    shape = [rows, *modes]
    for k, mat in enumerate(mats):
        h = mode_product(h, shape, 1 + k, mat)
    return h.reshape(rows, -1)


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
    h = project(x.reshape(-1, plan.d_in), plan.in_modes, [mat.t() for mat in mats[p:]])
    h = h @ core.reshape(math.prod(plan.out_ranks), math.prod(plan.in_ranks)).t()
    h = project(h, plan.out_ranks, mats[:p])
    return h.reshape(*lead_shape, plan.d_out) * scale


def rowwise_factorised_delta(
    plan: TensorPlan,
    x: torch.Tensor,
    core: torch.Tensor,
    factors: Sequence[torch.Tensor],
    in_rank: torch.Tensor,
    out_rank: torch.Tensor,
    in_mode: torch.Tensor | None = None,
    out_mode: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x[b] dW_b^T`` for every row ``b`` of ``x`` (``rows x ... x d_in``), each row with its own diagonals, as ONE
    contraction through the shared frozen factors (mixed-adapter batches).

    The diagonals sit between the core and the factors, so a row's lambdas are elementwise scalings of that row's
    intermediate: ``in_rank`` / ``out_rank`` (``rows x prod R_in`` / ``rows x prod R_out``, the Kronecker products of
    rank-side diagonals, the scale folded into ``out_rank``) multiply the input after its projection onto the input
    factors and the core's output; ``in_mode`` / ``out_mode`` (``rows x d_in`` / ``rows x d_out``, mode-side
    diagonals) multiply the input itself and the result.  Rows of rank-side adapters carry ones in the mode vectors
    and vice versa, so adapters of either placement share the contraction.
    """
    rows, lead_shape = x.shape[0], x.shape[:-1]
    h = x.reshape(rows, -1, plan.d_in)  # rows x tokens x d_in: one scaling vector per row, broadcast over tokens
    tokens = h.shape[1]
    if in_mode is not None:
        h = h * in_mode.unsqueeze(1)
    p = plan.num_out_modes
    h = project(h.reshape(rows * tokens, plan.d_in), plan.in_modes, [a.t() for a in factors[p:]])
    h = h.reshape(rows, tokens, -1) * in_rank.unsqueeze(1)
    h = h.reshape(rows * tokens, -1) @ core.reshape(math.prod(plan.out_ranks), math.prod(plan.in_ranks)).t()
    h = h.reshape(rows, tokens, -1) * out_rank.unsqueeze(1)
    h = project(h.reshape(rows * tokens, -1), plan.out_ranks, factors[:p]).reshape(rows, tokens, plan.d_out)
    if out_mode is not None:
        h = h * out_mode.unsqueeze(1)
    return h.reshape(*lead_shape, plan.d_out)


def kron(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The Kronecker product of vectors, row-major (the first vector varies slowest)."""
    out = vectors[0]
    for vec in vectors[1:]:
        out = torch.outer(out, vec).reshape(-1)
    return out


def _leave_one_out(tensor: torch.Tensor, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """For each mode n: ``tensor`` contracted with every ``vectors[k]``, k != n, over its mode k (a vector)."""
    if len(vectors) == 1:
        return [tensor]
    if len(vectors) == 2:  # the default tensor order: two matrix-vector products instead of two einsums
        return [torch.mv(tensor, vectors[1]), torch.mv(tensor.t(), vectors[0])]
    letters = "abcdefghijklmnopqrstuvwxyz"[: tensor.dim()]
    grads = []
    for n in range(len(vectors)):
        others = [k for k in range(len(vectors)) if k != n]
        subscripts = ",".join([letters, *(letters[k] for k in others)]) + "->" + letters[n]
        grads.append(torch.einsum(subscripts, tensor, *(vectors[k] for k in others)))
    return grads


def _projection_macs(modes: Sequence[int], ranks: Sequence[int]) -> int:
    """Multiply-adds of projecting one row (``prod(modes)`` values) onto factors of these ranks, mode by mode."""
    shape, total = list(modes), 0
    for k, rank in enumerate(ranks):
        total += math.prod(shape) * rank
        shape[k] = rank
    return total


def _weight_first(plan: TensorPlan, tokens: int) -> bool:
    """Whether ``A_out^T (g^T x) A_in`` costs fewer multiply-adds than ``(g A_out)^T (x A_in)`` for this many tokens."""
    out_row = _projection_macs(plan.out_modes, plan.out_ranks)
    in_row = _projection_macs(plan.in_modes, plan.in_ranks)
    rows, cols = math.prod(plan.out_ranks), math.prod(plan.in_ranks)
    tokens_first = tokens * (out_row + in_row + rows * cols)
    weight_first = (
        tokens * plan.d_out * plan.d_in + plan.d_in * out_row + rows * _projection_macs(plan.in_modes, plan.in_ranks)
    )
    return weight_first < tokens_first


def rank_lambda_grads(
    plan: TensorPlan,
    x2: torch.Tensor,
    g2: torch.Tensor,
    core: torch.Tensor,
    factors: Sequence[torch.Tensor],
    lambdas: Sequence[torch.Tensor],
    scale: float,
) -> list[torch.Tensor]:
    """``dL/dlambda_n`` of every mode for rank-side diagonals, from the layer's input rows ``x2`` and output gradient
    rows ``g2``: without ``g^T x`` or any ``d_out x d_in`` tensor where the tokens are few, through ``g^T x`` where
    that is cheaper (many tokens against a whole-side factor, :func:`_weight_first`).

    With ``dW = scale * (G o L) x_n A_n`` (``L`` the outer product of the lambdas), ``dL/d(G o L) = scale *
    (g A_out)^T (x A_in)``: project ``g`` and ``x`` onto the frozen factors (token-sized, cheap), one core-sized matmul,
    then weight by ``G`` and contract with every other mode's lambdas.
    """
    p = plan.num_out_modes
    out_mats, in_mats = [a.t() for a in factors[:p]], [a.t() for a in factors[p:]]
    rows, cols = math.prod(plan.out_ranks), math.prod(plan.in_ranks)
    if _weight_first(plan, g2.shape[0]):
        # Many tokens and a whole side (the paper's layout): g^T x once (tokens x d_out x d_in), then project its two
        # sides onto the factors, instead of projecting every token onto a d x d factor (tokens x d x d).
        buffer = scratch().take("g_x", plan.d_out * plan.d_in, g2.dtype, g2.device) if uses_scratch(g2) else None
        product = torch.mm(g2.t(), x2, out=_view(buffer, plan.d_out, plan.d_in))  # d_out x d_in
        left = project(product.t(), plan.out_modes, out_mats).t()  # prod(R_out) x d_in
        weighted = project(left.contiguous(), plan.in_modes, in_mats).mul_(core.reshape(rows, cols))
    else:
        g_proj = project(g2, plan.out_modes, out_mats)  # tokens x prod(R_out)
        x_proj = project(x2, plan.in_modes, in_mats)  # tokens x prod(R_in)
        buffer = scratch().take("weighted", rows * cols, g_proj.dtype, g_proj.device) if uses_scratch(g_proj) else None
        weighted = torch.mm(g_proj.t(), x_proj, out=_view(buffer, rows, cols)).mul_(core.reshape(rows, cols))
    lams = [cast(lam, weighted.dtype) for lam in lambdas]
    by_out = (weighted @ kron(lams[p:])).reshape(plan.out_ranks)
    by_in = (kron(lams[:p]) @ weighted).reshape(plan.in_ranks)
    if scale != 1.0:
        by_out, by_in = by_out * scale, by_in * scale
    return [*_leave_one_out(by_out, lams[:p]), *_leave_one_out(by_in, lams[p:])]


class _MergedLinear(torch.autograd.Function):
    """``y = x (W + dW)^T + b`` with ``dW`` recomputed in backward rather than stored, unless the caller keeps
    ``W + dW`` itself (``merged``, from :func:`merged_weight`) and passes it in: then neither pass builds it."""

    _LEADING = 9  # inputs before the factors and lambdas

    @staticmethod
    def forward(ctx, x, weight, merged, bias, core, plan, placement, scale, num_factors, *factors_and_lambdas):
        factors = factors_and_lambdas[:num_factors]
        lambdas = factors_and_lambdas[num_factors:]
        with torch.no_grad():
            if merged is None:
                out = F.linear(x, _merged_weight(plan, weight, core, factors, lambdas, placement, scale), bias)
            else:
                out = F.linear(x, merged, bias)
        ctx.save_for_backward(x, weight, merged, core, *factors_and_lambdas)
        ctx.plan, ctx.placement, ctx.scale, ctx.num_factors = plan, placement, scale, num_factors
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, merged, core, *rest = ctx.saved_tensors
        factors, lambdas = rest[: ctx.num_factors], rest[ctx.num_factors :]
        needs = ctx.needs_input_grad
        lambda_needs = needs[_MergedLinear._LEADING + ctx.num_factors :]
        plan, placement, scale = ctx.plan, ctx.placement, ctx.scale
        g2 = grad_out.reshape(-1, plan.d_out)
        x2 = cast(x.reshape(-1, plan.d_in), g2.dtype)

        grad_x = grad_w = grad_b = None
        if needs[0]:
            if merged is None:  # recompute W + dW (one chain) rather than keep it alive since the forward
                merged = _merged_weight(plan, weight, core, factors, lambdas, placement, scale)
            grad_x = cast((g2 @ cast(merged, g2.dtype)).reshape(x.shape), x.dtype)
            del merged
        if needs[1]:
            grad_w = cast(g2.t() @ x2, weight.dtype)  # a trainable base weight: dL/dW = dL/d(W + dW) = g^T x
        grad_lambdas: list[torch.Tensor | None] = [None] * len(lambdas)
        if any(lambda_needs):
            if placement == RANK_SIDE:
                grads = rank_lambda_grads(
                    plan, x2, g2, cast(core, g2.dtype), [cast(f, g2.dtype) for f in factors], lambdas, scale
                )
            else:  # mode-side diagonals (an ablation): autograd through a recomputed chain, fed with g^T x
                grads = _autograd_lambda_grads(plan, x2, g2, core, factors, lambdas, placement, scale)
            grad_lambdas = [
                cast(grad, lam.dtype) if need else None for grad, lam, need in zip(grads, lambdas, lambda_needs)
            ]
        if ctx.has_bias and needs[3]:
            grad_b = g2.sum(0)
        no_grads = [None] * (_MergedLinear._LEADING - 4 + ctx.num_factors)  # merged, core, options and factors
        return (grad_x, grad_w, None, grad_b, *no_grads, *grad_lambdas)


def merged_weight(
    plan: TensorPlan,
    weight: torch.Tensor,
    core: torch.Tensor,
    factors: Sequence[torch.Tensor],
    lambdas: Sequence[torch.Tensor],
    placement: str,
    scale: float,
) -> torch.Tensor:
    """``W + dW`` in the weight's dtype, outside autograd: what a layer that keeps it between steps stores."""
    with torch.no_grad():
        return _merged_weight(plan, weight, core, factors, lambdas, placement, scale, transient=False)


def _merged_weight(plan, weight, core, factors, lambdas, placement, scale, transient=True) -> torch.Tensor:
    """``W + dW`` in the weight's dtype: the chain's last mode product adds into ``W`` itself (one ``addmm``, whose
    output is laid out as ``W``), so no separate ``dW`` is written and read back.

    ``transient``: the caller uses the result at once and drops it (the merged path's forward and backward), so on CPU
    it and the chain's intermediates may live in this thread's :class:`Scratch` buffers, valid until the next call.
    """
    mats = scaled_factors(factors, lambdas, placement)
    if core.dtype != weight.dtype:
        return torch.add(weight, materialise(plan, core, mats).to(weight.dtype), alpha=scale)
    buffers = scratch() if transient and uses_scratch(weight) else None
    shape = list(core.shape)
    tensor = core
    for mode, mat in enumerate(mats[:-1]):
        size = math.prod(shape) // shape[mode] * mat.shape[0]
        # Two slots, used in turn: each product reads the previous one's result.
        out = None if buffers is None else buffers.take(f"chain{mode % 2}", size, core.dtype, core.device)
        tensor = mode_product(tensor, shape, mode, mat, out=out)
    last = plan.modes[-1]
    rows = weight.numel() // last
    out = None if buffers is None else buffers.take("merged", weight.numel(), weight.dtype, weight.device)
    merged = torch.addmm(
        weight.reshape(rows, last),
        tensor.reshape(rows, shape[-1]),
        mats[-1].t(),
        alpha=scale,
        out=_view(out, rows, last),
    )
    return merged.reshape(plan.d_out, plan.d_in)


def _autograd_lambda_grads(plan, x2, g2, core, factors, lambdas, placement, scale) -> list[torch.Tensor]:
    with torch.enable_grad():
        leaves = [lam.detach().requires_grad_(True) for lam in lambdas]
        delta = delta_weight(plan, core, factors, leaves, placement, scale)
        return list(torch.autograd.grad(delta, leaves, grad_outputs=(g2.t() @ x2).to(delta.dtype)))


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
    merged: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, W + dW, b)`` with a memory-lean custom backward (see module docstring).

    ``merged``: ``W + dW`` for the current lambdas, already built (:func:`merged_weight`); the forward and backward
    then use it instead of building it each (the layer's ``cache_merged_weight`` option).
    """
    return _MergedLinear.apply(x, weight, merged, bias, core, plan, placement, scale, len(factors), *factors, *lambdas)
