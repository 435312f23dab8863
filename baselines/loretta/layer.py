"""LoRETTA layers: ``dW = scaling * B^T A`` with both factors held as tensor trains of small trained cores."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from tera.tuners_utils import MergeByDeltaWeight

from .config import LorettaConfig


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors + ([n] if n > 1 else [])


def _splits(n: int, parts: int, largest: int) -> list[tuple[int, ...]]:
    """Every way to write ``n`` as ``parts`` factors in non-increasing order, each between 2 and ``largest``."""
    if parts == 1:
        return [(n,)] if 2 <= n <= largest else []
    found = []
    for first in range(min(n, largest), 1, -1):
        if n % first == 0:
            found.extend((first, *rest) for rest in _splits(n // first, parts - 1, first))
    return found


@lru_cache(maxsize=256)
def tensor_modes(n: int, max_mode_size: int) -> tuple[int, ...]:
    """The modes one side of size ``n`` is split into: the fewest factors of at most ``max_mode_size`` (a larger prime
    factor stays one mode), the most equal of those (smallest sum), largest first; ``(1,)`` for ``n = 1``."""
    if n == 1:
        return (1,)
    largest = max(max_mode_size, max(_prime_factors(n)))
    parts = 1
    while not (candidates := _splits(n, parts, largest)):
        parts += 1
    return min(candidates, key=lambda modes: (sum(modes), modes))


@dataclass(frozen=True)
class TensorTrain:
    """Layout of one factor: an ``rows x cols`` matrix folded into ``modes`` (the first ``split`` of them multiply to
    ``rows``, the rest to ``cols``) and held as a TT with bond ranks ``ranks`` (``ranks[0] = ranks[-1] = 1``)."""

    rows: int
    cols: int
    modes: tuple[int, ...]
    ranks: tuple[int, ...]
    split: int

    @property
    def core_shapes(self) -> list[tuple[int, int, int]]:
        return [(self.ranks[k], n, self.ranks[k + 1]) for k, n in enumerate(self.modes)]

    @property
    def numel(self) -> int:
        """Trained values: ``sum_k R_{k-1} n_k R_k``."""
        return sum(math.prod(shape) for shape in self.core_shapes)

    @property
    def bond_rank(self) -> int:
        """Rank of the bond between the row modes and the column modes: a bound on the folded matrix's rank."""
        return self.ranks[self.split]


def tensor_train(rows: int, cols: int, tensor_rank: int, max_mode_size: int) -> TensorTrain:
    """The TT layout of an ``rows x cols`` factor: row modes, then column modes; each bond's rank is ``tensor_rank``
    clamped to the size of the smaller side of the tensor it cuts."""
    row_modes, col_modes = tensor_modes(rows, max_mode_size), tensor_modes(cols, max_mode_size)
    modes = row_modes + col_modes
    # bond k separates modes[:k] from modes[k:]
    inner = [min(tensor_rank, math.prod(modes[:k]), math.prod(modes[k:])) for k in range(1, len(modes))]
    return TensorTrain(rows, cols, modes, (1, *inner, 1), len(row_modes))


def loretta_factors(d_out: int, d_in: int, config: LorettaConfig) -> tuple[TensorTrain, TensorTrain]:
    """Layouts of ``A`` (``r x d_in``) and ``B`` (``r x d_out``) for a ``d_out x d_in`` weight."""
    return (
        tensor_train(config.r, d_in, config.tensor_rank, config.max_mode_size),
        tensor_train(config.r, d_out, config.tensor_rank, config.max_mode_size),
    )


def tt_cores(flat: torch.Tensor, train: TensorTrain) -> list[torch.Tensor]:
    """Views of the cores (``R_{k-1} x n_k x R_k``) inside one flat vector of trained values."""
    sizes = [math.prod(shape) for shape in train.core_shapes]
    return [piece.view(shape) for piece, shape in zip(flat.split(sizes), train.core_shapes)]


def tt_matrix(flat: torch.Tensor, train: TensorTrain) -> torch.Tensor:
    """The ``rows x cols`` matrix a TT holds: cores contracted left to right, then unfolded row-major."""
    cores = tt_cores(flat, train)
    out = cores[0].reshape(train.modes[0], train.ranks[1])
    for core in cores[1:]:
        rank_in, _, rank_out = core.shape
        out = (out @ core.reshape(rank_in, -1)).reshape(-1, rank_out)  # (n_1 .. n_k) x R_k, row-major
    return out.reshape(train.rows, train.cols)


class LorettaLayer(BaseTunerLayer):
    # The trained values: every core of A (resp. B) of one adapter, in one flat vector.
    adapter_layer_names = ("loretta_A", "loretta_B")
    other_param_names = ("loretta_factors", "loretta_scaling")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.loretta_A = nn.ParameterDict({})
        self.loretta_B = nn.ParameterDict({})
        self.loretta_factors: dict[str, tuple[TensorTrain, TensorTrain]] = {}
        self.loretta_scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        base = self.get_base_layer()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.kwargs = kwargs

    def update_layer(
        self, adapter_name: str, config: LorettaConfig, inference_mode: bool = False, **kwargs: Any
    ) -> None:
        train_a, train_b = loretta_factors(self.out_features, self.in_features, config)
        self.loretta_factors[adapter_name] = (train_a, train_b)
        self.loretta_scaling[adapter_name] = float(config.scaling)
        self.loretta_A[adapter_name] = nn.Parameter(torch.zeros(train_a.numel))
        self.loretta_B[adapter_name] = nn.Parameter(torch.zeros(train_b.numel))
        self.reset_loretta_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_loretta_parameters(self, adapter_name: str, init_weights: bool) -> None:
        """Gaussian cores scaled so each folded factor has standard deviation ``1 / sqrt(d + r)`` (the authors'
        target); with ``init_weights`` the last core of ``B`` is then zeroed, so ``dW = 0``."""
        trains = self.loretta_factors[adapter_name]
        with torch.no_grad():
            for flat, train in zip((self.loretta_A[adapter_name], self.loretta_B[adapter_name]), trains):
                target = 1.0 / math.sqrt(train.rows + train.cols)
                for core in tt_cores(flat, train):
                    # Entry variance multiplies along the train and sums over each bond: std^(1/K) / sqrt(R_k) per
                    # core gives the folded tensor variance target^2.
                    core.normal_(std=target ** (1.0 / len(train.modes)) / math.sqrt(core.shape[2]))
            if init_weights:
                tt_cores(self.loretta_B[adapter_name], trains[1])[-1].zero_()

    def factor_matrices(self, adapter_name: str, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)``, ``r x d_in`` and ``r x d_out``, built from the cores (in ``dtype`` if given)."""
        train_a, train_b = self.loretta_factors[adapter_name]
        flat_a, flat_b = self.loretta_A[adapter_name], self.loretta_B[adapter_name]
        if dtype is not None:
            flat_a, flat_b = flat_a.to(dtype), flat_b.to(dtype)
        return tt_matrix(flat_a, train_a), tt_matrix(flat_b, train_b)

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``x @ dW^T = scaling * (x A^T) B`` of one adapter, in the dtype of ``x``: two thin products, as for LoRA."""
        a, b = self.factor_matrices(adapter_name, x.dtype)
        return ((x @ a.t()) * self.loretta_scaling[adapter_name]) @ b

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The update ``dW = scaling * B^T A`` (``d_out x d_in``) that merging adds to the base weight."""
        weight = self.get_base_layer().weight
        flat = self.loretta_A[adapter_name]
        # Some CPUs have slow half-precision matmuls: build the update in float32 there, then cast.
        compute_dtype = torch.float32 if flat.device.type == "cpu" and flat.element_size() < 4 else flat.dtype
        a, b = self.factor_matrices(adapter_name, compute_dtype)
        delta = (b.t() * self.loretta_scaling[adapter_name]) @ a
        return delta.to(weight.dtype)


def loretta_rank_bound(layer: LorettaLayer, adapter_name: str) -> int:
    """Theoretical ``rank(dW)`` bound of one LoRETTA adapter: ``dW = s B^T A`` passes through ``r`` and through the TT
    bond between each factor's ``r`` modes and its ``d`` modes, so ``rank <= min(r, R_A, R_B, d_out, d_in)``; attained
    for generic (random) cores."""
    train_a, train_b = layer.loretta_factors[adapter_name]
    return min(train_a.rows, train_a.bond_rank, train_b.bond_rank, layer.out_features, layer.in_features)


class Linear(nn.Module, MergeByDeltaWeight, LorettaLayer):
    """LoRETTA on an ``nn.Linear``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LorettaConfig, **kwargs: Any) -> None:
        super().__init__()
        LorettaLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        previous_dtype = x.dtype
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs).to(previous_dtype)
        if self.merged:
            return self.base_layer(x, *args, **kwargs).to(previous_dtype)
        result = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            if name not in self.loretta_A:
                continue
            adapter_x = self._cast_input_dtype(x, self.loretta_A[name].dtype)
            result = result + self.delta(name, adapter_x).to(result.dtype)
        return result.to(previous_dtype)

    def __repr__(self) -> str:
        return "loretta." + super().__repr__()
