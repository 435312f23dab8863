"""MoRA baseline: dW against a loop-by-loop reference of the paper's definitions, its counts and rank bounds.

The generic PEFT tuner contract (merging, saving, several adapters, dtypes, ...) is checked for MoRA rows in
``test_contract.py``.
"""

import math

import pytest
import torch
from peft import get_peft_model
from torch import nn

from baselines.analysis import adapter_report
from baselines.mora import MoraConfig, MoraLayer, mora_rank_bound
from baselines.mora.layer import _rotation_tables
from tests.toy_models import TOY_TARGETS, ToyMLP

X = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(1))

# ---- reference: the definitions, written out with loops and nothing from baselines.mora -----------------------------


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


# ---- helpers --------------------------------------------------------------------------------------------------------


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


# r = 1, 2, 3, 10 give r_hat = 5, 8, 9, 17 on 16x16 and 6, 8, 10, 20 on 24x16 / 16x24: odd sizes, sizes that divide
# one side only or neither, and r_hat > d (a single padded chunk).
R_HATS = {1: {"q": 5, "up": 6, "down": 6}, 2: {"q": 8, "up": 8, "down": 8}, 3: {"q": 9, "up": 10, "down": 10}}
R_HATS[10] = {"q": 17, "up": 20, "down": 20}


# ---- 1. dW equals the reference -------------------------------------------------------------------------------------


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


# ---- 2. the fast forward and its gradients --------------------------------------------------------------------------


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
def test_delta_weight_in_the_base_dtype(dtype, mora_type):
    _, model = _mora(dtype=dtype, mora_type=mora_type, init_weights=False)
    q = model.base_model.model.q
    assert q.mora_M["default"].dtype == torch.float32  # PEFT keeps adapter weights in float32 (autocast)
    delta = q.get_delta_weight("default")
    assert delta.dtype == dtype
    d_out, d_in = q.get_base_layer().weight.shape
    expected = reference_delta(q.mora_M["default"].detach().double(), d_out, d_in, mora_type)
    torch.testing.assert_close(delta.double(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


# ---- 3. training ----------------------------------------------------------------------------------------------------


def test_training_after_an_inference_mode_call():
    """The cached rotation tables must not become inference tensors when first built under inference_mode."""
    _rotation_tables.cache_clear()
    _, model = _mora(mora_type=6, init_weights=False)
    with torch.inference_mode():
        model(X)
    _train(model, X, steps=1)
    assert model.base_model.model.q.mora_M["default"].grad is None  # zero_grad ran after a real backward


# ---- 4. saving, several adapters ------------------------------------------------------------------------------------


def test_adapter_file_holds_only_the_matrices(tmp_path):
    _, model = _mora(r=8)
    model.save_pretrained(tmp_path)
    # the three matrices (r_hat = 16, 17, 17) in float32, and a small safetensors header; nothing else
    assert (
        4 * (16**2 + 2 * 17**2)
        < (tmp_path / "adapter_model.safetensors").stat().st_size
        < 4 * (16**2 + 2 * 17**2) + 1024
    )


def test_two_adapters_of_different_rank_and_type():
    _, model = _mora(mora_type=6, init_weights=False)
    model.add_adapter("other", MoraConfig(target_modules=TOY_TARGETS, r=2, mora_type=1, init_weights=False))
    q = model.base_model.model.q
    assert q.mora_r_hat == {"default": 16, "other": 8} and q.mora_type == {"default": 6, "other": 1}
    # both at once: the two updates (each of its own size and type) add up
    layer = model.base_model.model.up
    layer.set_adapter(["default", "other"])
    x = torch.randn(3, 16)
    with torch.no_grad():
        weight = layer.get_base_layer().weight + layer.get_delta_weight("default") + layer.get_delta_weight("other")
        torch.testing.assert_close(layer(x), x @ weight.t() + layer.get_base_layer().bias, rtol=1e-5, atol=1e-6)
    model.delete_adapter("other")
    assert all(set(m.mora_M) == {"default"} and set(m.mora_r_hat) == {"default"} for m in _layers(model).values())


# ---- 5. parameter count ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2, 8])
def test_parameter_count_formula(r):
    _, model = _mora(r=r)
    got = {name: layer.mora_M["default"].numel() for name, layer in _layers(model).items()}
    shapes = {"q": (16, 16), "up": (24, 16), "down": (16, 24)}
    expected = {name: math.floor(math.sqrt((d_in + d_out) * r)) ** 2 for name, (d_out, d_in) in shapes.items()}
    assert got == expected
    assert all(count <= r * (d_in + d_out) for count, (d_out, d_in) in zip(got.values(), shapes.values()))
    assert model.get_nb_trainable_parameters()[0] == sum(expected.values())


# ---- 6. rank --------------------------------------------------------------------------------------------------------


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


# ---- 7. errors: one clear sentence each -----------------------------------------------------------------------------


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
