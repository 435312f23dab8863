"""Per-layer accounting of any PEFT adapter: trainable values, rank bound of dW and its measured rank.

This module knows no method but TeRA.  It measures any PEFT tuner layer that has ``get_delta_weight(adapter_name)``;
what is method-specific comes from two small registries keyed by layer class, which other packages fill:
``baselines.analysis`` registers PEFT's LoRA, DoRA, VeRA, HiRA, LoKr and our MoRA when ``baselines`` is imported.
A layer class without entries still gets correct numbers, only looser or slower ones: the trivial bound
``min(d_out, d_in)``, and the update measured as merged weight minus base weight on a copy of the layer (what merging
really applies, whatever ``get_delta_weight`` returns).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .layer import TeraLayer

RankBound = Callable[[BaseTunerLayer, str], int]
EffectiveDelta = Callable[[BaseTunerLayer, str], torch.Tensor]
_RANK_BOUNDS: dict[type, RankBound] = {}
_EFFECTIVE_DELTAS: dict[type, EffectiveDelta] = {}

# Singular values below s_max * max(d_out, d_in) * RANK_EPS count as zero: the NumPy/LAPACK convention for float32
# data.  A 16-bit dW therefore shows its rounding noise as extra rank; measure on a float32 model for exact ranks.
RANK_EPS = torch.finfo(torch.float32).eps


def register_rank_bound(layer_cls: type, bound: RankBound) -> None:
    """Declare the theoretical ``rank(dW)`` bound of a tuner layer class: ``bound(layer, adapter_name) -> int``."""
    _RANK_BOUNDS[layer_cls] = bound


def layer_shape(layer: BaseTunerLayer) -> tuple[int, int]:
    """``(d_out, d_in)`` of the layer's base weight."""
    base = layer.get_base_layer()
    return int(base.out_features), int(base.in_features)


def register_effective_delta(layer_cls: type, delta: EffectiveDelta) -> None:
    """Declare how to get the update a layer class really applies; :func:`delta_weight_is_update` when its
    ``get_delta_weight`` already is that update (cheaper than the default, which merges a copy of the layer)."""
    _EFFECTIVE_DELTAS[layer_cls] = delta


def delta_weight_is_update(layer: BaseTunerLayer, adapter_name: str) -> torch.Tensor:
    """For layers whose merge adds exactly ``get_delta_weight`` to the base weight (TeRA, MoRA, LoRA, VeRA, ...)."""
    return layer.get_delta_weight(adapter_name)


def merged_minus_base(layer: BaseTunerLayer, adapter_name: str) -> torch.Tensor:
    """The update as merging applies it (merged weight minus base weight), computed on a copy of the layer."""
    clone = copy.deepcopy(layer)
    before = clone.get_base_layer().weight.detach().clone()
    clone.merge(adapter_names=[adapter_name])
    return clone.get_base_layer().weight.detach() - before


def _lookup(registry: dict[type, Callable], layer: BaseTunerLayer) -> Callable | None:
    for cls in type(layer).__mro__:
        if cls in registry:
            return registry[cls]
    return None


def effective_delta(layer: BaseTunerLayer, adapter_name: str) -> torch.Tensor:
    """The update ``dW`` that the adapter really applies to the layer's weight."""
    return (_lookup(_EFFECTIVE_DELTAS, layer) or merged_minus_base)(layer, adapter_name)


register_rank_bound(TeraLayer, lambda layer, name: layer.rank_bound(name))
register_effective_delta(TeraLayer, delta_weight_is_update)


def rank_bound(layer: BaseTunerLayer, adapter_name: str) -> int:
    bound = _lookup(_RANK_BOUNDS, layer)
    return min(layer_shape(layer)) if bound is None else int(bound(layer, adapter_name))


def trainable_count(layer: BaseTunerLayer, adapter_name: str) -> int:
    """Values the adapter trains in this layer (everything in its ``adapter_layer_names`` containers)."""
    total = 0
    for attr in layer.adapter_layer_names:
        container = getattr(layer, attr, None)
        if container is None or adapter_name not in container:
            continue
        item = container[adapter_name]
        total += item.numel() if isinstance(item, torch.Tensor) else sum(p.numel() for p in item.parameters())
    return total


def numerical_rank(matrix: torch.Tensor) -> tuple[int, float]:
    """Rank of ``matrix`` from a float64 SVD, and the absolute tolerance used."""
    values = torch.linalg.svdvals(matrix.detach().to(torch.float64))
    top = float(values.max()) if values.numel() else 0.0
    tolerance = top * max(matrix.shape) * RANK_EPS
    if top == 0.0:
        return 0, 0.0
    return int((values > tolerance).sum()), tolerance


@dataclass
class LayerReport:
    name: str
    method: str
    d_out: int
    d_in: int
    trainable: int
    rank_bound: int
    rank: int | None  # None when not measured
    tolerance: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def adapter_report(model: nn.Module, adapter_name: str | None = None, measure_rank: bool = True) -> list[LayerReport]:
    """One :class:`LayerReport` per adapted layer of ``model`` (a ``PeftModel`` or a model with injected layers).

    ``adapter_name`` defaults to the first active adapter.  ``measure_rank=False`` skips the SVDs (slow on CPU for
    7B-sized layers).
    """
    reports = []
    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or not hasattr(module, "get_delta_weight"):
            continue
        adapter = adapter_name or module.active_adapters[0]
        if trainable_count(module, adapter) == 0:
            continue
        d_out, d_in = layer_shape(module)
        rank = tolerance = None
        if measure_rank:
            with torch.no_grad():
                rank, tolerance = numerical_rank(effective_delta(module, adapter))
        reports.append(
            LayerReport(
                name=name.removeprefix("base_model.model."),
                method=type(module).__module__.split(".")[-2] if "." in type(module).__module__ else "",
                d_out=d_out,
                d_in=d_in,
                trainable=trainable_count(module, adapter),
                rank_bound=rank_bound(module, adapter),
                rank=rank,
                tolerance=tolerance,
            )
        )
    return reports


def delta_spectrum(model: nn.Module, which: str = "middle", adapter_name: str | None = None) -> dict | None:
    """Singular values (float64, descending) of one adapted layer's effective dW: the ``first``, ``middle`` or
    ``last`` adapted layer in module order, or the layer whose name ends with ``which``. None without adapters."""
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer) and hasattr(module, "get_delta_weight")
    ]
    layers = [(n, m) for n, m in layers if trainable_count(m, adapter_name or m.active_adapters[0]) > 0]
    if not layers:
        return None
    picks = {"first": 0, "middle": len(layers) // 2, "last": len(layers) - 1}
    if which in picks:
        name, module = layers[picks[which]]
    else:
        matches = [(n, m) for n, m in layers if n.endswith(which)]
        if not matches:
            raise ValueError(f"No adapted layer ends with {which!r}.")
        name, module = matches[0]
    with torch.no_grad():
        delta = effective_delta(module, adapter_name or module.active_adapters[0])
        values = torch.linalg.svdvals(delta.detach().to(torch.float64))
    return {"layer": name.removeprefix("base_model.model."), "singular_values": values.tolist()}


def shared_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a tuner keeps in a PEFT ``BufferDict`` (TeRA's factors, VeRA's and RandLoRA's projections), by its
    name in ``model``: the frozen random values that must be identical wherever the model is (e.g. on every rank)."""
    found = {}
    for prefix, module in model.named_modules():
        if isinstance(module, BufferDict):
            for key, tensor in module.items():
                found[f"{prefix}.{key}" if prefix else key] = tensor
    return found


def frozen_factor_values(model: nn.Module) -> int:
    """Number of frozen random values an adapter keeps beside the base model (TeRA's factors, VeRA's and RandLoRA's
    projections): the elements of every PEFT ``BufferDict``, each storage counted once however many layers refer to
    it.  Zero for LoRA-like methods; what sharing TeRA's factors across layers saves."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in shared_buffers(model).values():
        key = (str(tensor.device), tensor.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total


def tensor_plans(model: nn.Module) -> dict[str, dict[str, object]]:
    """Every TeRA weight shape of ``model`` (``"<d_out>x<d_in>"``) with the tensor plan it was folded into: output and
    input modes, core ranks, the mode whose vector started at zero, and the number of layers with that plan. Run
    records keep it, so a size with no split into equal modes (11008, 384) shows the split the run actually used."""
    from .tensorize import shape_key

    plans: dict[str, dict[str, object]] = {}
    for module in model.modules():
        if not isinstance(module, TeraLayer):
            continue
        for adapter, plan in module.tera_plan.items():
            entry = plans.setdefault(
                shape_key(plan.d_out, plan.d_in),
                {
                    "out_modes": list(plan.out_modes),
                    "in_modes": list(plan.in_modes),
                    "ranks": list(plan.ranks),
                    "trained_per_matrix": sum(module._lambda_sizes(adapter)),
                    "zero_mode": module.tera_zero_mode.get(adapter),
                    "layers": 0,
                },
            )
            entry["layers"] = int(entry["layers"]) + 1
    return dict(sorted(plans.items()))
