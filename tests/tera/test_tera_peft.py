"""What is particular to TeRA as a PEFT tuner: its dW against a float64 reference, trained-value counts, tensor plans,
the shared factors (one set per plan, freed when unused, verified on every load) and its error messages.

The generic PEFT tuner contract (merging, saving, several adapters, dtypes, ...) is checked for every TeRA
configuration in ``test_contract.py``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import PeftModel, get_peft_model

from tera import SharedFactorsMismatch, TensorisationError, TeraConfig, TeraLayer, TeraPeftType, balanced_split
from tera.analysis import adapter_report, frozen_factor_values
from tera.factors import generate_factors
from tera.layer import factor_group
from tera.reference import reference_delta
from tera.tensorize import plan_for_weight
from tests.helpers import ROOT
from tests.toy_models import TOY_TARGETS, ToyClassifier, ToyMLP, tiny_llama, tiny_roberta

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
X = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(1))


def _peft(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("target_modules", TOY_TARGETS)
    kwargs.setdefault(
        "layout", "balanced"
    )  # this file counts the balanced layout's plans (tests/test_tera_layout.py: the paper's)
    return get_peft_model(ToyMLP(), TeraConfig(**kwargs))


def _tera_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, TeraLayer)}


def _out(model, x=X):
    model.eval()
    with torch.no_grad():
        return model(x)


# ---- dW equals the float64 Kronecker reference, on every layer ----------------------------------------------------


@pytest.mark.parametrize("share_factors", [True, False])
@pytest.mark.parametrize("placement", ["rank", "mode"])
def test_every_layer_matches_the_float64_reference(share_factors, placement):
    torch.manual_seed(0)
    config = TeraConfig(
        layout="balanced",
        target_modules=LLAMA_TARGETS,
        share_factors=share_factors,
        diagonal_placement=placement,
        init_weights=False,
        scaling=0.7,
        core_rank_ratio=0.5,
    )
    model = get_peft_model(tiny_llama(), config)
    layers = _tera_layers(model)
    assert len(layers) == 2 * 5
    for name, layer in layers.items():
        plan = layer.tera_plan["default"]
        group = factor_group(plan, name.removeprefix("base_model.model."), share_factors)
        drawn = generate_factors(plan, 0, stream=group)
        lambdas = [lam.detach().double() for lam in layer.lambdas("default")]
        expected = reference_delta(plan, drawn.core, drawn.factors, lambdas, placement, 0.7)
        torch.testing.assert_close(layer.get_delta_weight("default").double(), expected, rtol=1e-5, atol=1e-6)
        x = torch.randn(3, layer.in_features)
        with torch.no_grad():
            want = layer.get_base_layer()(x).double() + x.double() @ expected.t()
            torch.testing.assert_close(layer(x).double(), want, rtol=1e-4, atol=1e-5)


# ---- trained values and plans ---------------------------------------------------------------------------------------


def test_parameter_count_formula(capsys):
    for placement in ("rank", "mode"):  # full core: R_n = I_n, so both placements train sum I_n
        got = {
            n.split(".")[-1]: m.num_trainable("default")
            for n, m in _tera_layers(_peft(diagonal_placement=placement)).items()
        }
        assert got == {"q": 4 + 4 + 4 + 4, "up": 4 + 6 + 4 + 4, "down": 4 + 4 + 4 + 6}
    shrunk = _peft(core_rank_ratio=0.5)
    assert shrunk.get_nb_trainable_parameters()[0] == (2 + 2 + 2 + 2) + (2 + 3 + 2 + 2) + (2 + 2 + 2 + 3)
    mode_shrunk = _peft(core_rank_ratio=0.5, diagonal_placement="mode")
    assert mode_shrunk.get_nb_trainable_parameters()[0] == 16 + 18 + 18  # mode side: sum I_n, whatever the ranks
    _peft().print_trainable_parameters()
    assert "trainable params: 52 " in capsys.readouterr().out


def test_one_set_of_factors_per_plan():
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(), TeraConfig(layout="balanced", target_modules=LLAMA_TARGETS))
    plans = {m.tera_plan["default"].key for m in model.modules() if isinstance(m, TeraLayer)}
    assert len(plans) == 3  # 32x32, 48x32, 32x48
    assert len(model.base_model.tera_shared) == 3 * 5  # one core and four factors per plan, not per layer
    cores = [m.shared_factors("default", torch.float32, torch.device("cpu"))[0] for m in _tera_layers(model).values()]
    assert len({core.data_ptr() for core in cores}) == 3


@pytest.mark.parametrize(
    "dim, order, split",
    [(4096, 2, (64, 64)), (11008, 2, (86, 128)), (48, 3, (3, 4, 4)), (2, 2, (1, 2)), (3, 2, (1, 3)), (1, 2, (1, 1))]
    + [(7, 3, (1, 1, 7)), (6, 3, (1, 2, 3)), (32, 6, (1, 2, 2, 2, 2, 2))],
)
def test_balanced_split_pads_with_size_one_modes_only_when_it_must(dim, order, split):
    assert balanced_split(dim, order) == split


@pytest.mark.parametrize("d_out, d_in", [(2, 20), (3, 16), (1, 7), (7, 1), (13, 17)])
def test_any_linear_shape_works_with_the_defaults(d_out, d_in):
    """A 20 -> 2 head, primes and size 1: size-1 modes, no hand-written tensor_shape, and the update still reaches
    full rank."""
    torch.manual_seed(0)
    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(d_in, d_out)), TeraConfig(layout="balanced", target_modules=["0"])
    )
    layer = model.base_model.model[0]
    plan = layer.tera_plan["default"]
    assert plan.d_out == d_out and plan.d_in == d_in and len(plan.modes) == 4
    assert plan.rank_bound() == min(d_out, d_in)
    x = torch.randn(5, d_in)
    torch.testing.assert_close(_out(model, x), layer.get_base_layer()(x))  # dW = 0 at the start
    with torch.no_grad():
        layer.tera_lambda["default"].uniform_(0.5, 1.5)
    (report,) = adapter_report(model)
    assert report.rank == report.rank_bound == min(d_out, d_in)


def test_all_linear_on_a_small_classifier():
    torch.manual_seed(0)
    model = get_peft_model(
        ToyClassifier(), TeraConfig(layout="balanced", target_modules="all-linear", init_weights=False)
    )
    plans = {n.split(".")[-1]: m.tera_plan["default"] for n, m in _tera_layers(model).items()}
    assert plans["head"].out_modes == (1, 2) and plans["head"].in_modes == (4, 5)
    assert {r.name: (r.rank, r.rank_bound) for r in adapter_report(model)} == {"hidden": (20, 20), "head": (2, 2)}


def test_tiny_roberta_query_beside_intermediate_with_a_trained_head(tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_roberta(),
        TeraConfig(layout="balanced", target_modules=["query", "intermediate.dense"], modules_to_save=["classifier"]),
    )
    shapes = {m.get_base_layer().weight.shape for m in model.modules() if isinstance(m, TeraLayer)}
    assert shapes == {torch.Size([24, 24]), torch.Size([36, 24])}
    ids, labels = torch.randint(0, 64, (2, 8)), torch.tensor([0, 1])
    model(input_ids=ids, labels=labels).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trained) and any("tera_lambda" in n for n in trained)
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(tiny_roberta(), tmp_path)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


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
    model = get_peft_model(
        model, TeraConfig(layout="balanced", target_modules=["q_proj", "up_proj", "down_proj"], init_weights=False)
    )
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


# ---- per-layer factors (the sharing ablation) -----------------------------------------------------------------------


def test_per_layer_factors_are_drawn_per_layer():
    torch.manual_seed(0)
    config = TeraConfig(layout="balanced", target_modules=LLAMA_TARGETS, share_factors=False, init_weights=False)
    model = get_peft_model(tiny_llama(), config)
    layers = _tera_layers(model)
    assert len(model.base_model.tera_shared) == len(layers) * 5  # one core and four factors per layer
    assert len(config.projection_checksums) == len(layers)
    q0, q1 = (layers[f"base_model.model.model.layers.{i}.self_attn.q_proj"] for i in (0, 1))
    assert q0.tera_plan["default"] == q1.tera_plan["default"]  # same shape and plan ...
    core0, _ = q0.shared_factors("default", torch.float32, torch.device("cpu"))
    core1, _ = q1.shared_factors("default", torch.float32, torch.device("cpu"))
    assert not torch.allclose(core0, core1)  # ... but each layer has its own frozen factors
    # Same trained values and rank bound as with shared factors, and the bound is reached.
    torch.manual_seed(0)
    shared = get_peft_model(
        tiny_llama(), TeraConfig(layout="balanced", target_modules=LLAMA_TARGETS, init_weights=False)
    )
    assert model.get_nb_trainable_parameters() == shared.get_nb_trainable_parameters()
    reports = adapter_report(model)
    assert [r.rank for r in reports] == [r.rank_bound for r in reports]
    assert [r.rank_bound for r in reports] == [r.rank_bound for r in adapter_report(shared)]


def test_per_layer_factors_do_not_depend_on_which_other_layers_are_adapted():
    def layer1_core(layers_to_transform):
        torch.manual_seed(0)
        config = TeraConfig(
            layout="balanced", target_modules=["q_proj"], share_factors=False, layers_to_transform=layers_to_transform
        )
        layers = _tera_layers(get_peft_model(tiny_llama(), config))
        layer = layers["base_model.model.model.layers.1.self_attn.q_proj"]
        return layer.shared_factors("default", torch.float32, torch.device("cpu"))[0]

    torch.testing.assert_close(layer1_core([1]), layer1_core([0, 1]), rtol=0, atol=0)


def test_per_layer_adapter_added_beside_a_loaded_shared_one(tmp_path):
    _peft().save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(ToyMLP(), tmp_path)  # its config arrives with recorded checksums
    loaded.add_adapter("per_layer", TeraConfig(layout="balanced", target_modules=TOY_TARGETS, share_factors=False))
    layer = loaded.base_model.model.q
    assert layer.tera_factor_group["default"] != layer.tera_factor_group["per_layer"]
    assert len(loaded.base_model.tera_shared) == 3 * 5 + 3 * 5  # three shared plans, three per-layer groups


# ---- deleting an adapter frees the factors no adapter uses (issue 14, item 4) -------------------------------------


@pytest.mark.parametrize("share_factors", [True, False])
def test_delete_adapter_frees_factors_that_no_adapter_uses(share_factors):
    model = _peft(init_weights=False, share_factors=share_factors)
    shared = model.base_model.tera_shared
    keys_default, values_default = set(shared.keys()), frozen_factor_values(model)
    out_default = _out(model)

    # Halved core ranks: other plans, so other factors (per-layer factors are per plan and layer too).
    model.add_adapter(
        "shrunk",
        TeraConfig(layout="balanced", target_modules=TOY_TARGETS, core_rank_ratio=0.5, share_factors=share_factors),
    )
    assert set(shared.keys()) > keys_default
    assert frozen_factor_values(model) > values_default
    model.delete_adapter("shrunk")
    assert set(shared.keys()) == keys_default and frozen_factor_values(model) == values_default
    torch.testing.assert_close(_out(model), out_default, rtol=0, atol=0)

    # The other way round: delete the first adapter, keep the second; only the second's factors stay, and it works.
    model.add_adapter(
        "shrunk",
        TeraConfig(
            layout="balanced",
            target_modules=TOY_TARGETS,
            core_rank_ratio=0.5,
            init_weights=False,
            share_factors=share_factors,
        ),
    )
    model.set_adapter("shrunk")
    out_half = _out(model)
    keys_half = set(shared.keys()) - keys_default
    model.delete_adapter("default")
    assert set(shared.keys()) == keys_half
    torch.testing.assert_close(_out(model), out_half, rtol=0, atol=0)


def test_delete_adapter_keeps_factors_another_adapter_shares():
    model = _peft(init_weights=False)
    keys = set(model.base_model.tera_shared.keys())
    model.add_adapter("same_plans", TeraConfig(layout="balanced", target_modules=["q"], init_weights=False))
    with pytest.warns(UserWarning, match="Setting active adapter to same_plans"):
        model.delete_adapter("default")
    assert set(model.base_model.tera_shared.keys()) == {k for k in keys if k.startswith("o4x4_i4x4_")}  # q's plan
    model.set_adapter("same_plans")
    assert torch.isfinite(_out(model)).all()


# ---- every load checks the checksum (issue 14, item 5) --------------------------------------------------------------


def _saved(tmp_path, **kwargs):
    """A trained adapter saved to ``tmp_path``; returns the model, its outputs and the saved config as a dict."""
    model = _peft(init_weights=False, **kwargs)
    model.save_pretrained(tmp_path)
    return model, _out(model), json.loads((tmp_path / "adapter_config.json").read_text())


def _edit_config(tmp_path, **changes):
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    saved.update(changes)
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))


def _load(tmp_path, **kwargs):
    torch.manual_seed(0)
    return PeftModel.from_pretrained(ToyMLP(), tmp_path, **kwargs)


def test_saved_config_records_a_checksum_per_factor_group_for_every_adapter(tmp_path):
    model = _peft()
    model.add_adapter(
        "other", TeraConfig(layout="balanced", target_modules=TOY_TARGETS)
    )  # reuses the factors "default" made
    model.save_pretrained(tmp_path)
    groups = {m.tera_factor_group["default"] for m in _tera_layers(model).values()}
    for folder in (tmp_path, tmp_path / "other"):
        saved = json.loads((folder / "adapter_config.json").read_text())
        assert set(saved["projection_checksums"]) == groups
    for name in ("default", "other"):
        loaded = _load(tmp_path / ("" if name == "default" else name))
        model.set_adapter(name)
        torch.testing.assert_close(_out(loaded), _out(model), rtol=0, atol=0)


@pytest.mark.parametrize("config", [{"projection_prng_key": 1}, {}], ids=["other-key", "same-key"])
def test_load_with_a_new_config_is_checked_against_the_file(tmp_path, config):
    """A new config brings no checksums, the adapter file does: the same key loads, another is refused (more in
    test_tera_loading.py)."""
    _, expected, _ = _saved(tmp_path)
    fresh = TeraConfig(layout="balanced", target_modules=TOY_TARGETS, **config)
    if config:
        with pytest.raises(SharedFactorsMismatch, match=r"regenerated from projection_prng_key=1, .* not the"):
            _load(tmp_path, config=fresh)
    else:
        torch.testing.assert_close(_out(_load(tmp_path, config=fresh)), expected, rtol=0, atol=0)


def test_load_with_the_saved_config_object_works(tmp_path):
    from peft import PeftConfig

    _, expected, _ = _saved(tmp_path)
    torch.testing.assert_close(_out(_load(tmp_path, config=PeftConfig.from_pretrained(tmp_path))), expected)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"projection_prng_key": 3}, "regenerated from projection_prng_key=3"),
        ({"diagonal_placement": "mode"}, "diagonal_placement='mode'"),  # same value counts with a full core
        ({"scaling": 2.0}, "scaling=2.0"),
    ],
    ids=["key-edited", "placement-edited", "scaling-edited"],
)
def test_edited_saved_config_is_refused(tmp_path, changes, fragment):
    _saved(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(SharedFactorsMismatch, match=fragment):
        _load(tmp_path)
    if "projection_prng_key" not in changes:  # (another key is refused earlier: adapters on a model share factors)
        # load_adapter onto a model that already has an adapter takes the same path
        with pytest.raises(SharedFactorsMismatch, match=fragment):
            _peft().load_adapter(tmp_path, adapter_name="edited")


def test_wrong_checksum_is_refused_with_one_sentence(tmp_path):
    _, _, saved = _saved(tmp_path)
    group = next(iter(saved["projection_checksums"]))
    _edit_config(tmp_path, projection_checksums={**saved["projection_checksums"], group: "0" * 16})
    with pytest.raises(SharedFactorsMismatch) as raised:
        _load(tmp_path)
    message = str(raised.value)
    assert message.count(". ") == 0 and message.endswith("or save it with save_projection=True.")
    assert f"not the {'0' * 16} the adapter was saved with" in message


def test_saved_factors_load_without_checksums_but_edits_are_still_caught(tmp_path):
    _, expected, _ = _saved(tmp_path, save_projection=True)
    _edit_config(tmp_path, projection_checksums={})
    torch.testing.assert_close(_out(_load(tmp_path)), expected, rtol=0, atol=0)  # the file holds the factors
    _saved(tmp_path, save_projection=True)
    _edit_config(tmp_path, scaling=0.5)
    with pytest.raises(SharedFactorsMismatch, match=r"stored in the adapter file, with .* scaling=0\.5"):
        _load(tmp_path)


def test_saved_factors_of_a_bf16_model_verify(tmp_path):
    """The checksum of saved factors is of the values in the file (here bf16), so it verifies on load."""
    torch.manual_seed(0)
    model = get_peft_model(
        ToyMLP().to(torch.bfloat16), TeraConfig(layout="balanced", target_modules=TOY_TARGETS, save_projection=True)
    )
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(ToyMLP().to(torch.bfloat16), tmp_path)
    assert loaded.base_model.tera_shared[next(iter(loaded.base_model.tera_shared.keys()))].dtype == torch.bfloat16


@pytest.mark.parametrize("save_projection", [False, True])
def test_adapter_file_size(tmp_path, save_projection):
    model = _peft(save_projection=save_projection)
    model.save_pretrained(tmp_path)
    size = os.path.getsize(tmp_path / "adapter_model.safetensors")
    if save_projection:  # one copy of every factor, never one per layer
        factor_bytes = 4 * sum(t.numel() for t in model.base_model.tera_shared.values())
        assert factor_bytes < size < factor_bytes + 4096
    else:
        assert size < 2048


# ---- the PEFT type and loading without `import tera` (issue 14, items 3 and 7) ------------------------------------


def test_peft_type_is_a_str_enum_member_like_peft_types(tmp_path):
    config = TeraConfig(layout="balanced", target_modules=TOY_TARGETS)
    assert config.peft_type is TeraPeftType.TERA and config.peft_type == "TERA" and config.peft_type.value == "TERA"
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "TERA"


@pytest.mark.slow
def test_loading_needs_import_tera_and_says_so(tmp_path):
    """PEFT has no entry point for out-of-tree tuners: a fresh process that never imported tera cannot map "TERA" to a
    config class. The README and tera's docstring give the one-line fix; this shows both sides of it."""
    _peft().save_pretrained(tmp_path)
    script = (
        "import sys, torch, peft\n"
        "sys.path.insert(0, {root!r})\n"
        "{extra}"
        "from tests.toy_models import ToyMLP\n"
        "peft.PeftModel.from_pretrained(ToyMLP(), {path!r})\n"
        "print('loaded')\n"
    )
    root = str(ROOT)
    for extra, ok in (("", False), ("import tera\n", True)):
        code = script.format(root=root, extra=extra, path=str(tmp_path))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        if ok:
            assert proc.returncode == 0 and proc.stdout.strip() == "loaded", proc.stderr[-2000:]
        else:
            assert proc.returncode != 0 and proc.stderr.rstrip().endswith("KeyError: 'TERA'"), proc.stderr[-2000:]


# ---- errors: one clear sentence each --------------------------------------------------------------------------------


def test_error_explicit_tensor_shape_that_does_not_fit():
    with pytest.raises(TensorisationError, match="does not multiply out to 16 x 16"):
        get_peft_model(
            ToyMLP(), TeraConfig(layout="balanced", target_modules=["q"], tensor_shape={"16x16": [[4, 3], [4, 4]]})
        )
    with pytest.raises(TensorisationError, match="tensor_order must be at least 1"):
        plan_for_weight(16, 16, tensor_order=0, layout="balanced")


def test_error_target_not_linear():
    with pytest.raises(TypeError, match="is a Embedding, not an nn.Linear"):
        get_peft_model(ToyMLP(), TeraConfig(layout="balanced", target_modules=["emb"]))


def test_error_second_adapter_conflicts_with_shared_factors():
    model = _peft()
    with pytest.raises(ValueError, match="projection_prng_key=5 but adapter 'default' already set the shared"):
        model.add_adapter("other", TeraConfig(layout="balanced", target_modules=TOY_TARGETS, projection_prng_key=5))
    with pytest.raises(ValueError, match="save_projection=True but adapter 'default'"):
        model.add_adapter("third", TeraConfig(layout="balanced", target_modules=TOY_TARGETS, save_projection=True))


def test_error_bad_config_values():
    with pytest.raises(ValueError, match="diagonal_placement must be one of"):
        TeraConfig(layout="balanced", target_modules=["q"], diagonal_placement="both")
    with pytest.raises(ValueError, match="core_rank_ratio must lie in"):
        TeraConfig(layout="balanced", target_modules=["q"], core_rank_ratio=0.0)
    with pytest.raises(ValueError, match="forward_path must be one of"):
        TeraConfig(layout="balanced", target_modules=["q"], forward_path="fast")


class _Wrapped(torch.nn.Module):
    """ToyMLP under another attribute name: same shapes, other module names."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ToyMLP()

    def forward(self, x):
        return self.inner(x)


def test_error_per_layer_adapter_loaded_onto_other_module_names(tmp_path):
    _peft(share_factors=False).save_pretrained(tmp_path)
    with pytest.raises(SharedFactorsMismatch, match="trained on a model whose modules are named differently"):
        PeftModel.from_pretrained(_Wrapped(), tmp_path)


def test_error_shared_adapter_loaded_onto_other_shapes(tmp_path):
    _peft().save_pretrained(tmp_path)
    _edit_config(tmp_path, core_rank_ratio=0.5)  # other plans than the ones with recorded checksums
    with pytest.raises(SharedFactorsMismatch, match="records checksums for .* but this model needs factor group"):
        _load(tmp_path)
