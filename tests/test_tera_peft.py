"""TeRA behaves like a PEFT tuner: the checks PEFT's own tuner tests make, on toy models."""

import json
import os

import pytest
import torch
from peft import PeftModel, get_peft_model

from tera import SharedFactorsMismatch, TensorisationError, TeraConfig, TeraLayer
from tera.analysis import adapter_report
from tera.factors import generate_factors
from tera.layer import factor_group

from .tera_reference import reference_delta
from .toy_models import TOY_TARGETS, ToyMLP, tiny_llama, tiny_roberta


def _peft(config=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    base = ToyMLP()
    return base, get_peft_model(base, config or TeraConfig(target_modules=TOY_TARGETS, **kwargs))


def _train(model, x, steps=5, lr=5e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


X = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("placement", ["rank", "mode"])
@pytest.mark.parametrize("path", ["auto", "factorised", "merged"])
def test_output_unchanged_at_initialisation(placement, path):
    torch.manual_seed(0)
    base = ToyMLP()
    expected = base(X)
    model = get_peft_model(
        base, TeraConfig(target_modules=TOY_TARGETS, diagonal_placement=placement, forward_path=path)
    )
    torch.testing.assert_close(model(X), expected)


def test_only_lambdas_change_during_training():
    _, model = _peft()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, X)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".tera_lambda." in k for k in changed)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"base_model.model.{t}.tera_lambda.default" for t in TOY_TARGETS
    }


@pytest.mark.parametrize("path", ["factorised", "merged"])
def test_merge_unmerge_and_merge_and_unload_match_unmerged_forward(path):
    _, model = _peft(forward_path=path)
    _train(model, X)
    with torch.no_grad():
        expected = model(X)
        model.merge_adapter()
        torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-6)
        model.unmerge_adapter()
        torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-6)
        merged = model.merge_and_unload()
        assert not any(isinstance(m, TeraLayer) for m in merged.modules())
        torch.testing.assert_close(merged(X), expected, rtol=1e-5, atol=1e-6)


def test_safe_merge_matches():
    _, model = _peft()
    _train(model, X)
    with torch.no_grad():
        expected = model(X)
        model.merge_adapter(safe_merge=True)
        torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("save_projection", [False, True])
@pytest.mark.parametrize("share_factors", [True, False])
def test_save_and_reload_under_another_seed(tmp_path, save_projection, share_factors):
    _, model = _peft(save_projection=save_projection, share_factors=share_factors)
    _train(model, X)
    model.eval()
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path)

    torch.manual_seed(1234)  # a different global seed must not matter: factors come from projection_prng_key
    fresh = ToyMLP()
    fresh.load_state_dict(_base_state(model))
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected)

    size = os.path.getsize(tmp_path / "adapter_model.safetensors")
    if save_projection:
        assert size > 4 * sum(t.numel() for t in model.base_model.tera_shared.values())
    else:
        assert size < 2048


def _base_state(model):
    """The base model's own weights (without adapter entries), to rebuild the same base model."""
    return {
        key.replace(".base_layer", ""): value
        for key, value in model.base_model.model.state_dict().items()
        if ".tera_" not in key
    }


def test_disable_adapter_restores_base_output():
    _, model = _peft()
    _train(model, X)
    torch.manual_seed(0)
    reference = ToyMLP()  # the same base weights as the one _peft wrapped
    with torch.no_grad():
        expected = reference(X)
        with model.disable_adapter():
            torch.testing.assert_close(model(X), expected)
        assert not torch.allclose(model(X), expected)


def test_two_adapters_switched_with_set_adapter():
    _, model = _peft()
    _train(model, X)
    model.add_adapter("other", TeraConfig(target_modules=TOY_TARGETS, init_weights=False, core_rank_ratio=0.5))
    with torch.no_grad():
        out_default = model(X)
        model.set_adapter("other")
        out_other = model(X)
        assert not torch.allclose(out_default, out_other)
        model.set_adapter("default")
        torch.testing.assert_close(model(X), out_default)
    # only the active adapter trains
    assert all("default" in n for n, p in model.named_parameters() if p.requires_grad)
    layer = model.base_model.model.q
    assert set(layer.tera_lambda) == {"default", "other"}
    assert layer.tera_lambda["other"].numel() == 2 + 2 + 2 + 2  # 16 = 4 x 4 per side, ranks halved


def test_get_delta_weight_on_every_layer_and_print_trainable(capsys):
    _, model = _peft(init_weights=False)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, TeraLayer)}
    assert len(layers) == 3
    for layer in layers.values():
        delta = layer.get_delta_weight("default")
        assert delta.shape == layer.get_base_layer().weight.shape
        assert torch.isfinite(delta).all() and delta.abs().sum() > 0
    model.print_trainable_parameters()
    # 16 = 4x4 -> ranks 4+4+4+4; 24 = 4x6 -> 4+6 ; see test_parameter_count_formula
    assert "trainable params: 52 " in capsys.readouterr().out


def test_parameter_count_formula():
    for placement, per_layer in (("rank", {"q": 16, "up": 18, "down": 18}), ("mode", {"q": 16, "up": 18, "down": 18})):
        _, model = _peft(diagonal_placement=placement)
        got = {
            n.split(".")[-1]: m.tera_lambda["default"].numel()
            for n, m in model.named_modules()
            if isinstance(m, TeraLayer)
        }
        assert got == per_layer
    _, shrunk = _peft(core_rank_ratio=0.5)
    trainable, _ = shrunk.get_nb_trainable_parameters()
    assert trainable == (2 + 2 + 2 + 2) + (2 + 3 + 2 + 2) + (2 + 2 + 2 + 3)
    _, mode_shrunk = _peft(core_rank_ratio=0.5, diagonal_placement="mode")
    assert mode_shrunk.get_nb_trainable_parameters()[0] == 16 + 18 + 18  # mode side: sum I_n, whatever the ranks


def test_bf16_forward_is_finite():
    torch.manual_seed(0)
    base = ToyMLP().to(torch.bfloat16)
    model = get_peft_model(base, TeraConfig(target_modules=TOY_TARGETS, init_weights=False))
    for path in ("factorised", "merged"):
        for layer in model.modules():
            if isinstance(layer, TeraLayer):
                layer.tera_forward_path["default"] = path
        out = model(X.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        out.float().sum().backward()


def test_tiny_llama_with_attention_and_mlp_shapes_round_trips(tmp_path):
    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    model = get_peft_model(tiny_llama(), TeraConfig(target_modules=targets, init_weights=False))
    plans = {m.tera_plan["default"].key for m in model.modules() if isinstance(m, TeraLayer)}
    assert len(plans) == 3  # 32x32, 48x32, 32x48
    assert len(model.base_model.tera_shared) == 3 * 5  # one core and four factors per plan, not per layer
    ids = torch.randint(0, 64, (2, 9))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_tiny_roberta_query_beside_intermediate():
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_roberta(), TeraConfig(target_modules=["query", "intermediate.dense"], modules_to_save=["classifier"])
    )
    shapes = {m.get_base_layer().weight.shape for m in model.modules() if isinstance(m, TeraLayer)}
    assert shapes == {torch.Size([24, 24]), torch.Size([36, 24])}
    out = model(input_ids=torch.randint(0, 64, (2, 8)), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert any("classifier" in n for n, p in model.named_parameters() if p.requires_grad)


# ---- errors: one clear sentence each ----------------------------------------------------------------------------


def test_error_weight_that_cannot_be_split():
    with pytest.raises(TensorisationError, match="cannot be split into 2 factors larger than 1"):
        get_peft_model(ToyMLP(), TeraConfig(target_modules=["head"]))  # 3 x 16: 3 is prime
    with pytest.raises(TensorisationError, match="does not multiply out to 16 x 16"):
        get_peft_model(ToyMLP(), TeraConfig(target_modules=["q"], tensor_shape={"16x16": [[4, 3], [4, 4]]}))


def test_error_target_not_linear():
    with pytest.raises(TypeError, match="is a Embedding, not an nn.Linear"):
        get_peft_model(ToyMLP(), TeraConfig(target_modules=["emb"]))


def test_error_second_adapter_conflicts_with_shared_factors():
    _, model = _peft()
    with pytest.raises(ValueError, match="projection_prng_key=5 but adapter 'default' already set the shared"):
        model.add_adapter("other", TeraConfig(target_modules=TOY_TARGETS, projection_prng_key=5))
    with pytest.raises(ValueError, match="save_projection=True but adapter 'default'"):
        model.add_adapter("third", TeraConfig(target_modules=TOY_TARGETS, save_projection=True))


def test_error_checksum_mismatch_on_load(tmp_path):
    _, model = _peft()
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    key = next(iter(saved["projection_checksums"]))
    saved["projection_checksums"][key] = "0" * 16
    config_path.write_text(json.dumps(saved))
    with pytest.raises(SharedFactorsMismatch, match="differ from those the adapter was trained with"):
        PeftModel.from_pretrained(ToyMLP(), tmp_path)


def test_error_bad_config_values():
    with pytest.raises(ValueError, match="diagonal_placement must be one of"):
        TeraConfig(target_modules=["q"], diagonal_placement="both")
    with pytest.raises(ValueError, match="core_rank_ratio must lie in"):
        TeraConfig(target_modules=["q"], core_rank_ratio=0.0)
    with pytest.raises(ValueError, match="forward_path must be one of"):
        TeraConfig(target_modules=["q"], forward_path="fast")


def test_delete_adapter_and_inference_mode_load(tmp_path):
    _, model = _peft()
    _train(model, X)
    model.add_adapter("other", TeraConfig(target_modules=TOY_TARGETS))
    model.delete_adapter("other")
    assert all(set(m.tera_lambda) == {"default"} for m in model.modules() if isinstance(m, TeraLayer))
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(ToyMLP(), tmp_path)  # is_trainable=False: nothing trains
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected)


class Llama7bLayerShapes(torch.nn.Module):
    """q_proj, up_proj and down_proj at their real LLaMA-2-7B sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(4096, 4096, bias=False)
        self.up_proj = torch.nn.Linear(4096, 11008, bias=False)
        self.down_proj = torch.nn.Linear(11008, 4096, bias=False)

    def forward(self, x):
        return self.down_proj(self.up_proj(self.q_proj(x)))


def test_real_llama_7b_layer_shapes():
    with torch.device("meta"):
        shell = Llama7bLayerShapes()
    model = shell.to_empty(device="cpu")
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.01)
    model = get_peft_model(model, TeraConfig(target_modules=["q_proj", "up_proj", "down_proj"], init_weights=False))
    plans = {n.split(".")[-1]: m.tera_plan["default"] for n, m in model.named_modules() if isinstance(m, TeraLayer)}
    assert plans["q_proj"].modes == (64, 64, 64, 64)
    assert plans["up_proj"].modes == (86, 128, 64, 64) and plans["down_proj"].modes == (64, 64, 86, 128)
    assert model.get_nb_trainable_parameters()[0] == 256 + 342 + 342
    x = torch.randn(1, 2, 4096)
    out = model(x)  # two tokens: the factorised path
    assert out.shape == (1, 2, 4096) and torch.isfinite(out).all()
    delta = model.base_model.model.up_proj.get_delta_weight("default")
    assert delta.shape == (11008, 4096)
    with torch.no_grad():
        expected = x[0] @ model.base_model.model.q_proj.get_base_layer().weight.t()
        expected = expected + x[0] @ model.base_model.model.q_proj.get_delta_weight("default").t()
        torch.testing.assert_close(model.base_model.model.q_proj(x[0]), expected, rtol=1e-4, atol=1e-4)


LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def _tera_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, TeraLayer)}


def test_per_layer_factors_are_drawn_per_layer_and_match_the_reference():
    torch.manual_seed(0)
    config = TeraConfig(target_modules=LLAMA_TARGETS, share_factors=False, init_weights=False)
    model = get_peft_model(tiny_llama(), config)
    layers = _tera_layers(model)
    assert len(layers) == 2 * 5
    assert len(model.base_model.tera_shared) == len(layers) * 5  # one core and four factors per layer
    assert len(config.projection_checksums) == len(layers)
    q0, q1 = (layers[f"base_model.model.model.layers.{i}.self_attn.q_proj"] for i in (0, 1))
    assert q0.tera_plan["default"] == q1.tera_plan["default"]  # same shape and plan ...
    core0, _ = q0.shared_factors("default", torch.float32, torch.device("cpu"))
    core1, _ = q1.shared_factors("default", torch.float32, torch.device("cpu"))
    assert not torch.allclose(core0, core1)  # ... but each layer has its own frozen factors

    for name, layer in layers.items():
        plan = layer.tera_plan["default"]
        module_name = name.removeprefix("base_model.model.")
        drawn = generate_factors(plan, 0, stream=factor_group(plan, module_name, share_factors=False))
        lambdas = [lam.detach().double() for lam in layer.lambdas("default")]
        expected = reference_delta(plan, drawn.core.double(), [f.double() for f in drawn.factors], lambdas, "rank", 1.0)
        torch.testing.assert_close(layer.get_delta_weight("default").double(), expected, rtol=1e-5, atol=1e-6)

    # Same trained values and rank bound as with shared factors, and the bound is reached.
    torch.manual_seed(0)
    shared = get_peft_model(tiny_llama(), TeraConfig(target_modules=LLAMA_TARGETS, init_weights=False))
    assert model.get_nb_trainable_parameters() == shared.get_nb_trainable_parameters()
    reports = adapter_report(model)
    assert [r.rank for r in reports] == [r.rank_bound for r in reports]
    assert [r.rank_bound for r in reports] == [r.rank_bound for r in adapter_report(shared)]


def test_per_layer_factors_do_not_depend_on_which_other_layers_are_adapted():
    def layer1_core(layers_to_transform):
        torch.manual_seed(0)
        config = TeraConfig(target_modules=["q_proj"], share_factors=False, layers_to_transform=layers_to_transform)
        layers = _tera_layers(get_peft_model(tiny_llama(), config))
        layer = layers["base_model.model.model.layers.1.self_attn.q_proj"]
        return layer.shared_factors("default", torch.float32, torch.device("cpu"))[0]

    torch.testing.assert_close(layer1_core([1]), layer1_core([0, 1]), rtol=0, atol=0)


def test_shared_factors_are_one_object_per_plan():
    torch.manual_seed(0)
    layers = _tera_layers(get_peft_model(tiny_llama(), TeraConfig(target_modules=["q_proj"])))
    cores = [m.shared_factors("default", torch.float32, torch.device("cpu"))[0] for m in layers.values()]
    assert len(cores) == 2 and cores[0].data_ptr() == cores[1].data_ptr()


class _Wrapped(torch.nn.Module):
    """ToyMLP under another attribute name: same shapes, other module names."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ToyMLP()

    def forward(self, x):
        return self.inner(x)


def test_error_per_layer_adapter_loaded_onto_other_module_names(tmp_path):
    _, model = _peft(share_factors=False)
    model.save_pretrained(tmp_path)
    with pytest.raises(SharedFactorsMismatch, match="trained on a model whose modules are named differently"):
        PeftModel.from_pretrained(_Wrapped(), tmp_path)


def test_per_layer_adapter_added_beside_a_loaded_shared_one(tmp_path):
    _, model = _peft()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(ToyMLP(), tmp_path)  # its config arrives with recorded checksums
    loaded.add_adapter("per_layer", TeraConfig(target_modules=TOY_TARGETS, share_factors=False))
    layer = loaded.base_model.model.q
    assert layer.tera_factor_group["default"] != layer.tera_factor_group["per_layer"]
    assert len(loaded.base_model.tera_shared) == 3 * 5 + 3 * 5  # three shared plans, three per-layer groups
