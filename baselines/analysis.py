"""The cross-method analysis: rank bounds and applied updates of every method in the suite, and the report over them.

``tera.analysis`` measures any PEFT tuner layer but knows only TeRA; this module teaches it the other methods, on
``import baselines``:

- LoRA: rank ``r``; DoRA rescales the columns of ``W0 + BA``, so its real update is not low-rank (bound
  ``min(d_out, d_in)``), and PEFT's ``get_delta_weight`` returns only ``B A``: the update is measured by merging.
- VeRA: rank ``r`` (``diag(b) B diag(d) A``).
- HiRA: ``W0 * (B A)`` (Hadamard), bound ``r * rank(W0)``, i.e. full in practice; ``get_delta_weight`` returns only
  ``B A``, so the update is measured by merging.
- LoKr: ``kron(W1, W2)`` and ``rank(kron(A, B)) = rank(A) rank(B)``.
- MoRA: see :func:`baselines.mora.mora_rank_bound`.
- LoRETTA: ``s B^T A`` through an ``r``-wide bottleneck and each factor's TT bond between its ``r`` and ``d`` modes,
  see :func:`baselines.loretta.loretta_rank_bound`.

Import the report from here in code that compares methods (``from baselines.analysis import adapter_report``).
"""

from __future__ import annotations

from peft.tuners.hira import HiraLayer
from peft.tuners.lokr import LoKrLayer
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.tuners.vera import VeraLayer

from tera.analysis import (
    RANK_EPS,
    LayerReport,
    adapter_report,
    delta_spectrum,
    delta_weight_is_update,
    effective_delta,
    frozen_factor_values,
    layer_shape,
    merged_minus_base,
    numerical_rank,
    rank_bound,
    register_effective_delta,
    register_rank_bound,
    shared_buffers,
    trainable_count,
)

from .loretta import LorettaLayer, loretta_rank_bound
from .mora import MoraLayer, mora_rank_bound


def _uses_dora(layer: BaseTunerLayer, name: str) -> bool:
    return bool(getattr(layer, "use_dora", {}).get(name, False))


def _lora_bound(layer: BaseTunerLayer, name: str) -> int:
    return min(layer_shape(layer)) if _uses_dora(layer, name) else min(layer.r[name], *layer_shape(layer))


def _lora_delta(layer: BaseTunerLayer, name: str):
    return merged_minus_base(layer, name) if _uses_dora(layer, name) else layer.get_delta_weight(name)


def _lokr_factor_rank(layer: BaseTunerLayer, name: str, which: str) -> int:
    full = getattr(layer, f"lokr_{which}")
    if name in full:
        return min(full[name].shape)
    a, b = getattr(layer, f"lokr_{which}_a")[name], getattr(layer, f"lokr_{which}_b")[name]  # (m, r) @ (r, n)
    return min(a.shape[0], a.shape[1], b.shape[1])


def _lokr_bound(layer: BaseTunerLayer, name: str) -> int:
    product = _lokr_factor_rank(layer, name, "w1") * _lokr_factor_rank(layer, name, "w2")
    return min(product, *layer_shape(layer))


register_rank_bound(LoraLayer, _lora_bound)
register_effective_delta(LoraLayer, _lora_delta)
register_rank_bound(VeraLayer, lambda layer, name: min(layer.r[name], *layer_shape(layer)))
register_effective_delta(VeraLayer, delta_weight_is_update)
register_effective_delta(HiraLayer, merged_minus_base)  # no bound entry: full rank in practice (the default)
register_rank_bound(LoKrLayer, _lokr_bound)
register_effective_delta(LoKrLayer, delta_weight_is_update)
register_rank_bound(MoraLayer, mora_rank_bound)
register_effective_delta(MoraLayer, delta_weight_is_update)
register_rank_bound(LorettaLayer, loretta_rank_bound)
register_effective_delta(LorettaLayer, delta_weight_is_update)

__all__ = [
    "RANK_EPS",
    "LayerReport",
    "adapter_report",
    "delta_spectrum",
    "effective_delta",
    "frozen_factor_values",
    "numerical_rank",
    "rank_bound",
    "shared_buffers",
    "trainable_count",
]
