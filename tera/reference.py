"""A plain float64 reference of TeRA, written independently of tera.contraction (Kronecker products, no chain).

The oracle of the tests and of the GPU check (experiments/benchmarks/gpu_check.py); far too slow for training.
"""

from __future__ import annotations

import math
from functools import reduce

import torch

from .tensorize import TensorPlan


def reference_delta(plan: TensorPlan, core, factors, lambdas, placement: str, scale: float) -> torch.Tensor:
    """dW = scale * kron(U_out) @ G_mat @ kron(U_in)^T with U_n = A_n diag(l_n) or diag(l_n) A_n, in float64."""
    mats = []
    for a, lam in zip(factors, lambdas):
        a, lam = a.double(), lam.double()
        mats.append(a @ torch.diag(lam) if placement == "rank" else torch.diag(lam) @ a)
    p = plan.num_out_modes
    u_out = reduce(torch.kron, mats[:p])
    u_in = reduce(torch.kron, mats[p:])
    g = core.double().reshape(math.prod(plan.out_ranks), math.prod(plan.in_ranks))
    return scale * (u_out @ g @ u_in.t())


def reference_linear(x, weight, bias, plan, core, factors, lambdas, placement, scale):
    delta = reference_delta(plan, core, factors, lambdas, placement, scale)
    out = x.double() @ (weight.double() + delta).t()
    return out if bias is None else out + bias.double()
