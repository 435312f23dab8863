"""The paper's layout, TeRA's default: one side whole, the other in equal modes, full core, the whole side's vector
at zero; its trained counts to the paper's four decimals, built on the meta device (no weights)."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tera import TeraConfig, TeraLayer
from tera.tensorize import equal_modes, plan_for_weight

LLAMA2_PARAMS = 6_738_415_616
LLAMA3_PARAMS = 8_030_261_248


@pytest.mark.parametrize(
    ("dim", "modes"),
    [
        (4096, (8, 8, 8, 8)),
        (1024, (4, 4, 8, 8)),
        (11008, (4, 4, 4, 4, 43)),
        (576, (4, 4, 6, 6)),
        (384, (6, 8, 8)),
        (192, (4, 6, 8)),
        (64, (8, 8)),
        (7, (7,)),
    ],
)
def test_equal_modes_of_eight_or_as_equal_as_possible(dim, modes):
    assert equal_modes(dim, 8) == modes


def test_the_larger_side_stays_whole_the_output_side_of_a_square_one():
    square = plan_for_weight(4096, 4096)
    assert square.out_modes == (4096,) and square.in_modes == (8, 8, 8, 8) and square.ranks == square.modes
    wide = plan_for_weight(1024, 4096)  # LLaMA-3-8B's v: its 4096 input side is the larger one
    assert wide.out_modes == (4, 4, 8, 8) and wide.in_modes == (4096,)
    assert plan_for_weight(1024, 4096, whole_side="output").out_modes == (1024,)
    assert plan_for_weight(4096, 4096, layout="balanced").modes == (64, 64, 64, 64)


def _one_layer(hidden: int, kv_heads: int, **tera) -> int:
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=32,
        num_key_value_heads=kv_heads,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    peft_model = get_peft_model(model, TeraConfig(target_modules=["q_proj", "v_proj"], **tera))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def _percent(trained: int, frozen: int) -> str:
    return f"{100 * trained / (frozen + trained):.4f}"


@pytest.mark.slow  # draws 4096 x 4096 shared factors (QR in float64): about 40 s
def test_the_papers_counts_through_peft_on_the_meta_device():
    llama2 = _one_layer(4096, 32)
    assert llama2 == 8_256 and 32 * llama2 == 264_192 and _percent(32 * llama2, LLAMA2_PARAMS) == "0.0039"
    llama3 = 32 * _one_layer(4096, 8)  # v keeps its 4096 input side whole: Table 2's reading
    assert llama3 == 263_936 and _percent(llama3, LLAMA3_PARAMS) == "0.0033"
    output_whole = 32 * _one_layer(4096, 8, whole_side="output")  # v keeps its 1024 output side: Tables 3 and 4
    assert output_whole == 165_888 and _percent(output_whole, LLAMA3_PARAMS) == "0.0021"
    assert 32 * _one_layer(4096, 32, layout="balanced") == 32 * 512  # the suite's earlier default: 16 times fewer


def _square(d: int = 16, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_peft_model(torch.nn.Sequential(torch.nn.Linear(d, d)), TeraConfig(target_modules=["0"], **kwargs))


def test_the_whole_sides_vector_starts_at_zero_and_the_others_at_one():
    layer = next(m for m in _square(mode_size=2).modules() if isinstance(m, TeraLayer))
    whole, *split = layer.lambdas("default")
    assert layer.tera_plan["default"].modes == (16, 2, 2, 2, 2)
    assert torch.all(whole == 0) and all(torch.all(v == 1) for v in split)
    tall = get_peft_model(torch.nn.Sequential(torch.nn.Linear(16, 4)), TeraConfig(target_modules=["0"]))
    layer = next(m for m in tall.modules() if isinstance(m, TeraLayer))
    assert layer.tera_plan["default"].in_modes == (16,)  # the input side is the larger one: it stays whole
    *split, whole = layer.lambdas("default")
    assert torch.all(whole == 0) and all(torch.all(v == 1) for v in split)


def test_full_rank_with_random_vectors_and_identity_factors_as_an_option():
    for factor_init in ("orthonormal", "identity"):
        model = _square(mode_size=2, init_weights=False, factor_init=factor_init)
        layer = next(m for m in model.modules() if isinstance(m, TeraLayer))
        delta = layer.get_delta_weight("default").double()
        assert torch.linalg.matrix_rank(delta) == 16
    identity = next(m for m in _square(factor_init="identity").modules() if isinstance(m, TeraLayer))
    factors = identity.shared_factors("default", torch.float32, torch.device("cpu"))[1]
    assert torch.equal(factors[0], torch.eye(16)) and identity.tera_factor_group["default"].endswith("__identity")
