"""Mixed-adapter batches (PEFT's ``adapter_names=``) with TeRA: every row gets what its adapter gives alone.

Before ``TeraModel._enable_peft_forward_hooks`` PEFT dropped the argument and ran every row through the active
adapter.  Rows are compared in float64 with each adapter alone (through its own configured path), one contraction per
factor group is counted, the stacked table of diagonals is checked to follow every change of the adapters, and the
refusals carry PEFT's own messages.
"""

import pytest
import torch
from peft import get_peft_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict

import tera.mixed
from tera import TeraConfig, TeraLayer
from tera.contraction import kron, rowwise_factorised_delta
from tera.factors import generate_factors
from tera.reference import reference_delta
from tera.tensorize import plan_for_weight
from tests.toy_models import TOY_TARGETS, ToyMLP, tiny_llama

# Not "a", "b": PEFT warns about adapter names contained in the prefix "tera_lambda".
NAMES = ["alpha", "beta", "gamma"]
X = torch.randn(6, 7, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
LLAMA_TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def _config(**kwargs) -> TeraConfig:
    kwargs.setdefault("target_modules", TOY_TARGETS)
    return TeraConfig(init_weights=False, **kwargs)  # random non-zero diagonals: every adapter changes the output


def _model(*configs: dict, base=None):
    """A PeftModel (float64, eval) with one adapter per config, named after NAMES."""
    torch.manual_seed(0)
    model = get_peft_model(base if base is not None else ToyMLP().double(), _config(**configs[0]), NAMES[0])
    for name, config in zip(NAMES[1:], configs[1:]):
        model.add_adapter(name, _config(**config))
    return model.eval()


def _alone(model, x: torch.Tensor, name: str) -> torch.Tensor:
    """What adapter ``name`` (or the base model, for ``__base__``) gives for ``x`` on its own."""
    if name == "__base__":
        with model.disable_adapter():
            return model(x)
    model.set_adapter(name)
    return model(x)


def _check_rows(model, x: torch.Tensor, adapter_names: list[str]) -> None:
    with torch.no_grad():
        mixed = model(x, adapter_names=adapter_names)
        for row, name in enumerate(adapter_names):
            torch.testing.assert_close(
                mixed[row : row + 1], _alone(model, x[row : row + 1], name), rtol=1e-12, atol=1e-12
            )


def _count_calls(monkeypatch, name: str) -> dict[str, int]:
    """Count the calls of ``tera.mixed.<name>`` (it still runs)."""
    count = {"n": 0}
    original = getattr(tera.mixed, name)

    def counting(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(tera.mixed, name, counting)
    return count


@pytest.fixture
def contractions(monkeypatch):
    """How many shared contractions the mixed path ran."""
    return _count_calls(monkeypatch, "rowwise_factorised_delta")


@pytest.fixture
def builds(monkeypatch):
    """How many stacked tables of diagonals were built."""
    return _count_calls(monkeypatch, "_build_table")


def _layers(model) -> list[TeraLayer]:
    return [m for m in model.modules() if isinstance(m, TeraLayer)]


@pytest.mark.parametrize("layout", ["whole-side", "balanced"])
def test_the_shared_contraction_matches_the_float64_reference_row_by_row(layout):
    plan = plan_for_weight(24, 16, layout=layout, mode_size=2, core_rank_ratio=0.5)
    shared = generate_factors(plan, 0)
    core, factors = shared.core.double(), [a.double() for a in shared.factors]
    x = torch.randn(3, 5, plan.d_in, dtype=torch.float64)
    lambdas = [[torch.rand(r, dtype=torch.float64) + 0.5 for r in plan.ranks] for _ in range(3)]
    p, scale = plan.num_out_modes, 0.7
    in_rank = torch.stack([kron(lams[p:]) for lams in lambdas])
    out_rank = torch.stack([kron(lams[:p]) * scale for lams in lambdas])
    got = rowwise_factorised_delta(plan, x, core, factors, in_rank, out_rank)
    for row, lams in enumerate(lambdas):
        want = x[row] @ reference_delta(plan, core, factors, lams, "rank", scale).t()
        torch.testing.assert_close(got[row], want, rtol=1e-12, atol=1e-12)


# ---- every row equals its adapter alone ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"forward_path": "factorised"},
        {"forward_path": "merged"},
        {"forward_path": "auto"},
        {"cache_merged_weight": True},
    ],
)
def test_each_row_equals_its_adapter_alone(options, contractions):
    model = _model(options, {**options, "scaling": 0.5}, options)
    names = ["alpha", "beta", "__base__", "gamma", "alpha", "beta"]
    _check_rows(model, X, names)
    with torch.no_grad():
        contractions["n"] = 0
        model(X, adapter_names=names)
    # The three adapters share their layers' factors: one contraction per layer, not one per adapter.
    assert contractions["n"] == len(_layers(model))


def test_adapters_of_different_layouts_and_placements_are_handled_group_by_group(contractions):
    model = _model({}, {"layout": "balanced"}, {"diagonal_placement": "mode", "scaling": 2.0})
    names = ["gamma", "alpha", "beta", "__base__", "beta", "gamma"]
    _check_rows(model, X, names)
    with torch.no_grad():
        contractions["n"] = 0
        model(X, adapter_names=names)
    # alpha and gamma share the whole-side factors (one contraction, either placement), beta has the balanced ones.
    assert contractions["n"] == 2 * len(_layers(model))


def test_rows_of_one_adapter_and_of_the_base_alone():
    model = _model({}, {"layout": "balanced"})
    _check_rows(model, X[:3], ["beta", "beta", "beta"])
    _check_rows(model, X[:2], ["__base__", "__base__"])


def test_an_adapter_on_fewer_layers_leaves_the_others_alone():
    model = _model({}, {"target_modules": ["q"]})
    _check_rows(model, X[:4], ["beta", "alpha", "beta", "__base__"])


def test_a_batch_of_vectors_and_inference_mode():
    model = _model({}, {"layout": "balanced"})
    x = X[:, 0]  # rows x features, no token dimension
    with torch.inference_mode():
        mixed = model(x, adapter_names=["beta", "alpha", "__base__", "alpha", "beta", "beta"])
    with torch.no_grad():
        torch.testing.assert_close(mixed[1:2], _alone(model, x[1:2], "alpha"), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(mixed[0:1], _alone(model, x[0:1], "beta"), rtol=1e-12, atol=1e-12)


def test_modules_to_save_follow_the_rows():
    config = {"target_modules": ["q", "up"], "modules_to_save": ["head"]}
    model = _model(config, config)
    with torch.no_grad():  # two different heads, so the rows only agree if each gets its own
        for p in model.base_model.model.head.modules_to_save["beta"].parameters():
            p.add_(0.3 * torch.randn_like(p))
    _check_rows(model, X[:3], ["beta", "alpha", "beta"])


def test_gradients_reach_each_rows_adapter_in_eval_mode():
    model = _model({}, {"layout": "balanced"})
    lambdas = {n: p for n, p in model.named_parameters() if "tera_lambda" in n}
    for p in lambdas.values():
        p.requires_grad_(True)
    names = ["alpha", "beta", "alpha"]
    got = torch.autograd.grad(model(X[:3], adapter_names=names).sum(), list(lambdas.values()))
    want = [torch.zeros_like(p) for p in lambdas.values()]
    for row, name in enumerate(names):
        out = model(X[row : row + 1], adapter_names=[name])
        for i, grad in enumerate(torch.autograd.grad(out.sum(), list(lambdas.values()), allow_unused=True)):
            want[i] += 0 if grad is None else grad
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


# ---- generate -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_gives_each_row_its_adapters_tokens(num_beams):
    torch.manual_seed(0)
    config = {"target_modules": LLAMA_TARGETS, "init_lambda": 4.0}  # large updates: adapters pick other tokens
    model = _model(config, {**config, "layout": "balanced"}, base=tiny_llama().double())
    ids = torch.randint(1, 64, (4, 5), generator=torch.Generator().manual_seed(3))
    names = ["alpha", "__base__", "beta", "alpha"]
    options = {"max_new_tokens": 6, "do_sample": False, "num_beams": num_beams, "pad_token_id": 0}
    with torch.no_grad():
        mixed = model.generate(input_ids=ids, adapter_names=names, **options)
        alone = {}
        for name in set(names):
            if name == "__base__":
                with model.disable_adapter():
                    alone[name] = model.generate(input_ids=ids, **options)
            else:
                model.set_adapter(name)
                alone[name] = model.generate(input_ids=ids, **options)
    assert len({tuple(t.flatten().tolist()) for t in alone.values()}) == 3  # the check is not vacuous
    for row, name in enumerate(names):
        assert mixed[row].tolist() == alone[name][row].tolist()


# ---- the stacked table is a cache of the adapters' diagonals -----------------------------------------------------


def test_the_table_is_built_once_and_rebuilt_when_the_diagonals_change(builds):
    model = _model({}, {"layout": "balanced"})
    names = ["alpha", "beta", "__base__"]
    layers = len(_layers(model))
    with torch.no_grad():
        model(X[:3], adapter_names=names)
        assert builds["n"] == 2 * layers  # one table per layer and factor group
        model(X[:3], adapter_names=["beta", "beta", "alpha"])
        assert builds["n"] == 2 * layers  # another mix of the same adapters reuses them

    # trained: an optimizer step changes alpha's diagonals in place
    model.train()
    model.set_adapter("alpha")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(X).pow(2).mean().backward()
    optimizer.step()
    model.eval()
    _check_rows(model, X[:3], names)

    # loaded: new values for beta through PEFT's state-dict loading
    state = get_peft_model_state_dict(model, adapter_name="beta")
    state = {k: v + 0.25 if "tera_lambda" in k else v for k, v in state.items()}
    set_peft_model_state_dict(model, state, adapter_name="beta")
    _check_rows(model, X[:3], names)


def test_the_adapters_are_walked_once_per_generate_call_not_once_per_token(monkeypatch):
    # The table's key walks every resident adapter: it is checked once per call and layer, not on every layer call.
    checks = _count_calls(monkeypatch, "_current_table")
    config = {"target_modules": LLAMA_TARGETS}
    model = _model(config, config, base=tiny_llama().double())
    ids = torch.randint(1, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.generate(input_ids=ids, adapter_names=["alpha", "beta"], max_new_tokens=6, do_sample=False)
    assert checks["n"] == len(_layers(model))  # one factor group: one check per layer for all 6 steps
    assert all(layer._tera_tables_checked is None for layer in _layers(model))  # nothing trusted after the call
    with torch.no_grad():  # the next call checks again: a change between calls is seen
        for layer in _layers(model):
            layer.tera_lambda["beta"].add_(0.5)
        mixed = model(ids, adapter_names=["alpha", "beta"]).logits
        model.set_adapter("beta")
        torch.testing.assert_close(mixed[1:], model(ids[1:]).logits, rtol=1e-12, atol=1e-12)


def test_a_call_checks_only_the_adapters_its_rows_name(monkeypatch, builds):
    # Serving loops call forward once per token with thousands resident: a call must not walk every adapter.
    model = _model(*[{}] * len(NAMES))
    for i in range(9):  # 12 adapters resident in all
        model.add_adapter(f"extra{i}", _config())
    model.eval()
    layers = len(_layers(model))
    _check_rows(model, X[:2], ["alpha", "beta"])
    built = builds["n"]
    versions = _count_calls(monkeypatch, "_row_version")
    with torch.no_grad():
        model(X[:2], adapter_names=["alpha", "beta"])
    assert versions["n"] == 2 * layers and builds["n"] == built  # two adapters looked at per layer, not twelve

    # beta changed in place, gamma too: naming beta refreshes its row in place, no table is rebuilt
    with torch.no_grad():
        for layer in _layers(model):
            layer.tera_lambda["beta"].mul_(-2.0)
            layer.tera_lambda["gamma"].add_(0.75)
    _check_rows(model, X[:2], ["beta", "alpha"])
    assert builds["n"] == built
    # gamma's row was left stale while no batch named it, and is current the first time one does
    kept = [(layer, t) for layer in _layers(model) for t in layer._tera_row_tables.values() if "gamma" in t.index]
    assert len(kept) == layers and all(t.versions["gamma"] != tera.mixed._row_version(lay, "gamma") for lay, t in kept)
    _check_rows(model, X[:3], ["gamma", "alpha", "extra8"])
    assert builds["n"] == built


def test_adding_and_deleting_adapters_rebuilds_the_table(builds):
    model = _model({}, {})
    _check_rows(model, X[:2], ["alpha", "beta"])
    model.add_adapter("gamma", _config(target_modules=TOY_TARGETS, scaling=3.0))
    model.eval()
    _check_rows(model, X[:3], ["gamma", "alpha", "beta"])
    model.set_adapter("alpha")
    model.delete_adapter("beta")
    _check_rows(model, X[:2], ["gamma", "alpha"])
    assert all("beta" not in table.index for layer in _layers(model) for table in layer._tera_row_tables.values())
    with pytest.raises(ValueError, match="non-existing adapter"):
        model(X[:1], adapter_names=["beta"])
    # an adapter added that no batch names still rebuilds the table: the set of adapters changed
    built = builds["n"]
    model.add_adapter("beta", _config(target_modules=TOY_TARGETS, scaling=0.5))  # the name again, new values
    model.eval()
    _check_rows(model, X[:2], ["gamma", "alpha"])
    assert builds["n"] > built
    _check_rows(model, X[:3], ["beta", "gamma", "alpha"])


def test_the_table_is_not_state(tmp_path):
    model = _model({}, {"layout": "balanced"})
    with torch.no_grad():
        model(X[:2], adapter_names=["alpha", "beta"])
    assert not any("row_table" in key for key in model.state_dict())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "beta" / "adapter_model.safetensors").exists()


# ---- refusals, with PEFT's wording ------------------------------------------------------------------------------


def test_a_name_that_is_not_resident_is_refused_in_one_sentence():
    model = _model({}, {})
    with torch.no_grad(), pytest.raises(ValueError, match=r"^Trying to infer with non-existing adapter\(s\): delta$"):
        model(X[:3], adapter_names=["alpha", "delta", "__base__"])


def test_training_mode_is_refused():
    model = _model({}, {}).train()
    with pytest.raises(ValueError, match="Cannot pass `adapter_names` when the model is in training mode"):
        model(X[:2], adapter_names=["alpha", "beta"])


def test_merged_adapters_are_refused():
    model = _model({}, {})
    model.merge_adapter()
    with torch.no_grad(), pytest.raises(ValueError, match="Cannot pass `adapter_names` when there are merged adapters"):
        model(X[:2], adapter_names=["alpha", "beta"])
    model.unmerge_adapter()
    _check_rows(model, X[:2], ["beta", "alpha"])


def test_a_wrong_number_of_names_is_refused():
    model = _model({}, {})
    with torch.no_grad(), pytest.raises(ValueError, match="Length of `adapter_names` should be the same"):
        model(X[:3], adapter_names=["alpha", "beta"])


def test_no_hooks_are_left_behind_after_an_error():
    model = _model({}, {})
    with torch.no_grad(), pytest.raises(ValueError):
        model(X[:3], adapter_names=["alpha", "beta"])
    assert all(not layer._forward_pre_hooks for layer in _layers(model))
    with torch.no_grad():
        model.set_adapter("beta")
        torch.testing.assert_close(model(X[:1]), _alone(model, X[:1], "beta"))
