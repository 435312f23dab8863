"""Loading TeRA adapters by every path PEFT offers: the state-dict path (``get_peft_model`` with a new config, then
``set_peft_model_state_dict``, as transformers' and diffusers' integrations and accelerate's FSDP checkpoints do),
``PeftModel.from_pretrained`` with a new config, and adapter files whose ``adapter_config.json`` no longer places all
of their weights.

A state dict carries the checksum of every factor group it was trained with, so it loads into any model built with the
same config and is refused, in one sentence, where the regenerated factors differ.  Weights that no TeRA layer of the
model takes are refused rather than dropped.
"""

import copy
import json
import re

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from tera import SharedFactorsMismatch, TeraConfig
from tests.toy_models import TOY_TARGETS, ToyMLP, example_inputs, output_of, tiny_llama

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
CASES = [
    pytest.param(ToyMLP, {"target_modules": TOY_TARGETS}, id="default"),
    pytest.param(ToyMLP, {"target_modules": TOY_TARGETS, "save_projection": True}, id="save-projection"),
    pytest.param(ToyMLP, {"target_modules": TOY_TARGETS, "share_factors": False}, id="per-layer"),
    pytest.param(tiny_llama, {"target_modules": LLAMA_TARGETS}, id="llama"),
]


def _pair(model_fn, kwargs, **b_changes):
    """Model A (trained values, seed 0) and model B: the same base weights, a TeraConfig from the same kwargs (plus
    ``b_changes``) and other adapter values (seed 1), so a load that leaves B's own values shows."""
    torch.manual_seed(0)
    base = model_fn()
    pristine = copy.deepcopy(base)
    a = get_peft_model(base, TeraConfig(init_weights=False, **kwargs))
    torch.manual_seed(1)
    b = get_peft_model(pristine, TeraConfig(init_weights=False, **{**kwargs, **b_changes}))
    return a, b


def _out(model):
    model.eval()
    with torch.no_grad():
        return output_of(model, example_inputs(model))


def _lambdas(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "tera_lambda" in n}


def _one_sentence(message):
    return message.count(". ") == 0 and message.endswith(".")


# ---- item 1: the state-dict path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_fn, kwargs", CASES)
def test_state_dict_loads_into_a_model_built_from_the_same_kwargs(model_fn, kwargs):
    a, b = _pair(model_fn, kwargs)
    expected = _out(a)
    assert not torch.equal(_out(b), expected)
    result = set_peft_model_state_dict(b, get_peft_model_state_dict(a))
    assert result.unexpected_keys == [] and not [k for k in result.missing_keys if "tera_lambda" in k]
    torch.testing.assert_close(_out(b), expected, rtol=0, atol=0)
    assert b.peft_config["default"].projection_checksums == a.peft_config["default"].projection_checksums


@pytest.mark.parametrize("model_fn, kwargs", CASES)
def test_from_pretrained_with_a_new_config_from_the_same_kwargs(model_fn, kwargs, tmp_path):
    a, _ = _pair(model_fn, kwargs)
    a.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(model_fn(), tmp_path, config=TeraConfig(init_weights=False, **kwargs))
    torch.testing.assert_close(_out(loaded), _out(a), rtol=0, atol=0)


@pytest.mark.parametrize("model_fn, kwargs", [c for c in CASES if "save_projection" not in c.values[1]])
def test_state_dict_with_another_prng_key_is_refused_with_one_sentence(model_fn, kwargs):
    a, b = _pair(model_fn, kwargs, projection_prng_key=1)
    before = _lambdas(b)
    with pytest.raises(SharedFactorsMismatch) as raised:
        set_peft_model_state_dict(b, get_peft_model_state_dict(a))
    message = str(raised.value)
    assert message.startswith("The shared TeRA factors for ") and "regenerated from projection_prng_key=1" in message
    assert "the adapter was saved with, so loading would silently change the model" in message
    assert _one_sentence(message)
    assert all(torch.equal(before[n], p) for n, p in _lambdas(b).items())  # refused before any weight was written


def test_saved_factors_are_the_ones_used_whatever_key_the_new_config_names():
    """With save_projection=True the file holds the factors, so nothing is regenerated: the load uses them."""
    a, b = _pair(ToyMLP, {"target_modules": TOY_TARGETS, "save_projection": True}, projection_prng_key=1)
    set_peft_model_state_dict(b, get_peft_model_state_dict(a))
    torch.testing.assert_close(_out(b), _out(a), rtol=0, atol=0)
    assert b.peft_config["default"].projection_checksums == a.peft_config["default"].projection_checksums


def test_saved_factors_that_differ_from_their_checksum_are_refused():
    a, b = _pair(ToyMLP, {"target_modules": TOY_TARGETS, "save_projection": True})
    state = get_peft_model_state_dict(a)
    key = next(k for k in state if k.endswith("_core"))
    state[key] = state[key] * 1.001
    with pytest.raises(SharedFactorsMismatch, match=r"stored in the adapter file, .* the file was altered; load"):
        set_peft_model_state_dict(b, state)


def test_saved_checksums_are_small_tensors_one_per_factor_group(tmp_path):
    a, _ = _pair(ToyMLP, {"target_modules": TOY_TARGETS})
    a.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    checksums = {k.rpartition(".")[2]: v for k, v in saved.items() if ".tera_checksum." in k}
    recorded = a.peft_config["default"].projection_checksums
    assert {g: bytes(v.tolist()).decode() for g, v in checksums.items()} == recorded
    assert all(v.dtype == torch.uint8 for v in checksums.values())


def _without_file_checksums(folder):
    path = folder / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if ".tera_checksum." not in k}, path)


def test_config_checksums_deleted_the_file_still_verifies(tmp_path):
    a, _ = _pair(ToyMLP, {"target_modules": TOY_TARGETS})
    a.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**saved, "projection_checksums": {}}))
    torch.manual_seed(0)
    torch.testing.assert_close(_out(PeftModel.from_pretrained(ToyMLP(), tmp_path)), _out(a), rtol=0, atol=0)
    _without_file_checksums(tmp_path)  # and now nothing is left to verify against
    with pytest.raises(SharedFactorsMismatch, match=r"^The TeRA config being loaded has no projection_checksums"):
        PeftModel.from_pretrained(ToyMLP(), tmp_path)


def test_file_without_checksums_needs_its_saved_config(tmp_path):
    """Adapter files saved before state dicts carried checksums: their saved config still verifies them, a new
    config cannot."""
    a, _ = _pair(ToyMLP, {"target_modules": TOY_TARGETS})
    a.save_pretrained(tmp_path)
    _without_file_checksums(tmp_path)
    torch.manual_seed(0)
    torch.testing.assert_close(_out(PeftModel.from_pretrained(ToyMLP(), tmp_path)), _out(a), rtol=0, atol=0)
    fresh = TeraConfig(target_modules=TOY_TARGETS)
    with pytest.raises(SharedFactorsMismatch, match=r"nor checksums \(it predates them\)"):
        PeftModel.from_pretrained(ToyMLP(), tmp_path, config=fresh)


# ---- item 2: weights the config does not place ----------------------------------------------------------------------

EDITS = [
    pytest.param(
        ToyMLP,
        {"target_modules": TOY_TARGETS},
        {"target_modules": ["q", "up"]},
        "base_model.model.down.tera_lambda",
        id="dropped",
    ),
    pytest.param(
        ToyMLP,
        {"target_modules": TOY_TARGETS, "save_projection": True},
        {"target_modules": ["q", "up"]},
        "base_model.model.down.tera_lambda",  # before the factors only that module used
        id="dropped-save-projection",
    ),
    pytest.param(
        tiny_llama,
        {"target_modules": LLAMA_TARGETS},
        {"layers_to_transform": [0], "layers_pattern": "layers"},
        r"base_model\.model\.model\.layers\.1\.[a-z_.]+\.tera_lambda",
        id="llama-layer-dropped",
    ),
]


def _edited(tmp_path, model_fn, kwargs, edit):
    a, _ = _pair(model_fn, kwargs)
    a.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**saved, **edit}))
    return a


def _assert_unplaced(raised, key):
    message = str(raised.value)
    assert _one_sentence(message), message
    pattern = rf"^The TeRA adapter holds '{key}'.*, which no TeRA layer of this model takes because the target_modules"
    assert re.match(pattern, message), message
    assert "of its adapter_config.json (or of the config passed) do not cover it" in message


@pytest.mark.parametrize("model_fn, kwargs, edit, key", EDITS)
def test_adapter_whose_target_modules_were_edited_is_refused(model_fn, kwargs, edit, key, tmp_path):
    _edited(tmp_path, model_fn, kwargs, edit)
    torch.manual_seed(0)
    with pytest.raises(ValueError) as raised:
        PeftModel.from_pretrained(model_fn(), tmp_path)
    _assert_unplaced(raised, key)


def test_edited_target_modules_are_refused_by_every_load_path(tmp_path):
    kwargs = {"target_modules": TOY_TARGETS}
    a = _edited(tmp_path, ToyMLP, kwargs, {"target_modules": ["q", "up"]})
    key = "base_model.model.down.tera_lambda"
    torch.manual_seed(0)
    model = get_peft_model(ToyMLP(), TeraConfig(target_modules=TOY_TARGETS))
    with pytest.raises(ValueError) as raised:
        model.load_adapter(tmp_path, adapter_name="edited")
    _assert_unplaced(raised, key)
    narrow = get_peft_model(ToyMLP(), TeraConfig(target_modules=["q", "up"]))
    with pytest.raises(ValueError) as raised:
        set_peft_model_state_dict(narrow, get_peft_model_state_dict(a))
    _assert_unplaced(raised, key)


def test_unedited_adapter_still_loads_every_weight(tmp_path):
    a = _edited(tmp_path, ToyMLP, {"target_modules": TOY_TARGETS}, {})
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(ToyMLP(), tmp_path)
    torch.testing.assert_close(_out(loaded), _out(a), rtol=0, atol=0)
    result = loaded.load_adapter(tmp_path, adapter_name="again")
    assert result.unexpected_keys == [] and result.missing_keys == []
