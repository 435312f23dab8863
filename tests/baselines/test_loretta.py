"""LoRETTA baseline: dW against a loop-by-loop float64 reference of the tensor-train contraction, the zero update at
initialisation, merging, saving, the trained-value formula (and the TeRA paper's percentages), the rank bound.

The generic PEFT tuner contract (merging, saving, several adapters, dtypes, ...) is checked for LoRETTA rows in
``test_contract.py``.
"""

import copy
import itertools
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel, get_peft_model
from torch import nn

from baselines import make_peft_config
from baselines.analysis import adapter_report, trainable_count
from baselines.loretta import Linear, LorettaConfig, LorettaLayer, loretta_rank_bound, tensor_modes
from tests.toy_models import TOY_TARGETS, ToyMLP

X = torch.randn(4, 7, 16, generator=torch.Generator().manual_seed(1))
SMALL = {"r": 4, "tensor_rank": 3, "max_mode_size": 4}

# ---- reference: the definitions written out, nothing from baselines.loretta -----------------------------------------

# Layouts of A (r x d_in) and B (r x d_out) on ToyMLP (q 16x16, up 24x16, down 16x24), worked out by hand from the
# rule in LorettaConfig's docstring: r modes then d modes, each side in the fewest, most equal modes of at most
# max_mode_size; bond k ranked min(tensor_rank, product of the modes left of it, product right of it).
_M4_16 = ((4, 4, 4), (1, 3, 3, 1))  # r = 4 -> (4,); 16 -> (4, 4)
_M4_24 = ((4, 4, 3, 2), (1, 3, 3, 2, 1))  # 24 -> (4, 3, 2); the last bond cuts off a mode of 2
_D_16 = ((9, 8, 16), (1, 8, 8, 1))  # defaults: r = 72 -> (9, 8); 16 -> (16,)
_D_24 = ((9, 8, 24), (1, 8, 8, 1))
_R1_16 = ((1, 16), (1, 1, 1))  # r = 1: one bond of rank 1, A is a row vector
_R1_24 = ((1, 24), (1, 1, 1))
LAYOUTS = {
    "small": (SMALL, {"q": (_M4_16, _M4_16), "up": (_M4_16, _M4_24), "down": (_M4_24, _M4_16)}),
    "defaults": ({}, {"q": (_D_16, _D_16), "up": (_D_16, _D_24), "down": (_D_24, _D_16)}),
    "r1": ({"r": 1}, {"q": (_R1_16, _R1_16), "up": (_R1_16, _R1_24), "down": (_R1_24, _R1_16)}),
}


def reference_cores(flat: torch.Tensor, modes, ranks) -> list[torch.Tensor]:
    """Core k (``ranks[k] x modes[k] x ranks[k+1]``) is the next run of values in the flat vector."""
    cores, start = [], 0
    for k, n in enumerate(modes):
        size = ranks[k] * n * ranks[k + 1]
        cores.append(flat[start : start + size].reshape(ranks[k], n, ranks[k + 1]))
        start += size
    assert start == flat.numel()
    return cores


def reference_matrix(flat: torch.Tensor, modes, ranks, rows: int, cols: int) -> torch.Tensor:
    """The folded factor, entry by entry: ``T(i_1..i_K) = G_1[:, i_1, :] G_2[:, i_2, :] .. G_K[:, i_K, :]`` (a 1 x 1
    product), laid out row-major with the r modes first; differentiable in ``flat``."""
    cores = reference_cores(flat.to(torch.float64), modes, ranks)
    entries = []
    for index in itertools.product(*(range(n) for n in modes)):
        product = torch.ones(1, 1, dtype=torch.float64)
        for core, i in zip(cores, index):
            product = product @ core[:, i, :]
        entries.append(product[0, 0])
    return torch.stack(entries).reshape(rows, cols)


def reference_delta(layer: LorettaLayer, layout, scaling: float) -> torch.Tensor:
    """Dense float64 ``dW = scaling * B^T A`` of the default adapter."""
    (modes_a, ranks_a), (modes_b, ranks_b) = layout
    d_out, d_in = layer.get_base_layer().weight.shape
    r = math.prod(modes_a) // d_in
    a = reference_matrix(layer.loretta_A["default"], modes_a, ranks_a, r, d_in)
    b = reference_matrix(layer.loretta_B["default"], modes_b, ranks_b, r, d_out)
    return scaling * b.t() @ a


def test_reference_on_a_hand_checkable_train():
    """Two cores 1x2x2 and 2x2x1: T(i, j) = G1[i] . G2[:, j], the product of a 2x2 and a 2x2 matrix."""
    g1, g2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    flat = torch.cat([g1.flatten(), g2.flatten()])  # G1 as (1, 2, 2), G2 as (2, 2, 1)
    torch.testing.assert_close(reference_matrix(flat, (2, 2), (1, 2, 1), 2, 2), (g1 @ g2).double())


# ---- helpers --------------------------------------------------------------------------------------------------------


def _loretta(seed=0, dtype=torch.float32, **kwargs):
    """ToyMLP (q 16x16, up 24x16, down 16x24) with LoRETTA on q, up and down."""
    torch.manual_seed(seed)
    base = ToyMLP().to(dtype)
    kwargs.setdefault("target_modules", TOY_TARGETS)
    return base, get_peft_model(base, LorettaConfig(**kwargs))


def _layers(model):
    return {n.split(".")[-1]: m for n, m in model.named_modules() if isinstance(m, LorettaLayer)}


def _train(model, x, steps=3, lr=5e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model


def _tt_count(modes, ranks) -> int:
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(modes))


# ---- 1. the tensorisation rule and the layouts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, max_mode_size, modes",
    [
        (4096, 32, (16, 16, 16)),  # three modes of 16 are more equal than 32 x 32 x 4
        (1024, 32, (32, 32)),
        (72, 32, (9, 8)),
        (4096, 8, (8, 8, 8, 8)),
        (1024, 16, (16, 8, 8)),
        (11008, 32, (43, 16, 16)),  # the prime 43 stays one mode
        (24, 4, (4, 3, 2)),
        (3, 2, (3,)),
        (1, 32, (1,)),
    ],
)
def test_tensor_modes(n, max_mode_size, modes):
    assert tensor_modes(n, max_mode_size) == modes
    assert math.prod(modes) == n and list(modes) == sorted(modes, reverse=True)


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_layouts_and_trained_count_formula(case):
    kwargs, expected = LAYOUTS[case]
    _, model = _loretta(**kwargs)
    layers = _layers(model)
    for name, layer in layers.items():
        train_a, train_b = layer.loretta_factors["default"]
        assert ((train_a.modes, train_a.ranks), (train_b.modes, train_b.ranks)) == expected[name]
        want = sum(_tt_count(*side) for side in expected[name])  # sum over both factors of R_{k-1} n_k R_k
        assert trainable_count(layer, "default") == want
        assert layer.loretta_A["default"].shape == (_tt_count(*expected[name][0]),)
    total = sum(_tt_count(*side) for pair in expected.values() for side in pair)
    assert model.get_nb_trainable_parameters()[0] == total


def test_paper_percentages_on_llama_q_and_v():
    """The defaults on one layer of each shape (meta tensors: nothing of 4096 x 4096 is allocated) give the TeRA
    paper's LoRETTA percentages on q and v: 0.0052% of LLaMA-2-7B and 0.0045% of LLaMA-3-8B."""
    config = LorettaConfig(target_modules=["q_proj", "v_proj"])
    counts = {}
    for d_out, d_in in ((4096, 4096), (1024, 4096)):
        with torch.device("meta"):
            base = nn.Linear(d_in, d_out, bias=False)
        counts[d_out, d_in] = trainable_count(Linear(base, "default", config), "default")
    # A 4096 x 4096 weight: both factors 72 x 4096 as modes (9, 8, 16, 16, 16), bonds of rank 8:
    # 9*8 + 8*8*8 + 8*16*8 + 8*16*8 + 8*16 = 2,760 each; the 72 x 1024 factor is (9, 8, 32, 32): 72+512+2048+256.
    assert counts == {(4096, 4096): 2 * 2760, (1024, 4096): 2760 + 2888}
    llama2 = 64 * counts[4096, 4096]  # 32 layers x (q, v), both 4096 x 4096
    llama3 = 32 * (counts[4096, 4096] + counts[1024, 4096])  # v is 1024 x 4096 (grouped-query attention)
    assert (llama2, llama3) == (353_280, 357_376)

    def percent(trained: int, frozen: int) -> Fraction:
        return Fraction(100 * trained, frozen + trained)

    assert round(percent(llama2, 6_738_415_616), 4) == Fraction("0.0052")
    assert round(percent(llama3, 8_030_261_248), 4) == Fraction("0.0045")


def test_method_config_matches_the_class_defaults():
    """conf/method/loretta.yaml spells out the defaults whose counts the test above checks."""
    conf = yaml.safe_load((Path(__file__).resolve().parents[2] / "conf" / "method" / "loretta.yaml").read_text())
    defaults = LorettaConfig()
    assert conf["name"] == "loretta" and conf["peft"] == {k: getattr(defaults, k) for k in conf["peft"]}
    config = make_peft_config("loretta", ["q_proj", "v_proj"], None, "CAUSAL_LM", **conf["peft"])
    assert isinstance(config, LorettaConfig) and config.peft_type.value == "LORETTA"


# ---- 2. dW and the fast forward against the reference ---------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_delta_weight_matches_reference(case):
    kwargs, layouts = LAYOUTS[case]
    _, model = _loretta(dtype=torch.float64, init_weights=False, scaling=0.7, **kwargs)
    for name, layer in _layers(model).items():
        delta = layer.get_delta_weight("default")
        assert delta.shape == layer.get_base_layer().weight.shape and delta.dtype == torch.float64
        with torch.no_grad():
            expected = reference_delta(layer, layouts[name], 0.7)
        assert expected.abs().max() > 0
        torch.testing.assert_close(delta, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_forward_and_gradients_match_reference(case):
    kwargs, layouts = LAYOUTS[case]
    _, model = _loretta(dtype=torch.float64, init_weights=False, scaling=1.5, **kwargs)
    for name, layer in _layers(model).items():
        base = layer.get_base_layer()
        d_out, d_in = base.weight.shape
        x = torch.randn(2, 3, d_in, dtype=torch.float64, requires_grad=True)
        upstream = torch.randn(2, 3, d_out, dtype=torch.float64)
        out = layer(x)
        (out * upstream).sum().backward()

        (modes_a, ranks_a), (modes_b, ranks_b) = layouts[name]
        flat_a = layer.loretta_A["default"].detach().clone().requires_grad_(True)
        flat_b = layer.loretta_B["default"].detach().clone().requires_grad_(True)
        r = math.prod(modes_a) // d_in
        a = reference_matrix(flat_a, modes_a, ranks_a, r, d_in)
        b = reference_matrix(flat_b, modes_b, ranks_b, r, d_out)
        x_ref = x.detach().clone().requires_grad_(True)
        expected = x_ref @ (base.weight.detach() + 1.5 * b.t() @ a).t() + base.bias.detach()
        (expected * upstream).sum().backward()

        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.loretta_A["default"].grad, flat_a.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.loretta_B["default"].grad, flat_b.grad, rtol=1e-12, atol=1e-12)
        assert base.weight.grad is None  # the base layer stays frozen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_delta_weight_in_the_base_dtype(dtype):
    _, model = _loretta(dtype=dtype, init_weights=False, **SMALL)
    q = model.base_model.model.q
    assert q.loretta_A["default"].dtype == torch.float32  # PEFT keeps adapter weights in float32 (autocast)
    delta = q.get_delta_weight("default")
    assert delta.dtype == dtype
    with torch.no_grad():
        expected = reference_delta(q, LAYOUTS["small"][1]["q"], 2.0)
    torch.testing.assert_close(delta.double(), expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


# ---- 3. initialisation: dW = 0, and training moves it ---------------------------------------------------------------


def test_update_is_zero_at_initialisation_and_training_moves_it():
    _, model = _loretta(**SMALL)
    for layer in _layers(model).values():
        train_b = layer.loretta_factors["default"][1]
        last = _tt_count(train_b.modes[-1:], train_b.ranks[-2:])  # values of B's last core, at the end of the vector
        flat_b = layer.loretta_B["default"]
        assert torch.equal(flat_b[-last:], torch.zeros(last))  # only B's last core starts at zero
        assert (flat_b[:-last] != 0).all() and (layer.loretta_A["default"] != 0).all()
        assert torch.equal(layer.get_delta_weight("default"), torch.zeros_like(layer.get_base_layer().weight))
    with torch.no_grad(), model.disable_adapter():
        plain = model(X)
    torch.testing.assert_close(model(X), plain, rtol=0, atol=0)

    model(X).pow(2).mean().backward()  # at step 0 only the zero core gets a gradient (every other path holds B = 0)
    for layer in _layers(model).values():
        train_b = layer.loretta_factors["default"][1]
        last = _tt_count(train_b.modes[-1:], train_b.ranks[-2:])
        grad_b = layer.loretta_B["default"].grad
        assert grad_b[-last:].abs().sum() > 0 and not grad_b[:-last].any()
        assert not layer.loretta_A["default"].grad.any()
    model.zero_grad()
    _train(model, X, steps=2)  # after two steps every core has moved and dW is no longer zero
    for layer in _layers(model).values():
        assert layer.get_delta_weight("default").abs().max() > 0


def test_random_initialisation_has_the_authors_factor_scale():
    """``init_weights=False``: every core Gaussian, each folded factor with standard deviation about 1 / sqrt(d + r)."""
    torch.manual_seed(0)
    layer = Linear(nn.Linear(256, 512), "default", LorettaConfig(r=16, tensor_rank=6, init_weights=False))
    a, b = layer.factor_matrices("default")
    assert a.shape == (16, 256) and b.shape == (16, 512)
    assert 0.7 < a.std().item() * math.sqrt(256 + 16) < 1.3
    assert 0.7 < b.std().item() * math.sqrt(512 + 16) < 1.3


# ---- 4. merging, saving, several adapters ---------------------------------------------------------------------------


def test_merge_and_unmerge_are_exact_in_float64():
    _, model = _loretta(dtype=torch.float64, init_weights=False, **SMALL)
    weights = {name: layer.get_base_layer().weight.detach().clone() for name, layer in _layers(model).items()}
    with torch.no_grad():
        x = X.double()
        expected = model(x)
        model.merge_adapter()
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
        for name, layer in _layers(model).items():  # the merged weight is W + dW
            merged = layer.get_base_layer().weight
            torch.testing.assert_close(merged, weights[name] + layer.get_delta_weight("default"), rtol=0, atol=1e-15)
        model.unmerge_adapter()
        for name, layer in _layers(model).items():
            torch.testing.assert_close(layer.get_base_layer().weight, weights[name], rtol=0, atol=1e-15)
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_save_and_load_round_trip_holds_only_the_cores(tmp_path):
    torch.manual_seed(0)
    pristine = ToyMLP()
    model = get_peft_model(copy.deepcopy(pristine), LorettaConfig(target_modules=TOY_TARGETS, **SMALL))
    _train(model, X, steps=2)
    model.eval()
    with torch.no_grad():
        expected = model(X)
    model.save_pretrained(tmp_path)
    count = model.get_nb_trainable_parameters()[0]
    size = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert 4 * count < size < 4 * count + 1024  # the cores in float32 and a small header; nothing else
    torch.manual_seed(123)  # nothing in loading may depend on the global seed
    loaded = PeftModel.from_pretrained(pristine, tmp_path)
    assert isinstance(loaded.peft_config["default"], LorettaConfig)
    saved, used = loaded.peft_config["default"], model.peft_config["default"]
    assert all(getattr(saved, k) == getattr(used, k) for k in ("r", "tensor_rank", "max_mode_size", "scaling"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, rtol=0, atol=0)
    for name, layer in _layers(loaded).items():
        assert layer.loretta_factors["default"] == _layers(model)[name].loretta_factors["default"]


def test_two_adapters_of_different_layouts():
    _, model = _loretta(init_weights=False, **SMALL)
    model.add_adapter("other", LorettaConfig(target_modules=TOY_TARGETS, r=2, tensor_rank=2, init_weights=False))
    layer = model.base_model.model.up
    assert layer.loretta_factors["other"][1].modes == (2, 24)  # max_mode_size 32: 24 stays one mode
    layer.set_adapter(["default", "other"])
    x = torch.randn(3, 16)
    with torch.no_grad():
        weight = layer.get_base_layer().weight + layer.get_delta_weight("default") + layer.get_delta_weight("other")
        torch.testing.assert_close(layer(x), x @ weight.t() + layer.get_base_layer().bias, rtol=1e-5, atol=1e-6)
    model.delete_adapter("other")
    for layer in _layers(model).values():
        assert set(layer.loretta_A) == set(layer.loretta_B) == set(layer.loretta_factors) == {"default"}
        assert set(layer.loretta_scaling) == {"default"}


# ---- 5. rank --------------------------------------------------------------------------------------------------------


class RankProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.square = nn.Linear(32, 32)
        self.tall = nn.Linear(32, 48)
        self.thin = nn.Linear(48, 4)

    def forward(self, x):
        return self.thin(self.tall(self.square(x)))


@pytest.mark.parametrize(
    "kwargs, bound",
    [
        ({"r": 8, "tensor_rank": 3}, {"square": 3, "tall": 3, "thin": 3}),  # the TT bond binds
        ({"r": 2, "tensor_rank": 8}, {"square": 2, "tall": 2, "thin": 2}),  # the bottleneck binds
        ({"r": 16, "tensor_rank": 6}, {"square": 6, "tall": 6, "thin": 4}),  # thin: d_out = 4 binds
        ({}, {"square": 8, "tall": 8, "thin": 4}),  # the defaults: r = 72, tensor_rank = 8
    ],
)
def test_measured_rank_equals_tt_rank_bound(kwargs, bound):
    torch.manual_seed(0)
    config = LorettaConfig(target_modules=["square", "tall", "thin"], init_weights=False, **kwargs)
    model = get_peft_model(RankProbe(), config)
    reports = {report.name: report for report in adapter_report(model)}
    assert {name: report.rank_bound for name, report in reports.items()} == bound
    assert {name: report.rank for name, report in reports.items()} == bound  # random cores attain the bound
    for name, layer in _layers(model).items():
        train_a, train_b = layer.loretta_factors["default"]
        r, tensor_rank = config.r, config.tensor_rank
        d_out, d_in = layer.get_base_layer().weight.shape
        # the bond between the r and d modes: no wider than the TT rank, r or d
        assert (train_a.bond_rank, train_b.bond_rank) == (min(tensor_rank, r, d_in), min(tensor_rank, r, d_out))
        assert loretta_rank_bound(layer, "default") == min(r, tensor_rank, d_out, d_in)
        assert reports[name].method == "loretta" and reports[name].trainable == trainable_count(layer, "default")


def test_rank_is_zero_at_initialisation():
    torch.manual_seed(0)
    model = get_peft_model(RankProbe(), LorettaConfig(target_modules=["square", "tall"], r=8, tensor_rank=3))
    assert {report.name: report.rank for report in adapter_report(model)} == {"square": 0, "tall": 0}


# ---- 6. errors: one clear sentence each -----------------------------------------------------------------------------


def test_error_target_not_linear():
    with pytest.raises(TypeError, match="'emb' is a Embedding, not an nn.Linear; remove it from target_modules"):
        get_peft_model(ToyMLP(), LorettaConfig(target_modules=["emb"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "r must be an integer of at least 1, got 0"),
        ({"r": 8.0}, "r must be an integer of at least 1, got 8.0"),
        ({"tensor_rank": True}, "tensor_rank must be an integer of at least 1, got True"),
        ({"max_mode_size": 1}, "max_mode_size must be an integer of at least 2, got 1"),
        ({"scaling": float("nan")}, "scaling must be a finite number, got nan"),
        ({"scaling": "2"}, "scaling must be a finite number, got '2'"),
    ],
)
def test_error_bad_config_values(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}\\.$"):
        LorettaConfig(target_modules=["q"], **kwargs)
