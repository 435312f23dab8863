"""Every TeRA path against the float64 Kronecker reference: forward output, input gradient, lambda gradients."""

import pytest
import torch

from tera.contraction import delta_weight, factorised_delta, merged_linear, merged_weight
from tera.cost import FACTORISED, MERGED, choose_path
from tera.factors import generate_factors
from tera.reference import reference_delta, reference_linear
from tera.tensorize import plan_for_weight

PLANS = [
    dict(d_out=12, d_in=12, tensor_order=2, core_rank_ratio=1.0),
    dict(d_out=24, d_in=12, tensor_order=2, core_rank_ratio=0.5),  # up_proj-like, shrunk core
    dict(d_out=12, d_in=30, tensor_order=2, core_rank_ratio=1.0),  # down_proj-like
    dict(d_out=8, d_in=27, tensor_order=3, core_rank_ratio=0.67),  # order 3
    dict(d_out=10, d_in=6, tensor_order=1, core_rank_ratio=1.0),  # plain matrix core
    dict(d_out=12, d_in=20, tensor_shape={"12x20": [[2, 3, 2], [20]]}),  # unbalanced explicit split
    dict(d_out=2, d_in=20, tensor_order=2, core_rank_ratio=1.0),  # a 20 -> 2 head: output modes (1, 2)
    dict(d_out=7, d_in=1, tensor_order=2, core_rank_ratio=0.5),  # prime and 1: size-1 modes on both sides
]


def _operands(spec, placement, dtype=torch.float64):
    spec = dict(spec)
    plan = plan_for_weight(spec.pop("d_out"), spec.pop("d_in"), **spec)
    shared = generate_factors(plan, prng_key=7)
    core = shared.core.to(dtype)
    factors = [f.to(dtype) for f in shared.factors]
    sizes = plan.ranks if placement == "rank" else plan.modes
    lambdas = [torch.randn(n, dtype=torch.float64, requires_grad=True) for n in sizes]
    return plan, core, factors, lambdas


def _grads(out, x, lambdas, upstream):
    return torch.autograd.grad(out, [x, *lambdas], upstream)


@pytest.mark.parametrize("spec", PLANS)
@pytest.mark.parametrize("placement", ["rank", "mode"])
@pytest.mark.parametrize("path", [FACTORISED, MERGED])
def test_path_matches_float64_reference(spec, placement, path):
    plan, core, factors, lambdas = _operands(spec, placement)
    weight = torch.randn(plan.d_out, plan.d_in, dtype=torch.float64)
    bias = torch.randn(plan.d_out, dtype=torch.float64)
    x = torch.randn(3, 5, plan.d_in, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, plan.d_out, dtype=torch.float64)
    scale = 0.7

    expected = reference_linear(x, weight, bias, plan, core, factors, lambdas, placement, scale)
    expected_grads = _grads(expected, x, lambdas, upstream)

    if path == FACTORISED:
        out = torch.nn.functional.linear(x, weight, bias) + factorised_delta(
            plan, x, core, factors, lambdas, placement, scale
        )
    else:
        out = merged_linear(plan, x, weight, bias, core, factors, lambdas, placement, scale)
    grads = _grads(out, x, lambdas, upstream)

    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("spec", PLANS)
@pytest.mark.parametrize("placement", ["rank", "mode"])
def test_merged_path_with_a_kept_merged_weight_matches_float64_reference(spec, placement):
    """cache_merged_weight hands the custom function a W + dW built earlier: same output and every gradient."""
    plan, core, factors, lambdas = _operands(spec, placement)
    weight = torch.randn(plan.d_out, plan.d_in, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(plan.d_out, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, plan.d_in, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, plan.d_out, dtype=torch.float64)
    inputs = [x, weight, bias, *lambdas]

    expected = reference_linear(x, weight, bias, plan, core, factors, lambdas, placement, 0.7)
    expected_grads = torch.autograd.grad(expected, inputs, upstream)
    kept = merged_weight(plan, weight, core, factors, lambdas, placement, 0.7)
    assert not kept.requires_grad
    out = merged_linear(plan, x, weight, bias, core, factors, lambdas, placement, 0.7, merged=kept)
    grads = torch.autograd.grad(out, inputs, upstream)

    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("placement", ["rank", "mode"])
def test_delta_weight_matches_reference(placement):
    plan, core, factors, lambdas = _operands(PLANS[1], placement)
    got = delta_weight(plan, core, factors, lambdas, placement, 2.0)
    torch.testing.assert_close(got, reference_delta(plan, core, factors, lambdas, placement, 2.0))


def test_merged_path_weight_and_bias_gradients():
    plan, core, factors, lambdas = _operands(PLANS[0], "rank")
    weight = torch.randn(plan.d_out, plan.d_in, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(plan.d_out, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, plan.d_in, dtype=torch.float64)
    upstream = torch.randn(4, plan.d_out, dtype=torch.float64)
    got = torch.autograd.grad(
        merged_linear(plan, x, weight, bias, core, factors, lambdas, "rank", 1.0), [weight, bias], upstream
    )
    want = torch.autograd.grad(
        reference_linear(x, weight, bias, plan, core, factors, lambdas, "rank", 1.0), [weight, bias], upstream
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_merged_path_keeps_no_new_weight_sized_tensor_for_backward():
    """Between forward and backward only the inputs themselves are saved: no dW or W + dW is kept alive."""
    plan, core, factors, lambdas = _operands(dict(d_out=64, d_in=64, tensor_order=2), "rank", torch.float32)
    weight = torch.randn(64, 64)
    x = torch.randn(32, 64, requires_grad=True)
    own = {t.untyped_storage().data_ptr() for t in (x, weight, core, *factors, *lambdas)}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = merged_linear(plan, x, weight, None, core, factors, lambdas, "rank", 1.0)
    weight_sized = [t for t in saved if t.numel() >= 64 * 64 and t.untyped_storage().data_ptr() not in own]
    assert weight_sized == []
    out.sum().backward()
    assert all(lam.grad is not None for lam in lambdas)


def test_float32_paths_agree_with_reference():
    plan, core, factors, lambdas = _operands(PLANS[0], "rank", torch.float32)
    lambdas32 = [lam.detach().float() for lam in lambdas]
    weight = torch.randn(plan.d_out, plan.d_in)
    x = torch.randn(6, plan.d_in)
    want = reference_linear(x, weight, None, plan, core, factors, lambdas32, "rank", 1.0)
    merged = merged_linear(plan, x, weight, None, core, factors, lambdas32, "rank", 1.0)
    fact = x @ weight.t() + factorised_delta(plan, x, core, factors, lambdas32, "rank", 1.0)
    torch.testing.assert_close(merged.double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fact.double(), want, rtol=1e-4, atol=1e-5)


def test_cost_model_prefers_merged_for_full_core_and_many_tokens():
    full = plan_for_weight(4096, 4096, layout="balanced")  # the published layout's cost: tests/test_tera_layout.py
    shrunk = plan_for_weight(4096, 4096, core_rank_ratio=0.5, layout="balanced")
    assert choose_path(full, tokens=4096, training=True, device_type="cuda", elem_bytes=2) == MERGED
    assert choose_path(full, tokens=1, training=False, device_type="cuda", elem_bytes=2) == FACTORISED
    assert choose_path(shrunk, tokens=4096, training=True, device_type="cuda", elem_bytes=2) == FACTORISED


@pytest.mark.parametrize("tokens", [4, 400])
def test_lambda_gradients_agree_in_both_contraction_orders(tokens):
    """Few tokens project every token onto the factors; many tokens against a whole side go through g^T x first
    (cheaper for the paper's layout): both give the float64 reference's lambda gradients."""
    from tera.contraction import _weight_first

    plan, core, factors, lambdas = _operands(dict(d_out=48, d_in=24), "rank")
    assert plan.out_modes == (48,) and _weight_first(plan, tokens) == (tokens == 400)
    weight = torch.randn(48, 24, dtype=torch.float64)
    x = torch.randn(tokens, 24, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(tokens, 48, dtype=torch.float64)
    expected = _grads(
        reference_linear(x, weight, None, plan, core, factors, lambdas, "rank", 0.7), x, lambdas, upstream
    )
    got = _grads(merged_linear(plan, x, weight, None, core, factors, lambdas, "rank", 0.7), x, lambdas, upstream)
    for have, want in zip(got, expected):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-10)
