"""``cache_merged_weight``: a layer keeps ``W + dW`` between optimizer steps and rebuilds it exactly when needed.

Training with it must be the same computation as without it (float64, several AdamW steps, gradient accumulation),
while ``W + dW`` is built once per optimizer step instead of twice per micro-batch.
"""

import pytest
import torch
from peft import get_peft_model

import tera.layer
from tera import TeraConfig, TeraLayer
from tests.toy_models import TOY_TARGETS, ToyMLP

X = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _model(cache: bool, **kwargs):
    torch.manual_seed(0)
    config = TeraConfig(
        target_modules=TOY_TARGETS, init_weights=False, cache_merged_weight=cache, forward_path="auto", **kwargs
    )
    return get_peft_model(ToyMLP().double(), config)


@pytest.fixture
def builds(monkeypatch):
    """How many times a layer built a kept ``W + dW``."""
    count = {"n": 0}
    original = tera.layer.merged_weight

    def counting(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(tera.layer, "merged_weight", counting)
    return count


def _train(model, steps: int, micro_batches: int, foreach: bool) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-2, foreach=foreach)
    losses = []
    for step in range(steps):
        for micro in range(micro_batches):
            x = X + 0.1 * (step * micro_batches + micro)
            loss = model(x).pow(2).mean() / micro_batches
            loss.backward()
            losses.append(loss.detach())
        optimizer.step()
        optimizer.zero_grad()
    return losses


def _lambdas(model) -> list[torch.Tensor]:
    return [p.detach().clone() for n, p in model.named_parameters() if "tera_lambda" in n]


@pytest.mark.parametrize("foreach", [False, True])
def test_training_with_the_kept_weight_is_the_same_computation(builds, foreach):
    plain, cached = _model(cache=False), _model(cache=True)
    layers = sum(isinstance(m, TeraLayer) for m in cached.modules())
    want = _train(plain, steps=4, micro_batches=2, foreach=foreach)
    plain_builds = builds["n"]
    got = _train(cached, steps=4, micro_batches=2, foreach=foreach)
    assert plain_builds == 0  # the default never keeps W + dW
    assert builds["n"] == 4 * layers  # once per layer and optimizer step, shared by both micro-batches
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-12, atol=1e-12)
    for a, b in zip(_lambdas(cached), _lambdas(plain)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_evaluation_reuses_the_kept_weight_and_sees_every_change(builds):
    model = _model(cache=True)
    model.eval()
    layers = sum(isinstance(m, TeraLayer) for m in model.modules())
    with torch.no_grad():
        first = model(X)
        assert torch.equal(model(X), first) and builds["n"] == layers  # the second call builds nothing

        # An edit through the parameter (as load_state_dict and optimizers do) bumps its version: rebuilt.
        lam = next(p for n, p in model.named_parameters() if "tera_lambda" in n)
        lam.mul_(2.0)
        changed = model(X)
        assert builds["n"] == layers + 1 and not torch.allclose(changed, first)
        reference = _model(cache=False)
        reference.load_state_dict(model.state_dict())
        torch.testing.assert_close(changed, reference.eval()(X), rtol=1e-12, atol=1e-12)


def test_a_copy_built_under_inference_mode_is_not_used_for_training(builds):
    model = _model(cache=True)
    with torch.inference_mode():
        model(X)  # e.g. an evaluation before the first step
    model(X).sum().backward()  # an inference tensor cannot be saved for backward: a fresh copy is built
    layers = sum(isinstance(m, TeraLayer) for m in model.modules())
    assert builds["n"] == 2 * layers
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_merge_unmerge_and_release_drop_the_kept_weight(builds):
    model = _model(cache=True)
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, TeraLayer)]
    with torch.no_grad():
        before = model(X)
        assert all(layer._tera_merged_cache for layer in layers)
        model.merge_adapter()
        assert not any(layer._tera_merged_cache for layer in layers)
        torch.testing.assert_close(model(X), before, rtol=1e-12, atol=1e-12)
        model.unmerge_adapter()
        torch.testing.assert_close(model(X), before, rtol=1e-12, atol=1e-12)
        model.base_model.release_merged_cache()
        assert not any(layer._tera_merged_cache for layer in layers)
        with model.disable_adapter():
            assert not torch.allclose(model(X), before)


def test_gradient_checkpointing_style_recompute_uses_the_same_kept_weight(builds):
    """A checkpointed block runs its forward twice per step; the kept W + dW is built once."""
    model = _model(cache=True)
    plain = _model(cache=False)
    layers = sum(isinstance(m, TeraLayer) for m in model.modules())

    def loss_of(m):
        out = torch.utils.checkpoint.checkpoint(m, X, use_reentrant=False)
        return out.pow(2).mean()

    loss_of(model).backward()
    loss_of(plain).backward()
    assert builds["n"] == layers
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_cache_with_the_factorised_path_is_refused():
    with pytest.raises(ValueError, match="cannot be combined with forward_path='factorised'"):
        TeraConfig(target_modules=TOY_TARGETS, cache_merged_weight=True, forward_path="factorised")
