"""The PEFT tuner contract, for every out-of-tree tuner of the suite (TeRA and MoRA).

One table of (name, toy model, config class, config kwargs) rows drives one set of generic checks: what a PEFT user
expects of any tuner, after PEFT's own generic tuner tests.  A new method or a new configuration adds rows, not tests.
Rows use ``init_weights=False`` so every adapter changes the model (a check that compares outputs must be able to
fail); the initialisation check turns it back on.  Method-specific behaviour (float64 references, rank bounds,
checksums, parameter formulas) is tested in ``test_tera_peft.py``, ``test_mora.py`` and ``test_contraction.py``.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
import warnings
from typing import Any

import pytest
import torch
import yaml
from peft import PeftConfig, PeftModel, get_peft_model, inject_adapter_in_model
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils.checkpoint import checkpoint

from baselines.analysis import adapter_report
from baselines.loretta import LorettaConfig
from baselines.mora import MoraConfig
from tera import TeraConfig
from tests.toy_models import ToyClassifier, ToyMLP, example_inputs, output_of, tiny_llama

MLP_TARGETS = ["q", "up", "down", "head"]  # 16x16, 24x16, 16x24 and a 3x16 head
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]

# (name, toy model, config class, config kwargs): TeRA rows after PEFT's VeRA rows (several targets, mixed shapes,
# shrunk core, both forward paths, saved factors on/off, mode placement, per-layer factors), MoRA rows for both types,
# LoRETTA rows (TT ranks binding, the defaults with r above every toy side, a 20 -> 2 head, a transformers model).
TEST_CASES: list[tuple[str, Any, type[PeftConfig], dict[str, Any]]] = [
    ("tera", ToyMLP, TeraConfig, {"target_modules": MLP_TARGETS}),
    ("tera-core-half", ToyMLP, TeraConfig, {"target_modules": MLP_TARGETS, "core_rank_ratio": 0.5}),
    ("tera-factorised", ToyMLP, TeraConfig, {"target_modules": MLP_TARGETS, "forward_path": "factorised"}),
    ("tera-merged", ToyMLP, TeraConfig, {"target_modules": MLP_TARGETS, "forward_path": "merged"}),
    ("tera-mode", ToyMLP, TeraConfig, {"target_modules": MLP_TARGETS, "diagonal_placement": "mode"}),
    ("tera-save-projection", ToyMLP, TeraConfig, {"target_modules": MLP_TARGETS, "save_projection": True}),
    ("tera-per-layer", ToyMLP, TeraConfig, {"target_modules": MLP_TARGETS, "share_factors": False}),
    ("tera-order3-scaled", ToyMLP, TeraConfig, {"target_modules": MLP_TARGETS, "tensor_order": 3, "scaling": 0.5}),
    ("tera-all-linear", ToyClassifier, TeraConfig, {"target_modules": "all-linear"}),
    ("tera-llama", tiny_llama, TeraConfig, {"target_modules": LLAMA_TARGETS}),
    (
        "tera-llama-layer0",
        tiny_llama,
        TeraConfig,
        {"target_modules": ["q_proj", "down_proj"], "layers_to_transform": 0, "layers_pattern": "layers"},
    ),
    ("mora-type6", ToyMLP, MoraConfig, {"target_modules": MLP_TARGETS, "r": 8, "mora_type": 6}),
    ("mora-type1", ToyMLP, MoraConfig, {"target_modules": MLP_TARGETS, "r": 2, "mora_type": 1}),
    ("mora-all-linear", ToyClassifier, MoraConfig, {"target_modules": "all-linear", "r": 1}),
    ("mora-llama", tiny_llama, MoraConfig, {"target_modules": LLAMA_TARGETS, "r": 4}),
    (
        "loretta",
        ToyMLP,
        LorettaConfig,
        {"target_modules": MLP_TARGETS, "r": 4, "tensor_rank": 3, "max_mode_size": 4},
    ),
    ("loretta-default", ToyMLP, LorettaConfig, {"target_modules": MLP_TARGETS}),
    ("loretta-all-linear", ToyClassifier, LorettaConfig, {"target_modules": "all-linear", "r": 2, "tensor_rank": 2}),
    (
        "loretta-llama",
        tiny_llama,
        LorettaConfig,
        {"target_modules": LLAMA_TARGETS, "r": 8, "tensor_rank": 4, "scaling": 0.5},
    ),
]
CASES = [pytest.param(model, cls, kwargs, id=name) for name, model, cls, kwargs in TEST_CASES]
CONFIG_CLASSES = sorted({cls for _, _, cls, _ in TEST_CASES}, key=lambda cls: cls.__name__)


def _assert_tight(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 paths that compute the same thing in another order: equal to 1e-5 relative to the tensor's largest
    entry, since an entry near zero carries the rounding error of the large terms that cancelled in it (the toy models'
    outputs reach about 50, where float32 rounding alone is some 1e-5)."""
    scale = max(1.0, want.detach().abs().max().item())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


def _config(config_cls, kwargs, **overrides) -> PeftConfig:
    return config_cls(**{"init_weights": False, **kwargs, **overrides})


def _make(model_fn, config_cls, kwargs, seed: int = 0, **overrides) -> tuple[nn.Module, PeftModel]:
    """A copy of the base model as it was, and the PeftModel made from it."""
    torch.manual_seed(seed)
    base = model_fn()
    pristine = copy.deepcopy(base)
    return pristine, get_peft_model(base, _config(config_cls, kwargs, **overrides))


def _adapter_param_names(model: PeftModel, adapter: str = "default") -> set[str]:
    """Names of the adapter's own tensors: the entries of every tuner layer's adapter containers."""
    names = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for attr in module.adapter_layer_names:
            if adapter in getattr(module, attr, {}):
                names.add(f"{module_name}.{attr}.{adapter}")
    return names


def _loss(model: nn.Module, inputs) -> torch.Tensor:
    return output_of(model, inputs).float().pow(2).mean()


def _train(model: nn.Module, inputs, steps: int = 3, lr: float = 1e-2) -> None:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        _loss(model, inputs).backward()
        optimizer.step()
        optimizer.zero_grad()


def _eval_output(model: nn.Module, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return output_of(model, inputs)


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, detached copies."""
    found = {n: p.detach().clone() for n, p in model.named_parameters()}
    found.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return found


# ---- creation, forward, backward, training --------------------------------------------------------------------------


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_identity_at_initialisation(model_fn, config_cls, kwargs):
    pristine, model = _make(model_fn, config_cls, kwargs, init_weights=True)
    inputs = example_inputs(model)
    torch.testing.assert_close(_eval_output(model, inputs), _eval_output(pristine, inputs), rtol=0, atol=1e-7)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_forward_and_backward_reach_only_the_adapter(model_fn, config_cls, kwargs):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    out = output_of(model, inputs)
    assert out.shape == output_of(pristine, inputs).shape and torch.isfinite(out).all()
    assert not torch.allclose(out, output_of(pristine, inputs))  # init_weights=False: the adapter is not a no-op
    out.float().pow(2).mean().backward()
    adapter = _adapter_param_names(model)
    assert adapter and {n for n, p in model.named_parameters() if p.requires_grad} == adapter
    for name, parameter in model.named_parameters():
        if name in adapter:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
            assert parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_training_changes_only_adapter_parameters(model_fn, config_cls, kwargs):
    _, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    before = _tensors(model)
    _train(model, inputs)
    after = _tensors(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == _adapter_param_names(model)  # every adapter tensor moved; nothing else, no buffer either


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_trainable_count_is_the_sum_over_adapter_layers(model_fn, config_cls, kwargs, capsys):
    _, model = _make(model_fn, config_cls, kwargs)
    trainable, total = model.get_nb_trainable_parameters()
    adapter_values = sum(p.numel() for n, p in model.named_parameters() if n in _adapter_param_names(model))
    assert trainable == adapter_values == sum(report.trainable for report in adapter_report(model, measure_rank=False))
    model.print_trainable_parameters()
    assert f"trainable params: {trainable:,d} || all params: {total:,d}" in capsys.readouterr().out


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_gradient_checkpointing_gives_the_same_gradients(model_fn, config_cls, kwargs):
    _, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    expected = torch.autograd.grad(_loss(model, inputs), params)
    layer = next(m for m in model.modules() if isinstance(m, BaseTunerLayer))
    calls = []
    layer.register_forward_hook(lambda *_: calls.append(1))
    base = model.get_base_model()
    if hasattr(base, "activation_checkpointing_enable"):  # a transformers model: its own checkpointing
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        loss = _loss(model, inputs)
    else:  # a plain module: recompute the whole forward in backward
        loss = checkpoint(lambda **kw: output_of(model, kw), use_reentrant=False, **inputs).float().pow(2).mean()
    grads = torch.autograd.grad(loss, params)
    assert len(calls) == 2  # the adapted layer ran again during backward: activations were not kept
    for got, want in zip(grads, expected):
        _assert_tight(got, want)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_model(model_fn, config_cls, kwargs, dtype):
    torch.manual_seed(0)
    base = model_fn().to(dtype)
    model = get_peft_model(base, _config(config_cls, kwargs))
    adapter = _adapter_param_names(model)
    # PEFT's autocast_adapter_dtype (default): trained tensors in float32, the base model stays in its dtype.
    assert {p.dtype for n, p in model.named_parameters() if n in adapter} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if n not in adapter and p.is_floating_point()} == {dtype}
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in example_inputs(model).items()}
    out = output_of(model, inputs)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in model.named_parameters() if n in adapter)
    with torch.no_grad():
        unmerged = output_of(model, inputs).float()
        merged = output_of(model.merge_and_unload(), inputs).float()
    torch.testing.assert_close(merged, unmerged, rtol=0.05, atol=0.05 * unmerged.abs().max().item())

    torch.manual_seed(0)
    kept = get_peft_model(model_fn().to(dtype), _config(config_cls, kwargs), autocast_adapter_dtype=False)
    assert {p.dtype for n, p in kept.named_parameters() if n in _adapter_param_names(kept)} == {dtype}


# ---- merging --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_merge_unmerge_is_exact_and_idempotent(model_fn, config_cls, kwargs):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    expected = _eval_output(model, inputs)
    base_weights = {n: t for n, t in _tensors(model).items() if n.endswith("base_layer.weight")}
    model.merge_adapter()
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(layer.merged for layer in layers)
    _assert_tight(_eval_output(model, inputs), expected)
    with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do"):
        model.merge_adapter()  # a second merge must not add the update twice
    _assert_tight(_eval_output(model, inputs), expected)
    model.unmerge_adapter()
    assert not any(layer.merged for layer in layers)
    after = _tensors(model)
    for name, weight in base_weights.items():
        _assert_tight(after[name], weight)
    _assert_tight(_eval_output(model, inputs), expected)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_safe_merge_matches_and_refuses_a_broken_adapter(model_fn, config_cls, kwargs):
    _, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    expected = _eval_output(model, inputs)
    model.merge_adapter(safe_merge=True)
    _assert_tight(_eval_output(model, inputs), expected)
    model.unmerge_adapter()

    for bad in (float("nan"), float("inf")):
        _, broken = _make(model_fn, config_cls, kwargs)
        base_weights = {n: t for n, t in _tensors(broken).items() if n.endswith("base_layer.weight")}
        with torch.no_grad():
            for name, parameter in broken.named_parameters():
                if name in _adapter_param_names(broken):
                    parameter.view(-1)[0] = bad
        # PEFT's own wording, which PEFT's tests and users' code match on.
        with pytest.raises(ValueError, match=r"^NaNs detected in the merged weights\. The adapter default seems to be"):
            broken.merge_and_unload(safe_merge=True)
        after = _tensors(broken)
        assert all(torch.equal(after[n], w) for n, w in base_weights.items())  # the weights were left alone


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_merge_and_unload_and_unload(model_fn, config_cls, kwargs):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    expected = _eval_output(model, inputs)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert type(merged) is type(pristine)
    assert {n for n, _ in merged.named_parameters()} == {n for n, _ in pristine.named_parameters()}
    _assert_tight(_eval_output(merged, inputs), expected)

    pristine, model = _make(model_fn, config_cls, kwargs)
    unloaded = model.unload()  # the base model as it was, weights untouched
    assert not any(isinstance(m, BaseTunerLayer) for m in unloaded.modules())
    torch.testing.assert_close(_eval_output(unloaded, inputs), _eval_output(pristine, inputs), rtol=0, atol=0)


# ---- saving and loading ---------------------------------------------------------------------------------------------


def _reload(pristine: nn.Module, path, seed: int = 1234, **kwargs) -> PeftModel:
    """Load the adapter onto a copy of the base model, under another global seed (nothing may depend on it)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(copy.deepcopy(pristine), path, **kwargs)
    assert not any("missing adapter keys" in str(w.message) for w in caught)
    return loaded


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pickle"])
def test_save_and_load_under_another_seed(model_fn, config_cls, kwargs, safe_serialization, tmp_path):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    _train(model, inputs, steps=1)
    expected = _eval_output(model, inputs)
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)

    weights = "adapter_model.safetensors" if safe_serialization else "adapter_model.bin"
    assert {p.name for p in tmp_path.iterdir()} == {weights, "adapter_config.json", "README.md"}
    card = yaml.safe_load(re.search(r"---\n(.*?)\n---", (tmp_path / "README.md").read_text(), re.DOTALL).group(1))
    assert card["library_name"] == "peft"  # PEFT writes the card from config.peft_type.value
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == model.peft_config["default"].peft_type.value

    loaded = _reload(pristine, tmp_path)
    config = loaded.peft_config["default"]
    assert type(config) is config_cls and config.inference_mode
    assert config.peft_type == model.peft_config["default"].peft_type
    assert not any(p.requires_grad for p in loaded.parameters())
    original, reloaded = _tensors(model), _tensors(loaded)
    assert original.keys() == reloaded.keys()
    for name in original:
        torch.testing.assert_close(reloaded[name], original[name], rtol=0, atol=0)
    torch.testing.assert_close(_eval_output(loaded, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_load_with_the_config_object(model_fn, config_cls, kwargs, tmp_path):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    expected = _eval_output(model, inputs)
    model.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(tmp_path)
    assert type(config) is config_cls  # PEFT finds the class from the saved peft_type
    loaded = _reload(pristine, tmp_path, config=config, is_trainable=False)
    assert loaded.peft_config["default"] is config and config.inference_mode
    torch.testing.assert_close(_eval_output(loaded, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_load_trainable_and_train_further(model_fn, config_cls, kwargs, tmp_path):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    model.save_pretrained(tmp_path / "first")
    loaded = _reload(pristine, tmp_path / "first", is_trainable=True)
    assert not loaded.peft_config["default"].inference_mode
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == _adapter_param_names(loaded)
    before_tensors, before = _tensors(loaded), _eval_output(loaded, inputs)
    loaded.train()
    _train(loaded, inputs)
    after_tensors = _tensors(loaded)
    changed = {n for n in before_tensors if not torch.equal(before_tensors[n], after_tensors[n])}
    assert changed == _adapter_param_names(loaded)
    trained = _eval_output(loaded, inputs)
    assert not torch.allclose(trained, before)
    loaded.save_pretrained(tmp_path / "second")
    torch.testing.assert_close(_eval_output(_reload(pristine, tmp_path / "second"), inputs), trained, rtol=0, atol=0)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_load_the_same_adapter_several_times(model_fn, config_cls, kwargs, tmp_path):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    expected = _eval_output(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = _reload(pristine, tmp_path)
    for name in ("other", "yet-another"):
        assert loaded.load_adapter(tmp_path, adapter_name=name).missing_keys == []
        loaded.set_adapter(name)
        torch.testing.assert_close(_eval_output(loaded, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_two_adapters_saved_together_and_selected(model_fn, config_cls, kwargs, tmp_path):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    torch.manual_seed(1)
    model.add_adapter("other", _config(config_cls, kwargs))
    outputs = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        outputs[name] = _eval_output(model, inputs)
    assert not torch.allclose(outputs["default"], outputs["other"])
    model.save_pretrained(tmp_path / "both")
    assert (tmp_path / "both" / "other" / "adapter_config.json").exists()
    loaded = _reload(pristine, tmp_path / "both")
    loaded.load_adapter(tmp_path / "both" / "other", adapter_name="other")
    for name, expected in outputs.items():
        loaded.set_adapter(name)
        torch.testing.assert_close(_eval_output(loaded, inputs), expected, rtol=0, atol=0)

    model.save_pretrained(tmp_path / "one", selected_adapters=["default"])
    assert set(_reload(pristine, tmp_path / "one").peft_config) == {"default"}
    assert not (tmp_path / "one" / "other").exists()


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_low_cpu_mem_usage_load(model_fn, config_cls, kwargs, tmp_path):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    expected = _eval_output(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = _reload(pristine, tmp_path, low_cpu_mem_usage=True)
    loaded.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    assert {t.device.type for t in _tensors(loaded).values()} == {"cpu"}  # nothing left on the meta device
    for name in ("default", "other"):
        loaded.set_adapter(name)
        torch.testing.assert_close(_eval_output(loaded, inputs), expected, rtol=0, atol=0)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_inject_adapter_in_model(model_fn, config_cls, kwargs):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    config = _config(config_cls, kwargs)
    if PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type].uses_shared_state:
        # Shared frozen factors live on the tuner, which direct injection does not keep.
        with pytest.raises(ValueError, match="shared state stored on the tuner. Please use `get_peft_model`"):
            inject_adapter_in_model(config, copy.deepcopy(pristine))
        return
    torch.manual_seed(0)
    injected = inject_adapter_in_model(config, copy.deepcopy(pristine))
    assert sum(isinstance(m, BaseTunerLayer) for m in injected.modules()) == sum(
        isinstance(m, BaseTunerLayer) for m in model.modules()
    )
    with torch.no_grad():
        for name, parameter in injected.named_parameters():  # same adapter values as the PeftModel's
            parameter.copy_(model.get_parameter(f"base_model.model.{name}"))
    torch.testing.assert_close(_eval_output(injected, inputs), _eval_output(model, inputs), rtol=0, atol=0)


# ---- adapters: disabling, several, deleting, names, inference mode --------------------------------------------------


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_disable_adapter_gives_the_base_model(model_fn, config_cls, kwargs):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    base_out, adapted = _eval_output(pristine, inputs), _eval_output(model, inputs)
    with model.disable_adapter():
        torch.testing.assert_close(_eval_output(model, inputs), base_out, rtol=0, atol=0)
    torch.testing.assert_close(_eval_output(model, inputs), adapted, rtol=0, atol=0)
    model.merge_adapter()
    with model.disable_adapter():  # a merged adapter is unmerged first
        _assert_tight(_eval_output(model, inputs), base_out)
    _assert_tight(_eval_output(model, inputs), adapted)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_several_adapters(model_fn, config_cls, kwargs):
    pristine, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    out_default = _eval_output(model, inputs)
    torch.manual_seed(1)
    model.add_adapter("other", _config(config_cls, kwargs))
    assert model.active_adapters == ["default"]
    # A further adapter does not train until it is made active, and then it alone trains.
    assert {n for n, p in model.named_parameters() if p.requires_grad} == _adapter_param_names(model, "default")
    model.set_adapter("other")
    assert model.active_adapters == ["other"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == _adapter_param_names(model, "other")
    out_other = _eval_output(model, inputs)
    assert not torch.allclose(out_other, out_default)
    model.set_adapter("default")
    torch.testing.assert_close(_eval_output(model, inputs), out_default, rtol=0, atol=0)

    # Both at once: the two updates add up, as merging both shows.
    model.base_model.set_adapter(["default", "other"])
    both = _eval_output(model, inputs)
    model.merge_adapter(["default", "other"])
    _assert_tight(_eval_output(model, inputs), both)
    model.unmerge_adapter()
    assert not torch.allclose(both, out_default) and not torch.allclose(both, out_other)


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_delete_adapter_leaves_the_model_as_before(model_fn, config_cls, kwargs):
    _, model = _make(model_fn, config_cls, kwargs)
    inputs = example_inputs(model)
    expected, before = _eval_output(model, inputs), _tensors(model)
    model.add_adapter("other", _config(config_cls, kwargs))
    model.set_adapter("other")
    model.merge_adapter()
    with pytest.raises(ValueError, match=re.escape("Cannot delete adapter(s) ['other'] while they are merged")):
        model.delete_adapter("other")
    model.unmerge_adapter()
    with pytest.warns(UserWarning, match="Adapter other was active which is now deleted"):
        model.delete_adapter("other")  # the active one: the remaining adapter takes over
    assert model.active_adapters == ["default"] and set(model.peft_config) == {"default"}
    after = _tensors(model)
    assert after.keys() == before.keys()  # no parameter or buffer of the deleted adapter is left
    for name in before:  # base weights went through a merge and an unmerge
        _assert_tight(after[name], before[name])
    _assert_tight(_eval_output(model, inputs), expected)
    with pytest.raises(ValueError, match="Adapter unknown does not exist"):
        model.delete_adapter("unknown")


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_adapter_name_and_inference_mode(model_fn, config_cls, kwargs):
    torch.manual_seed(0)
    named = get_peft_model(model_fn(), _config(config_cls, kwargs), adapter_name="test-adapter")
    trained = {n for n, p in named.named_parameters() if p.requires_grad}
    assert trained and all(".test-adapter" in n for n in trained)
    torch.manual_seed(0)
    frozen = get_peft_model(model_fn(), _config(config_cls, kwargs, inference_mode=True))
    assert not any(p.requires_grad for p in frozen.parameters())


# ---- the config and the PEFT type -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_config_round_trips(model_fn, config_cls, kwargs, tmp_path):
    config = _config(config_cls, kwargs)
    assert config.peft_type.value == config.peft_type == config.peft_type.name  # like a PeftType member
    config.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is config_cls and loaded.to_dict() == config.to_dict()
    assert loaded.peft_type is config.peft_type
    assert PeftConfig.from_peft_type(**config.to_dict()).to_dict() == config.to_dict()
    for twin in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert twin.to_dict() == config.to_dict() and twin.peft_type is config.peft_type


@pytest.mark.parametrize("model_fn, config_cls, kwargs", CASES)
def test_mixed_adapter_model_is_refused_with_peft_message(model_fn, config_cls, kwargs):
    config = _config(config_cls, kwargs)
    message = f"The provided `peft_type` '{config.peft_type.value}' is not compatible with the `PeftMixedModel`."
    with pytest.raises(ValueError, match=re.escape(message)):
        get_peft_model(model_fn(), config, mixed=True)


@pytest.mark.parametrize("config_cls", CONFIG_CLASSES)
def test_layer_index_zero_is_a_layer(config_cls):
    config = config_cls(target_modules=["q_proj"], layers_to_transform=0, layers_pattern="layers")
    assert config.layers_to_transform == 0
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(), config)
    adapted = sorted(n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer))
    assert adapted == ["base_model.model.model.layers.0.self_attn.q_proj"]
    with pytest.raises(ValueError, match="When `layers_pattern` is specified, `layers_to_transform` must also be"):
        config_cls(target_modules=["q_proj"], layers_pattern="layers")
