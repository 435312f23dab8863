"""The merged path's reused CPU buffers (tera.contraction.Scratch): exact results, per thread, a few buffers in all."""

import threading

import torch
from peft import get_peft_model

from tera import TeraConfig
from tera.contraction import merged_linear, merged_weight, release_scratch, scratch
from tera.factors import generate_factors
from tera.reference import reference_linear
from tera.tensorize import plan_for_weight
from tests.toy_models import example_inputs, tiny_llama


def _layer(d_out, d_in, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    plan = plan_for_weight(d_out, d_in, tensor_order=2)
    shared = generate_factors(plan, prng_key=seed)
    core, factors = shared.core.to(dtype), [f.to(dtype) for f in shared.factors]
    lambdas = [torch.randn(n, generator=generator, dtype=dtype, requires_grad=True) for n in plan.ranks]
    weight = torch.randn(d_out, d_in, generator=generator, dtype=dtype)
    return plan, weight, core, factors, lambdas


def _expected(layer, x, upstream):
    plan, weight, core, factors, lambdas = layer
    out = reference_linear(x, weight, None, plan, core, factors, lambdas, "rank", 0.5)
    return out.detach(), torch.autograd.grad(out, [x, *lambdas], upstream)


def _merged(layer, x):
    plan, weight, core, factors, lambdas = layer
    return merged_linear(plan, x, weight, None, core, factors, lambdas, "rank", 0.5)


def test_interleaved_layers_of_different_shapes_stay_exact():
    """Layer B's forward overwrites the buffers layer A's forward used; both backwards still match float64."""
    release_scratch()
    layers = [_layer(12, 30, seed=1), _layer(30, 12, seed=2), _layer(12, 12, seed=3)]
    xs = [torch.randn(7, layer[0].d_in, dtype=torch.float64, requires_grad=True) for layer in layers]
    ups = [torch.randn(7, layer[0].d_out, dtype=torch.float64) for layer in layers]
    outs = [_merged(layer, x) for layer, x in zip(layers, xs)]  # every forward before any backward
    for layer, x, up, out in reversed(list(zip(layers, xs, ups, outs))):
        want_out, want_grads = _expected(layer, x, up)
        torch.testing.assert_close(out.detach(), want_out, rtol=1e-10, atol=1e-10)
        for got, want in zip(torch.autograd.grad(out, [x, *layer[4]], up), want_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert scratch().nbytes() > 0  # the CPU path did use the buffers


def test_a_kept_merged_weight_is_never_a_scratch_buffer():
    """cache_merged_weight keeps W + dW across steps: later merged-path calls must not write into it."""
    plan, weight, core, factors, lambdas = _layer(12, 12, seed=4)
    kept = merged_weight(plan, weight, core, factors, lambdas, "rank", 0.5)
    before = kept.clone()
    x = torch.randn(5, 12, dtype=torch.float64)
    _merged(_layer(12, 12, seed=5), x)
    torch.testing.assert_close(kept, before, rtol=0, atol=0)
    storages = {b.untyped_storage().data_ptr() for b in scratch().buffers.values()}
    assert kept.untyped_storage().data_ptr() not in storages


def test_two_threads_never_share_buffers():
    """Two threads run the merged path at once, many times: each gets its own buffers and exact results."""
    layers = [_layer(12, 30, seed=6), _layer(12, 30, seed=7)]  # same shape: same slot sizes in both threads
    cases = []
    for layer in layers:
        x = torch.randn(9, 30, dtype=torch.float64, requires_grad=True)
        up = torch.randn(9, 12, dtype=torch.float64)
        cases.append((layer, x, up, *_expected(layer, x, up)))
    failures: list[str] = []
    used: list[int] = []

    def work(layer, x, up, want_out, want_grads):
        for _ in range(30):
            out = _merged(layer, x)
            grads = torch.autograd.grad(out, [x, *layer[4]], up)
            if not torch.allclose(out, want_out, rtol=1e-10, atol=1e-10) or not all(
                torch.allclose(g, w, rtol=1e-10, atol=1e-10) for g, w in zip(grads, want_grads)
            ):
                failures.append(threading.current_thread().name)
        used.append(id(scratch().buffers))

    threads = [threading.Thread(target=work, args=case, name=f"t{i}") for i, case in enumerate(cases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(set(used)) == 2 and id(scratch().buffers) not in used


def test_buffers_are_made_under_inference_mode_and_reused_by_training():
    layer = _layer(12, 30, seed=8)
    release_scratch()
    with torch.inference_mode():
        _merged(layer, torch.randn(4, 30, dtype=torch.float64))
    assert scratch().nbytes() > 0
    x = torch.randn(4, 30, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 12, dtype=torch.float64)
    out = _merged(layer, x)
    want_out, want_grads = _expected(layer, x, up)
    torch.testing.assert_close(out.detach(), want_out, rtol=1e-10, atol=1e-10)
    for got, want in zip(torch.autograd.grad(out, [x, *layer[4]], up), want_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_a_model_holds_a_few_buffers_in_all_not_one_per_layer():
    """The memory rule: after a training step of a model with many adapted layers, the buffers hold at most four of
    the largest adapted weight's size (two chain slots, W + dW, the weighted core-sized product); released on ask."""
    torch.manual_seed(0)
    config = TeraConfig(target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], forward_path="merged")
    model = get_peft_model(tiny_llama(), config)
    adapted = [m for m in model.modules() if hasattr(m, "tera_lambda")]
    assert len(adapted) == 10
    largest = max(m.get_base_layer().weight.numel() * 4 for m in adapted)
    release_scratch()
    inputs = example_inputs(model)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert 0 < scratch().nbytes() <= 4 * largest
    release_scratch()
    assert scratch().nbytes() == 0
