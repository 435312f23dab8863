"""MoRA layers: one trained square matrix per layer between fixed, parameter-free compression and decompression."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from tera.tuners_utils import MergeByDeltaWeight

from .config import MoraConfig


def mora_r_hat(d_out: int, d_in: int, r: int) -> int:
    """Side of ``M``: the largest ``r_hat`` with ``r_hat^2 <= r * (d_in + d_out)``, LoRA's count at rank ``r``."""
    return math.isqrt((d_in + d_out) * r)


def mora_blocks(d_out: int, d_in: int, r_hat: int) -> tuple[int, int, int]:
    """``(n_in, n_out, n)``: input chunks, output chunks and type-6 blocks, ``n = max(n_in, n_out)``."""
    n_in, n_out = -(-d_in // r_hat), -(-d_out // r_hat)
    return n_in, n_out, max(n_in, n_out)


@lru_cache(maxsize=64)
def _rotation_tables(r_hat: int, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of the angles ``b * theta_k``, shape ``(n, r_hat // 2)``, ``theta_k = 10000^(-2k/r_hat)``."""
    # Cached tensors must not be inference tensors (a first call under torch.inference_mode would otherwise break every
    # later training step); float64 first, so that every dtype gets correctly rounded angles.
    with torch.inference_mode(False):
        theta = 10000.0 ** (-2.0 * torch.arange(r_hat // 2, dtype=torch.float64) / r_hat)
        angles = torch.arange(n, dtype=torch.float64)[:, None] * theta
        return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)


def _rotate(chunks: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate coordinate pairs ``(2k, 2k+1)`` of block ``b`` by ``b * theta_k``; an odd last coordinate stays put."""
    half = cos.shape[-1]
    pairs = chunks[..., : 2 * half].unflatten(-1, (half, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)
    tail = chunks[..., 2 * half :].expand(*rotated.shape[:-1], -1)  # cos/sin may broadcast over leading dims
    return torch.cat((rotated, tail), dim=-1)


def _fold(blocks: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum block ``b`` of ``(..., n, r_hat)`` into group ``b mod groups``: ``(..., groups, r_hat)``."""
    n = blocks.shape[-2]
    if n == groups:
        return blocks
    blocks = nn.functional.pad(blocks, (0, 0, 0, -n % groups))  # zero blocks up to a multiple of `groups`
    return blocks.unflatten(-2, (-1, groups)).sum(dim=-3)


def mora_delta(x: torch.Tensor, matrix: torch.Tensor, mora_type: int, d_out: int) -> torch.Tensor:
    """``x @ dW^T`` without building ``dW``: decompress(M @ compress(x)) for ``x`` of shape ``(..., d_in)``."""
    r_hat, d_in = matrix.shape[0], x.shape[-1]
    n_in, n_out, n = mora_blocks(d_out, d_in, r_hat)
    chunks = nn.functional.pad(x, (0, n_in * r_hat - d_in)).unflatten(-1, (n_in, r_hat))
    if mora_type == 1:
        # Sharing: slot s sums the inputs j = s mod r_hat; output i reads slot i mod r_hat.
        compressed = chunks.sum(dim=-2) @ matrix.t()
        out = compressed.unsqueeze(-2).expand(*compressed.shape[:-1], n_out, r_hat)
    else:
        # Decoupling with rotation: block b reads chunk b mod n_in, rotates it by R_b, applies M, adds to chunk
        # b mod n_out.  One matmul against M for all blocks and tokens.
        if n > n_in:
            chunks = chunks[..., torch.arange(n, device=x.device) % n_in, :]
        cos, sin = _rotation_tables(r_hat, n, x.device, x.dtype)
        out = _fold(_rotate(chunks, cos, sin) @ matrix.t(), n_out)
    return out.flatten(-2)[..., :d_out]


def mora_delta_weight(matrix: torch.Tensor, mora_type: int, d_out: int, d_in: int) -> torch.Tensor:
    """The dense ``dW`` (``d_out x d_in``), built in ``O(d_out * d_in)`` memory."""
    r_hat = matrix.shape[0]
    if mora_type == 1:
        rows = torch.arange(d_out, device=matrix.device) % r_hat
        cols = torch.arange(d_in, device=matrix.device) % r_hat
        return matrix[rows[:, None], cols[None, :]]  # dW[i, j] = M[i mod r_hat, j mod r_hat]
    n_in, n_out, n = mora_blocks(d_out, d_in, r_hat)
    cos, sin = _rotation_tables(r_hat, n, matrix.device, matrix.dtype)
    # Row i of M R_b is (R_b^T m_i)^T, and R_b^T rotates by the opposite angles.
    blocks = _rotate(matrix, cos[:, None, :], -sin[:, None, :])  # (n, r_hat, r_hat): M R_b
    index = torch.arange(n, device=matrix.device)
    dense = matrix.new_zeros(n_out, n_in, r_hat, r_hat)
    # Block b goes to block row b mod n_out and block column b mod n_in; blocks landing on one spot add up.
    dense = dense.index_put((index % n_out, index % n_in), blocks, accumulate=True)
    return dense.transpose(1, 2).reshape(n_out * r_hat, n_in * r_hat)[:d_out, :d_in]


class MoraLayer(BaseTunerLayer):
    # The only trained tensor: one r_hat x r_hat matrix per adapter.
    adapter_layer_names = ("mora_M",)
    other_param_names = ("mora_r_hat", "mora_type")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.mora_M = nn.ParameterDict({})
        self.mora_r_hat: dict[str, int] = {}
        self.mora_type: dict[str, int] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        base = self.get_base_layer()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, config: MoraConfig, inference_mode: bool = False, **kwargs: Any) -> None:
        r_hat = mora_r_hat(self.out_features, self.in_features, config.r)
        self.mora_r_hat[adapter_name] = r_hat
        self.mora_type[adapter_name] = config.mora_type
        self.mora_M[adapter_name] = nn.Parameter(torch.zeros(r_hat, r_hat))
        self.reset_mora_parameters(adapter_name, config.init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_mora_parameters(self, adapter_name: str, init_weights: bool) -> None:
        with torch.no_grad():
            matrix = self.mora_M[adapter_name]
            if init_weights:
                matrix.zero_()  # dW = 0: start from the pretrained model
            else:
                # Random M is invertible almost surely, so dW reaches its rank bound (used by the tests).
                matrix.normal_(std=1.0 / math.sqrt(self.in_features))

    def delta(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``x @ dW^T`` of one adapter, in the dtype of ``x``."""
        matrix = self.mora_M[adapter_name].to(x.dtype)
        return mora_delta(x, matrix, self.mora_type[adapter_name], self.out_features)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The update ``dW`` (``d_out x d_in``) that merging adds to the base weight."""
        weight = self.get_base_layer().weight
        matrix = self.mora_M[adapter_name]
        # Some CPUs have slow half-precision matmuls: build the update in float32 there, then cast.
        compute_dtype = torch.float32 if matrix.device.type == "cpu" and matrix.element_size() < 4 else matrix.dtype
        delta = mora_delta_weight(matrix.to(compute_dtype), self.mora_type[adapter_name], *weight.shape)
        return delta.to(weight.dtype)


def mora_rank_bound(layer: MoraLayer, adapter_name: str) -> int:
    """Theoretical ``rank(dW)`` bound of one MoRA adapter, attained for a generic (invertible) ``M``."""
    d_out, d_in = layer.out_features, layer.in_features
    r_hat = layer.mora_r_hat[adapter_name]
    if layer.mora_type[adapter_name] == 1:
        # dW = D M C with replication D (d_out x r_hat, rank min(d_out, r_hat)) and summation C (rank min(r_hat, d_in)).
        return min(r_hat, d_out, d_in)
    # Type 6: each block row of dW is M times fixed matrices, and r_hat * n >= max(d_out, d_in), so the block count
    # never binds: the bound is min(d_out, d_in).  A generic M attains it: blocks b < min(n_in, n_out) form a block
    # diagonal of invertible M R_b and are alone in their block columns (n_in >= n_out) or block rows (n_out >= n_in).
    _, _, n = mora_blocks(d_out, d_in, r_hat)
    return min(d_out, d_in, r_hat * n)


class Linear(nn.Module, MergeByDeltaWeight, MoraLayer):
    """MoRA on an ``nn.Linear``."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MoraConfig, **kwargs: Any) -> None:
        super().__init__()
        MoraLayer.__init__(self, base_layer, **kwargs)
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
            if name not in self.mora_M:
                continue
            adapter_x = self._cast_input_dtype(x, self.mora_M[name].dtype)
            result = result + self.delta(name, adapter_x).to(result.dtype)
        return result.to(previous_dtype)

    def __repr__(self) -> str:
        return "mora." + super().__repr__()
