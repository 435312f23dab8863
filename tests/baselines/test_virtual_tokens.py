"""Prompt Tuning and P-Tuning as the suite wires them (baselines/registry.py, conf/method/prompt-tuning.yaml and
p-tuning.yaml): PEFT's own configs, 20 virtual tokens, no target modules, causal LMs only, nothing to merge.

Trained values, with d the model's hidden size and n the virtual tokens:
- Prompt Tuning: n d (one embedding per virtual token);
- P-Tuning (MLP, hidden size h = d, PEFT's default): n d + (d h + h) + (h h + h) + (h d + d) = n d + 3 d^2 + 3 d.
On LLaMA-2-7B (d = 4096, 6,738,415,616 weights): 81,920 (0.0012%) and 50,425,856 (0.7428%), the paper's rows.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from baselines import (
    METHODS,
    VIRTUAL_TOKEN_METHODS,
    UnknownMethod,
    adds_virtual_tokens,
    apply_method,
    check_mergeable,
    check_targets,
    make_peft_config,
)
from baselines.analysis import adapter_report
from tests.helpers import CONF

HIDDEN = 48  # tiny, and unlike every other size below, so a count that uses the wrong one fails


def _tiny_llama(**changes) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=HIDDEN,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **changes,
    )
    return LlamaForCausalLM(config)


def _conf_options(method: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "method" / f"{method}.yaml").peft, resolve=True)


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _p_tuning_count(n: int, d: int, h: int) -> int:
    return n * d + (d * h + h) + (h * h + h) + (h * d + d)  # embedding, then the MLP's three linear layers


def test_both_methods_are_registered_as_virtual_token_methods():
    assert VIRTUAL_TOKEN_METHODS == {"prompt-tuning", "p-tuning"} and VIRTUAL_TOKEN_METHODS <= set(METHODS)
    assert [m for m in METHODS if adds_virtual_tokens(m)] == ["prompt-tuning", "p-tuning"]
    with pytest.raises(UnknownMethod, match="Unknown method 'prompt'"):
        adds_virtual_tokens("prompt")


@pytest.mark.parametrize("method", sorted(VIRTUAL_TOKEN_METHODS))
def test_trainable_counts_through_the_registry_are_the_closed_forms(method):
    model = _tiny_llama()
    frozen = sum(p.numel() for p in model.parameters())
    adapted = apply_method(model, method, None, task_type="CAUSAL_LM", **_conf_options(method))
    n = 20
    expected = n * HIDDEN if method == "prompt-tuning" else _p_tuning_count(n, HIDDEN, HIDDEN)
    assert _trainable(adapted) == expected
    assert adapted.active_peft_config.num_virtual_tokens == n
    assert sum(p.numel() for p in adapted.parameters() if not p.requires_grad) == frozen  # the model stays frozen
    assert adapter_report(adapted) == []  # no adapted layer: no dW, no rank


def test_p_tuning_takes_the_models_hidden_size_unless_told_otherwise():
    adapted = apply_method(_tiny_llama(), "p-tuning", None, task_type="CAUSAL_LM")  # registry defaults alone
    assert adapted.active_peft_config.encoder_hidden_size == HIDDEN
    assert adapted.active_peft_config.encoder_reparameterization_type == "MLP"
    assert _trainable(adapted) == _p_tuning_count(20, HIDDEN, HIDDEN)
    narrow = apply_method(_tiny_llama(), "p-tuning", None, task_type="CAUSAL_LM", encoder_hidden_size=16)
    assert _trainable(narrow) == _p_tuning_count(20, HIDDEN, 16)
    fewer = apply_method(_tiny_llama(), "prompt-tuning", None, task_type="CAUSAL_LM", num_virtual_tokens=5)
    assert _trainable(fewer) == 5 * HIDDEN


def test_llama2_7b_counts_are_the_papers_percentages():
    """LLaMA-2-7B's shapes on the meta device (no memory, no download): 81,920 and 50,425,856 trained values."""
    config = {"vocab_size": 32000, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}
    config |= {"num_key_value_heads": 32, "hidden_size": 4096, "max_position_embeddings": 4096}
    for method, expected, percent in (("prompt-tuning", 81_920, "0.0012"), ("p-tuning", 50_425_856, "0.7428")):
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**config))
            total = sum(p.numel() for p in model.parameters())
            adapted = apply_method(model, method, None, task_type="CAUSAL_LM", **_conf_options(method))
        assert total == 6_738_415_616
        assert _trainable(adapted) == expected
        assert f"{100 * expected / (total + expected):.4f}" == percent


@pytest.mark.parametrize("method", sorted(VIRTUAL_TOKEN_METHODS))
def test_no_target_modules_are_passed_or_checked(method):
    config = make_peft_config(method, ["no_such_layer"], None, "CAUSAL_LM")
    assert not hasattr(config, "target_modules") and config.task_type == "CAUSAL_LM"
    check_targets(_tiny_llama(), method, ["no_such_layer"])  # nothing to check: no error
    with pytest.raises(UnknownMethod, match=rf"Method '{method}' does not accept these options"):
        make_peft_config(method, None, None, "CAUSAL_LM", r=8)  # a LoRA option: PEFT's own config refuses it


@pytest.mark.parametrize("method", sorted(VIRTUAL_TOKEN_METHODS))
@pytest.mark.parametrize("task_type", [None, "SEQ_CLS"])
def test_only_causal_language_models_take_virtual_tokens(method, task_type):
    with pytest.raises(UnknownMethod) as refused:
        make_peft_config(method, None, None, task_type)
    assert str(refused.value) == (
        f"Method {method} prepends trained virtual tokens to a decoder's input and runs on causal language models "
        f"only (PEFT task type CAUSAL_LM, got {task_type!r}); use it on a decoder task."
    )


def test_merging_virtual_tokens_is_refused_in_one_sentence():
    for method in VIRTUAL_TOKEN_METHODS:
        with pytest.raises(UnknownMethod, match=rf"^Method {method} trains virtual tokens .* nothing to merge"):
            check_mergeable(method)
    check_mergeable("lora")  # methods with a dW merge as before
