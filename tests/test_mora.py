"""MoRA baseline: dW against a loop-by-loop reference of the paper's definitions, and the PEFT tuner checks."""

import math

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

from baselines.mora import Linear, MoraConfig, MoraLayer, mora_rank_bound
from baselines.mora.layer import _rotation_tables
from tera import adapter_report

from .toy_models import TOY_TARGETS, ToyMLP, tiny_llama

X = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(1))

# ---- reference: the definitions, written out with loops and nothing from baselines.mora --------------------------


def reference_rotation(r_hat: int, block: int) -> torch.Tensor:
    """R_b: pair (2k, 2k+1) turned by b * 10000^(-2k/r_hat); an odd last coordinate is left alone."""
    rotation = torch.eye(r_hat, dtype=torch.float64)
    for k in range(r_hat // 2):
        angle = block * 10000.0 ** (-2 * k / r_hat)
        c, s = math.cos(angle), math.sin(angle)
        rotation[2 * k, 2 * k], rotation[2 * k, 2 * k + 1] = c, -s
        rotation[2 * k + 1, 2 * k], rotation[2 * k + 1, 2 * k + 1] = s, c
    return rotation


def reference_delta(matrix: torch.Tensor, d_out: int, d_in: int, mora_type: int) -> torch.Tensor:
    """Dense float64 dW of one MoRA adapter; differentiable in ``matrix``."""
    r_hat = matrix.shape[0]
    delta = torch.zeros(d_out, d_in, dtype=torch.float64)
    if mora_type == 1:
        for i in range(d_out):
            for j in range(d_in):
                delta[i, j] = matrix[i % r_hat, j % r_hat]
        return delta
    n_in, n_out = math.ceil(d_in / r_hat), math.ceil(d_out / r_hat)
    for b in range(max(n_in, n_out)):
        block = matrix @ reference_rotation(r_hat, b)  # chunk b mod n_in -> chunk b mod n_out
        row, col = (b % n_out) * r_hat, (b % n_in) * r_hat
        rows, cols = min(r_hat, d_out - row), min(r_hat, d_in - col)
        delta[row : row + rows, col : col + cols] += block[:rows, :cols]
    return delta


def test_reference_matches_the_paper_pictures():
    """Sanity of the reference itself on hand-checkable cases."""
    m = torch.arange(1.0, 5.0, dtype=torch.float64).reshape(2, 2)
    expected_sharing = torch.tensor([[1, 2, 1], [3, 4, 3], [1, 2, 1]], dtype=torch.float64)
    torch.testing.assert_close(reference_delta(m, 3, 3, 1), expected_sharing)
    # Square, r_hat | d: blockdiag(M R_0, M R_1) with R_0 = I.
    decoupled = reference_delta(m, 4, 4, 6)
    torch.testing.assert_close(decoupled[:2, :2], m)
    torch.testing.assert_close(decoupled[2:, 2:], m @ reference_rotation(2, 1))
    assert decoupled[:2, 2:].abs().sum() == 0 and decoupled[2:, :2].abs().sum() == 0


# ---- helpers ------------------------------------------------------------------------------------------------------


def _mora(seed=0, dtype=torch.float32, **kwargs):
    """ToyMLP (q 16x16, up 24x16, down 16x24) with MoRA on q, up and down."""
    torch.manual_seed(seed)
    base = ToyMLP().to(dtype)
    kwargs.setdefault("target_modules", TOY_TARGETS)
    return base, get_peft_model(base, MoraConfig(**kwargs))


def _layers(model):
    return {n.split(".")[-1]: m for n, m in model.named_modules() if isinstance(m, MoraLayer)}


def _train(model, x, steps=5, lr=5e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model


def _base_state(model):
    """The base model's own weights (without adapter entries), to rebuild the same base model."""
    return {
        key.replace(".base_layer", ""): value
        for key, value in model.base_model.model.state_dict().items()
        if ".mora_" not in key
    }


# r = 1, 2, 3, 10 give r_hat = 5, 8, 9, 17 on 16x16 and 6, 8, 10, 20 on 24x16 / 16x24: odd sizes, sizes that divide
# one side only or neither, and r_hat > d (a single padded chunk).
R_HATS = {1: {"q": 5, "up": 6, "down": 6}, 2: {"q": 8, "up": 8, "down": 8}, 3: {"q": 9, "up": 10, "down": 10}}
R_HATS[10] = {"q": 17, "up": 20, "down": 20}


# ---- 1. dW equals the reference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mora_type", [1, 6])
@pytest.mark.parametrize("r", sorted(R_HATS))
def test_delta_weight_matches_reference(mora_type, r):
    _, model = _mora(dtype=torch.float64, r=r, mora_type=mora_type, init_weights=False)
    layers = _layers(model)
    assert {name: layer.mora_r_hat["default"] for name, layer in layers.items()} == R_HATS[r]
    for layer in layers.values():
        d_out, d_in = layer.get_base_layer().weight.shape
        matrix = layer.mora_M["default"].detach()
        delta = layer.get_delta_weight("default")
        assert delta.shape == (d_out, d_in) and delta.dtype == torch.float64
        torch.testing.assert_close(delta, reference_delta(matrix, d_out, d_in, mora_type), rtol=1e-12, atol=1e-12)


# ---- 2. the fast forward and its gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("mora_type", [1, 6])
@pytest.mark.parametrize("r", [1, 3, 10])
def test_forward_and_gradients_match_reference(mora_type, r):
    _, model = _mora(dtype=torch.float64, r=r, mora_type=mora_type, init_weights=False)
    for layer in _layers(model).values():
        base = layer.get_base_layer()
        d_out, d_in = base.weight.shape
        x = torch.randn(2, 3, d_in, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(2, 3, d_out, dtype=torch.float64)
        out = layer(x)
        (out * upstream).sum().backward()

        matrix = layer.mora_M["default"].detach().clone().requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        weight = base.weight.detach() + reference_delta(matrix, d_out, d_in, mora_type)
        expected = x_ref @ weight.t() + base.bias.detach()
        (expected * upstream).sum().backward()

        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.mora_M["default"].grad, matrix.grad, rtol=1e-12, atol=1e-12)
        assert base.weight.grad is None  # the base layer stays frozen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mora_type", [1, 6])
def test_half_precision_keeps_input_dtype(dtype, mora_type):
    _, model = _mora(dtype=dtype, mora_type=mora_type, init_weights=False)
    out = model(X.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    q = model.base_model.model.q
    assert q.mora_M["default"].dtype == torch.float32  # PEFT keeps adapter weights in float32 (autocast)
    assert q.get_delta_weight("default").dtype == dtype


# ---- 3. initialisation and training -----------------------------------------------------------------------------


@pytest.mark.parametrize("mora_type", [1, 6])
def test_output_unchanged_at_initialisation(mora_type):
    torch.manual_seed(0)
    base = ToyMLP()
    expected = base(X)
    model = get_peft_model(base, MoraConfig(target_modules=TOY_TARGETS, mora_type=mora_type))
    torch.testing.assert_close(model(X), expected, rtol=0, atol=0)
    assert all(layer.get_delta_weight("default").abs().sum() == 0 for layer in _layers(model).values())


@pytest.mark.parametrize("mora_type", [1, 6])
def test_only_mora_matrices_change_during_training(mora_type):
    _, model = _mora(mora_type=mora_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, X)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"base_model.model.{t}.mora_M.default" for t in TOY_TARGETS}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == changed


def test_training_after_an_inference_mode_call():
    """The cached rotation tables must not become inference tensors when first built under inference_mode."""
    _rotation_tables.cache_clear()
    _, model = _mora(mora_type=6, init_weights=False)
    with torch.inference_mode():
        model(X)
    _train(model, X, steps=1)
    assert model.base_model.model.q.mora_M["default"].grad is None  # zero_grad ran after a real backward


# ---- 4. merging ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mora_type", [1, 6])
def test_merge_unmerge_and_merge_and_unload_match_unmerged_forward(mora_type):
    _, model = _mora(mora_type=mora_type)
    _train(model, X)
    with torch.no_grad():
        expected = model(X)
        model.merge_adapter()
        assert all(layer.merged for layer in _layers(model).values())
        torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-6)
        model.unmerge_adapter()
        torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-6)
        model.merge_adapter(safe_merge=True)
        torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-6)
        model.unmerge_adapter()
        merged = model.merge_and_unload()
        assert not any(isinstance(m, MoraLayer) for m in merged.modules())
        assert type(merged.q) is nn.Linear
        torch.testing.assert_close(merged(X), expected, rtol=1e-5, atol=1e-6)


# ---- 5. save / load, disabling, several adapters ------------------------------------------------------------------


@pytest.mark.parametrize("mora_type", [1, 6])
def test_save_and_reload_under_another_seed(tmp_path, mora_type):
    _, model = _mora(mora_type=mora_type)
    _train(model, X)
    model.eval()
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path)

    torch.manual_seed(1234)  # nothing in MoRA is random after training: a different seed must not matter
    fresh = ToyMLP()
    fresh.load_state_dict(_base_state(model))
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    assert loaded.peft_config["default"].mora_type == mora_type
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, rtol=0, atol=0)
    # the file holds the three matrices (r_hat = 16, 17, 17) and nothing else
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 4 * (16**2 + 2 * 17**2) + 1024


def test_disable_adapter_restores_base_output():
    _, model = _mora()
    _train(model, X)
    torch.manual_seed(0)
    reference = ToyMLP()  # the same base weights as the one _mora wrapped
    with torch.no_grad():
        expected = reference(X)
        with model.disable_adapter():
            torch.testing.assert_close(model(X), expected)
        assert not torch.allclose(model(X), expected)
        model.merge_adapter()
        with model.disable_adapter():  # disabling a merged adapter unmerges it
            torch.testing.assert_close(model(X), expected, rtol=1e-5, atol=1e-6)


def test_two_adapters_switched_with_set_adapter_and_deleted():
    _, model = _mora(mora_type=6)
    _train(model, X)
    model.add_adapter("other", MoraConfig(target_modules=TOY_TARGETS, r=2, mora_type=1, init_weights=False))
    q = model.base_model.model.q
    assert set(q.mora_M) == {"default", "other"}
    assert q.mora_r_hat == {"default": 16, "other": 8} and q.mora_type == {"default": 6, "other": 1}
    with torch.no_grad():
        out_default = model(X)
        model.set_adapter("other")
        out_other = model(X)
        assert not torch.allclose(out_default, out_other)
        model.set_adapter("default")
        torch.testing.assert_close(model(X), out_default)
    # only the active adapter trains
    assert all("default" in n for n, p in model.named_parameters() if p.requires_grad)

    # both at once: the two updates add up
    layer = model.base_model.model.up
    layer.set_adapter(["default", "other"])
    x = torch.randn(3, 16)
    with torch.no_grad():
        weight = layer.get_base_layer().weight + layer.get_delta_weight("default") + layer.get_delta_weight("other")
        torch.testing.assert_close(layer(x), x @ weight.t() + layer.get_base_layer().bias, rtol=1e-5, atol=1e-6)
    layer.set_adapter("default")

    model.delete_adapter("other")
    assert all(set(m.mora_M) == {"default"} and set(m.mora_r_hat) == {"default"} for m in _layers(model).values())
    with torch.no_grad():
        torch.testing.assert_close(model(X), out_default)


# ---- 6. parameter count ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2, 8])
def test_parameter_count_formula(r):
    _, model = _mora(r=r)
    got = {name: layer.mora_M["default"].numel() for name, layer in _layers(model).items()}
    shapes = {"q": (16, 16), "up": (24, 16), "down": (16, 24)}
    expected = {name: math.floor(math.sqrt((d_in + d_out) * r)) ** 2 for name, (d_out, d_in) in shapes.items()}
    assert got == expected
    assert all(count <= r * (d_in + d_out) for count, (d_out, d_in) in zip(got.values(), shapes.values()))
    assert model.get_nb_trainable_parameters()[0] == sum(expected.values())


def test_print_trainable_parameters(capsys):
    _, model = _mora(r=8)  # r_hat = 16, 17, 17
    model.print_trainable_parameters()
    assert "trainable params: 834 " in capsys.readouterr().out  # 256 + 289 + 289


# ---- 7. rank ---------------------------------------------------------------------------------------------------------


class RankProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.square = nn.Linear(32, 32)
        self.tall = nn.Linear(32, 48)

    def forward(self, x):
        return self.tall(self.square(x))


@pytest.mark.parametrize("mora_type, ranks", [(1, {"square": 8, "tall": 8}), (6, {"square": 32, "tall": 32})])
def test_measured_rank_equals_bound(mora_type, ranks):
    torch.manual_seed(0)
    config = MoraConfig(target_modules=["square", "tall"], r=1, mora_type=mora_type, init_weights=False)
    model = get_peft_model(RankProbe(), config)  # r = 1: r_hat = sqrt(64) = 8 and floor(sqrt(80)) = 8
    reports = {report.name: report for report in adapter_report(model)}
    assert {name: report.rank for name, report in reports.items()} == ranks
    assert all(report.method == "mora" and report.trainable == 64 for report in reports.values())
    for name, layer in _layers(model).items():
        assert reports[name].rank_bound == mora_rank_bound(layer, "default") == ranks[name]


def test_rank_bound_formula_on_toy_shapes():
    for mora_type in (1, 6):
        _, model = _mora(r=1, mora_type=mora_type, init_weights=False)  # r_hat = 5, 6, 6: divides nothing evenly
        for report in adapter_report(model):
            expected = min(report.d_out, report.d_in) if mora_type == 6 else {"q": 5, "up": 6, "down": 6}[report.name]
            assert report.rank == report.rank_bound == expected


# ---- a real transformers model ----------------------------------------------------------------------------------


def test_tiny_llama_round_trips(tmp_path):
    torch.manual_seed(0)
    targets = ["q_proj", "v_proj", "up_proj", "down_proj"]
    model = get_peft_model(tiny_llama(), MoraConfig(target_modules=targets, r=4, init_weights=False))
    assert isinstance(model.base_model.model.model.layers[0].mlp.up_proj, Linear)
    ids = torch.randint(0, 64, (2, 9))
    model(input_ids=ids, labels=ids).loss.backward()
    model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    loaded = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


# ---- 8. errors: one clear sentence each ---------------------------------------------------------------------------


def test_error_target_not_linear():
    with pytest.raises(TypeError, match="'emb' is a Embedding, not an nn.Linear; remove it from target_modules"):
        get_peft_model(ToyMLP(), MoraConfig(target_modules=["emb"]))


def test_error_bad_config_values():
    with pytest.raises(ValueError, match=r"mora_type must be one of \(1, 6\), got 2"):
        MoraConfig(target_modules=["q"], mora_type=2)
    with pytest.raises(ValueError, match="r must be an integer of at least 1, got 0"):
        MoraConfig(target_modules=["q"], r=0)
    with pytest.raises(ValueError, match="r must be an integer of at least 1, got -3"):
        MoraConfig(target_modules=["q"], r=-3)
