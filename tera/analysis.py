"""Per-layer accounting of any PEFT adapter: trainable values, rank bound of dW and its measured rank.

Works on every PEFT tuner layer that has ``get_delta_weight(adapter_name)`` (LoRA, DoRA, VeRA, LoKr, HiRA, TeRA, ...).
The theoretical bound comes from a small registry keyed by layer class; methods without an entry get the trivial
bound ``min(d_out, d_in)``.  Other packages (e.g. ``baselines``) add their bounds with :func:`register_rank_bound`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from peft.tuners.hira import HiraLayer
from peft.tuners.lokr import LoKrLayer
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.tuners.vera import VeraLayer
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


def _shape(layer: BaseTunerLayer) -> tuple[int, int]:
    base = layer.get_base_layer()
    return int(base.out_features), int(base.in_features)


def register_effective_delta(layer_cls: type, delta: EffectiveDelta) -> None:
    """Declare how to get the update a layer really applies when ``get_delta_weight`` returns only a factor of it."""
    _EFFECTIVE_DELTAS[layer_cls] = delta


def merged_minus_base(layer: BaseTunerLayer, adapter_name: str) -> torch.Tensor:
    """The update as merging applies it (merged weight minus base weight), computed on a copy of the layer."""
    clone = copy.deepcopy(layer)
    before = clone.get_base_layer().weight.detach().clone()
    clone.merge(adapter_names=[adapter_name])
    return clone.get_base_layer().weight.detach() - before


def effective_delta(layer: BaseTunerLayer, adapter_name: str) -> torch.Tensor:
    for cls in type(layer).__mro__:
        if cls in _EFFECTIVE_DELTAS:
            return _EFFECTIVE_DELTAS[cls](layer, adapter_name)
    return layer.get_delta_weight(adapter_name)


def _uses_dora(layer: BaseTunerLayer, name: str) -> bool:
    return bool(getattr(layer, "use_dora", {}).get(name, False))


register_rank_bound(TeraLayer, lambda layer, name: layer.rank_bound(name))
register_rank_bound(VeraLayer, lambda layer, name: min(layer.r[name], *_shape(layer)))
# DoRA rescales the columns of W0 + BA, so its real update is not low-rank; plain LoRA's is rank r.
register_rank_bound(
    LoraLayer, lambda layer, name: min(_shape(layer)) if _uses_dora(layer, name) else min(layer.r[name], *_shape(layer))
)
# PEFT's DoRA and HiRA layers return only the B A factor from get_delta_weight; the update they apply is
# m (W0 + BA) / |W0 + BA| - W0 (DoRA) and W0 * (BA) (HiRA, bound r * rank(W0), i.e. full in practice).
register_effective_delta(
    LoraLayer,
    lambda layer, name: merged_minus_base(layer, name) if _uses_dora(layer, name) else layer.get_delta_weight(name),
)
register_effective_delta(HiraLayer, merged_minus_base)


def _lokr_factor_rank(layer: BaseTunerLayer, name: str, which: str) -> int:
    full = getattr(layer, f"lokr_{which}")
    if name in full:
        return min(full[name].shape)
    a, b = getattr(layer, f"lokr_{which}_a")[name], getattr(layer, f"lokr_{which}_b")[name]  # (m, r) @ (r, n)
    return min(a.shape[0], a.shape[1], b.shape[1])


# LoKr: dW = kron(W1, W2), and rank(kron(A, B)) = rank(A) rank(B).
register_rank_bound(
    LoKrLayer,
    lambda layer, name: min(
        _lokr_factor_rank(layer, name, "w1") * _lokr_factor_rank(layer, name, "w2"), *_shape(layer)
    ),
)


def rank_bound(layer: BaseTunerLayer, adapter_name: str) -> int:
    for cls in type(layer).__mro__:
        if cls in _RANK_BOUNDS:
            return int(_RANK_BOUNDS[cls](layer, adapter_name))
    return min(_shape(layer))


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
        d_out, d_in = _shape(module)
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


def frozen_factor_values(model: nn.Module) -> int:
    """Number of frozen random values an adapter keeps beside the base model (TeRA's factors, VeRA's and RandLoRA's
    projections): the elements of every PEFT ``BufferDict``, each storage counted once however many layers refer to
    it.  Zero for LoRA-like methods; what sharing TeRA's factors across layers saves."""
    from peft.tuners._buffer_dict import BufferDict

    seen: set[tuple[str, int]] = set()
    total = 0
    for module in model.modules():
        if not isinstance(module, BufferDict):
            continue
        for tensor in module.values():
            key = (str(tensor.device), tensor.untyped_storage().data_ptr())
            if key not in seen:
                seen.add(key)
                total += tensor.numel()
    return total
