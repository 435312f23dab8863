"""forward_path="auto" times both paths once per kind of call and keeps the faster; the cost model is the fallback."""

import pytest
import torch
from peft import get_peft_model

from tera import TeraConfig, autotune
from tera.cost import FACTORISED, MERGED
from tests.toy_models import TOY_TARGETS, ToyMLP


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setenv(autotune.ENV_SWITCH, "1")  # conftest turns timing off for every other test
    autotune.reset()
    yield
    autotune.reset()


def _model(**options):
    torch.manual_seed(0)
    return get_peft_model(ToyMLP(), TeraConfig(target_modules=TOY_TARGETS, init_weights=False, **options))


def test_auto_times_each_kind_of_call_once_and_keeps_the_faster():
    model = _model()
    x = torch.randn(4, 6, 16)
    model(x).sum().backward()
    decided = autotune.choices()
    assert decided and all(c.source == "timed" for c in decided.values())
    for choice in decided.values():
        assert set(choice.ms) == {FACTORISED, MERGED}
        assert choice.path == min(choice.ms, key=choice.ms.__getitem__)
    assert {key[-1] for key in decided} == {True}  # training calls
    model(x).sum().backward()
    assert autotune.choices() == decided  # reused, not timed again
    with torch.no_grad():
        model(x)
    assert {key[-1] for key in autotune.choices()} == {True, False}  # inference is its own kind


def test_auto_output_matches_both_forced_paths():
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    outs = {}
    for path in ("auto", FACTORISED, MERGED):
        model = _model(forward_path=path).double()
        outs[path] = model(x)
    torch.testing.assert_close(outs["auto"], outs[FACTORISED], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outs["auto"], outs[MERGED], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("faster", [FACTORISED, MERGED])
def test_the_faster_timed_path_is_chosen(monkeypatch, faster):
    slower = MERGED if faster == FACTORISED else FACTORISED
    monkeypatch.setattr(autotune, "_time_paths", lambda runners, device: {faster: 1.0, slower: 2.0})
    layer = _model().base_model.model.q
    assert layer.choose_path("default", torch.randn(8, layer.in_features)) == faster


def test_switch_off_uses_the_cost_model_and_caches_nothing(monkeypatch):
    monkeypatch.setenv(autotune.ENV_SWITCH, "0")
    model = _model()
    model(torch.randn(4, 16)).sum().backward()
    assert autotune.choices() == {}


def test_token_buckets():
    assert [autotune.token_bucket(n) for n in (1, 2, 3, 512, 513, 4096)] == [1, 2, 4, 512, 1024, 4096]


def test_auto_under_non_reentrant_checkpointing_matches_plain_backward():
    from torch.utils.checkpoint import checkpoint

    model = _model().double()
    x = torch.randn(4, 16, dtype=torch.float64)
    plain = torch.autograd.grad(model(x).sum(), [p for p in model.parameters() if p.requires_grad])
    autotune.reset()  # the checkpointed run decides afresh, inside the checkpoint's region
    out = checkpoint(model, x, use_reentrant=False)
    ckpt = torch.autograd.grad(out.sum(), [p for p in model.parameters() if p.requires_grad])
    for got, want in zip(ckpt, plain):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_timing_leaves_the_global_random_stream_alone():
    model = _model()
    x = torch.randn(4, 16)
    state = torch.get_rng_state()
    model(x).sum().backward()
    assert autotune.choices() and torch.equal(torch.get_rng_state(), state)
