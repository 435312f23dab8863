"""Rank and parameter accounting: measured rank of dW against the theoretical bound, for TeRA and PEFT methods;
the shared frozen buffers every rank must agree on."""

import math
import os
import socket

import pytest
import torch
from peft import LoraConfig, RandLoraConfig, VeraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from baselines.analysis import adapter_report, effective_delta, frozen_factor_values, numerical_rank, shared_buffers
from tera import TeraConfig
from tests.toy_models import TOY_TARGETS, ToyMLP


class Wide(nn.Module):
    """48x48 and 72x48 weights: large enough for rank bounds below full rank to show."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(48, 48)
        self.b = nn.Linear(48, 72)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize(
    "kwargs, bounds",
    [
        (dict(), {"a": 48, "b": 48}),  # full core: full rank
        (dict(core_rank_ratio=0.5), {"a": 12, "b": 12}),  # 48 = 6x8 -> ranks 3x4; 72 = 8x9 -> 4x4 (16) vs 12
        (dict(tensor_order=3, core_rank_ratio=0.5), {"a": 8, "b": 8}),  # 48 = 3x4x4 -> 2x2x2; 72 = 3x4x6 -> 2x2x3
        (dict(diagonal_placement="mode", core_rank_ratio=0.5), {"a": 12, "b": 12}),
    ],
)
def test_measured_rank_equals_bound_with_random_nonzero_lambdas(kwargs, bounds):
    model = get_peft_model(
        Wide(), TeraConfig(target_modules=["a", "b"], init_weights=False, **{"layout": "balanced", **kwargs})
    )
    reports = {r.name: r for r in adapter_report(model)}
    assert {n: r.rank_bound for n, r in reports.items()} == bounds == _expected_bounds(model)
    assert {n: r.rank for n, r in reports.items()} == bounds


def _expected_bounds(model):
    """min(prod R_out, prod R_in) straight from each layer's plan."""
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "tera_plan"):
            plan = module.tera_plan["default"]
            out[name.split(".")[-1]] = min(math.prod(plan.out_ranks), math.prod(plan.in_ranks))
    return out


def test_rank_is_zero_at_initialisation_and_report_counts_trainables():
    model = get_peft_model(ToyMLP(), TeraConfig(target_modules=TOY_TARGETS))
    reports = adapter_report(model)
    assert [r.rank for r in reports] == [0, 0, 0]
    assert sum(r.trainable for r in reports) == model.get_nb_trainable_parameters()[0]
    assert {r.method for r in reports} == {"tera"}


def test_report_works_for_lora_and_vera():
    lora = get_peft_model(Wide(), LoraConfig(target_modules=["a", "b"], r=5, init_lora_weights=False))
    for report in adapter_report(lora):
        assert (report.method, report.rank_bound, report.rank) == ("lora", 5, 5)
        assert report.trainable == 5 * (report.d_in + report.d_out)
    vera = get_peft_model(Wide(), VeraConfig(target_modules=["a", "b"], r=7, init_weights=False))
    for report in adapter_report(vera):
        assert (report.method, report.rank_bound, report.rank) == ("vera", 7, 7)
        assert report.trainable == 7 + report.d_out


def test_numerical_rank_tolerance():
    u, v = torch.randn(30, 4), torch.randn(4, 20)
    rank, tol = numerical_rank(u @ v)
    assert rank == 4 and 0 < tol < 1e-3
    assert numerical_rank(torch.zeros(5, 5)) == (0, 0.0)


def test_skip_rank_measurement():
    model = get_peft_model(ToyMLP(), TeraConfig(target_modules=TOY_TARGETS))
    assert all(r.rank is None for r in adapter_report(model, measure_rank=False))


def test_report_measures_the_update_dora_and_hira_really_apply():
    """PEFT's get_delta_weight returns only B A for DoRA and HiRA; the report measures merged minus base weight."""
    from peft import HiraConfig

    hira = get_peft_model(Wide(), HiraConfig(target_modules=["a", "b"], r=4, init_weights=False))
    for report in adapter_report(hira):
        assert report.rank == report.rank_bound == 48  # W0 * (B A): high rank from rank-4 factors
    dora = get_peft_model(Wide(), LoraConfig(target_modules=["a", "b"], r=4, use_dora=True, init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in dora.named_parameters():
            if "lora_magnitude_vector" in name:
                parameter.mul_(1.5)  # a trained magnitude: the update is no longer just B A
    for report in adapter_report(dora):
        assert report.rank_bound == 48 and report.rank > 4
    x = torch.randn(3, 48)
    layer = hira.base_model.model.a
    with torch.no_grad():
        expected = layer.get_base_layer()(x) + x @ effective_delta(layer, "default").t()
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_frozen_factor_values_counts_each_shared_tensor_once():
    """TeRA shares one set of factors per tensor plan; per-layer factors multiply them; VeRA's projections are counted
    once although every layer refers to them; LoRA keeps none."""

    class TwoSquare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(48, 48), nn.Linear(48, 48)

    torch.manual_seed(0)
    shared = get_peft_model(TwoSquare(), TeraConfig(target_modules=["a", "b"], layout="balanced"))
    per_layer = get_peft_model(
        TwoSquare(), TeraConfig(target_modules=["a", "b"], share_factors=False, layout="balanced")
    )
    one_set = 48 * 48 + 2 * (6 * 6 + 8 * 8)  # 48 = 6 x 8 per side: a full 6x8x6x8 core and four square factors
    assert frozen_factor_values(shared) == one_set
    assert frozen_factor_values(per_layer) == 2 * one_set
    vera = get_peft_model(TwoSquare(), VeraConfig(target_modules=["a", "b"], r=7))
    assert frozen_factor_values(vera) == 7 * 48 + 48 * 7
    assert frozen_factor_values(get_peft_model(TwoSquare(), LoraConfig(target_modules=["a", "b"], r=4))) == 0


class _HalfReportingLinear(nn.Module, BaseTunerLayer):
    """A tuner layer of a method the report knows nothing about, whose get_delta_weight returns only half of what
    merging adds (as PEFT's DoRA and HiRA return only a factor of theirs)."""

    adapter_layer_names = ("extra",)

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base
        self.extra = nn.ParameterDict(
            {"default": nn.Parameter(torch.randn(base.out_features, 3) @ torch.randn(3, base.in_features))}
        )
        self._active_adapter = "default"
        self.merged_adapters = []

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        return 0.5 * self.extra[adapter_name]

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        for name in adapter_names or ["default"]:
            self.base_layer.weight.data += self.extra[name]
            self.merged_adapters.append(name)


def test_a_method_without_registered_facts_gets_correct_looser_numbers():
    """No registered bound: the trivial min(d_out, d_in); no registered update: what merging applies."""
    model = nn.Sequential(_HalfReportingLinear(nn.Linear(8, 6)))
    (report,) = adapter_report(model)
    assert (report.rank_bound, report.rank, report.trainable) == (6, 3, 6 * 8)
    layer = model[0]
    torch.testing.assert_close(effective_delta(layer, "default"), layer.extra["default"].detach())
    assert torch.equal(layer.get_base_layer().weight, model[0].base_layer.weight)  # measured on a copy


def test_shared_buffers_are_every_buffer_dict_entry():
    class TwoSquare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)

    torch.manual_seed(0)
    tera_names = set(
        shared_buffers(get_peft_model(TwoSquare(), TeraConfig(target_modules=["a", "b"], layout="balanced")))
    )
    assert tera_names == {f"base_model.tera_shared.o4x4_i4x4_r4x4x4x4_{k}" for k in ("core", "f0", "f1", "f2", "f3")}
    vera_names = set(shared_buffers(get_peft_model(TwoSquare(), VeraConfig(target_modules=["a", "b"], r=4))))
    # VeRA's and RandLoRA's layers register the model's buffer dicts as their own submodules: each tensor is listed
    # once, under the first name that reaches it.
    assert vera_names == {"base_model.model.a.vera_A.default", "base_model.model.a.vera_B.default"}
    randlora = get_peft_model(TwoSquare(), RandLoraConfig(target_modules=["a", "b"], r=4))
    assert {n.rsplit(".", 2)[-2] for n in shared_buffers(randlora)} == {"randlora_A", "randlora_B"}
    assert shared_buffers(get_peft_model(TwoSquare(), LoraConfig(target_modules=["a", "b"], r=4))) == {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_buffers_worker(rank: int, world: int, port: int, key_of_rank_1: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from experiments.run import distributed

    distributed.init_from_env()
    torch.manual_seed(rank)
    model = get_peft_model(
        nn.Sequential(nn.Linear(16, 16)),
        VeraConfig(target_modules=["0"], r=4, projection_prng_key=key_of_rank_1 * rank),
    )
    try:
        distributed.check_same_buffers(model)
        message = "same"
    except RuntimeError as err:
        message = str(err)
    if rank == 0:
        with open(out, "w") as handle:
            handle.write(message)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize(
    "key_of_rank_1, expected",
    [(0, "same"), (1, "['base_model.model.0.vera_A.default', 'base_model.model.0.vera_B.default'] differ")],
)
def test_ranks_compare_every_shared_buffer_not_only_teras(tmp_path, key_of_rank_1, expected):
    """VeRA's projections drawn from different keys on two gloo ranks are caught, and named."""
    out = tmp_path / "result.txt"
    torch.multiprocessing.spawn(_check_buffers_worker, args=(2, _free_port(), key_of_rank_1, str(out)), nprocs=2)
    assert expected in out.read_text()


def test_tensor_plans_record_each_shapes_split_and_zero_mode():
    """Run records keep the plan every weight shape used: 72 has no split into modes of 8, so it is as equal as
    possible; the whole side's vector starts at zero (mode 0 when the output side is whole)."""
    from tera.analysis import tensor_plans

    model = get_peft_model(Wide(), TeraConfig(target_modules=["a", "b"]))
    plans = tensor_plans(model)
    assert plans["48x48"] == {
        "out_modes": [48],
        "in_modes": [6, 8],
        "ranks": [48, 6, 8],
        "trained_per_matrix": 62,
        "zero_mode": 0,
        "layers": 1,
    }
    assert plans["72x48"]["out_modes"] == [72] and plans["72x48"]["zero_mode"] == 0
    balanced = get_peft_model(Wide(), TeraConfig(target_modules=["a"], layout="balanced", zero_init_mode=1))
    assert tensor_plans(balanced)["48x48"] | {"ranks": None} == {
        "out_modes": [6, 8],
        "in_modes": [6, 8],
        "ranks": None,
        "trained_per_matrix": 28,
        "zero_mode": 1,
        "layers": 1,
    }
