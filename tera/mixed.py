"""Mixed-adapter batches: each row of a batch through the adapter it names (PEFT's ``adapter_names=``).

PEFT's LoRA loops over the adapters of a batch, one sub-batch and one pair of matmuls each.  TeRA adapters whose
layers use one set of frozen core and factors (one factor group: the tensor plan when factors are shared) differ only
in their diagonals, and those sit between the core and the factors: a row's diagonals are elementwise scalings of
that row's intermediate.  So each layer runs ONE factorised contraction per factor group for all its rows
(:func:`tera.contraction.rowwise_factorised_delta`), with per-row vectors gathered from a stacked table of the
group's resident adapters.  Rows naming ``"__base__"``, or an adapter this layer does not hold, get no update.

The table (:class:`RowTable`, one per layer and group) is a cache, not state: the adapters' ``tera_lambda``
parameters stay the storage, so state dicts and saving are unchanged.  It is keyed on the adapters and the version
counters of their diagonals, so adding, loading, training or deleting an adapter rebuilds it.  That key walks every
resident adapter, so it is checked once per ``forward`` / ``generate`` call (:func:`trusting_tables`), not once per
layer call: with thousands of resident adapters a per-token check would cost more than the contraction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .contraction import RANK_SIDE, cast, kron, rowwise_factorised_delta

BASE = "__base__"  # PEFT's name for a row that runs through the base model alone


@dataclass
class RowTable:
    """The per-row scaling vectors of every resident adapter of one factor group, stacked: row ``index[name]`` of
    each tensor belongs to adapter ``name``.  The mode-side vectors are None when no adapter of the group needs them."""

    key: tuple
    index: dict[str, int]
    in_rank: torch.Tensor  # adapters x prod R_in
    out_rank: torch.Tensor  # adapters x prod R_out, the adapter's scale folded in
    in_mode: torch.Tensor | None  # adapters x d_in
    out_mode: torch.Tensor | None  # adapters x d_out


def check_adapter_names(adapter_names: Sequence[str], resident: set[str]) -> None:
    """PEFT's check that every named adapter exists on some layer (a typo would otherwise silently run the base)."""
    unexpected = {name for name in adapter_names if name != BASE} - resident
    if unexpected:
        raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(sorted(unexpected))}")


def check_forward_args(layer: Any, x: torch.Tensor, adapter_names: Sequence[str]) -> None:
    """PEFT's per-layer checks of ``adapter_names``, with its wording."""
    if len(x) != len(adapter_names):
        raise ValueError(
            "Length of `adapter_names` should be the same as the number of inputs, but got "
            f"{len(adapter_names)} and {len(x)} respectively."
        )
    if layer.merged:
        # Which update a merged weight should get per row is unclear; PEFT refuses it, and so does TeRA.
        raise ValueError(
            "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first."
        )


def rows_by_group(layer: Any, adapter_names: Sequence[str]) -> dict[str, list[int]]:
    """The batch rows of each factor group this layer holds; rows of ``__base__`` or of absent adapters are left out."""
    groups: dict[str, list[int]] = {}
    for row, name in enumerate(adapter_names):
        group = layer.tera_factor_group.get(name) if name != BASE else None
        if group is not None:
            groups.setdefault(group, []).append(row)
    return groups


def mixed_batch_forward(
    layer: Any, x: torch.Tensor, adapter_names: Sequence[str], *args: Any, **kwargs: Any
) -> torch.Tensor:
    """The layer's output when row ``b`` of ``x`` uses adapter ``adapter_names[b]``: one contraction per group."""
    base = layer.get_base_layer()
    previous_dtype = x.dtype
    x = layer._cast_input_dtype(x, base.weight.dtype)
    result = layer.base_layer(x, *args, **kwargs)
    for group, rows in rows_by_group(layer, adapter_names).items():
        table = row_table(layer, group, x.dtype, x.device)
        picks = torch.tensor([table.index[adapter_names[row]] for row in rows], device=x.device)
        every_row = len(rows) == len(adapter_names)  # the usual case: no sub-batch to copy out and back
        index = None if every_row else torch.tensor(rows, device=x.device)
        sub = x if index is None else x.index_select(0, index)
        vectors = [None if t is None else t.index_select(0, picks) for t in _vectors(table)]
        name = adapter_names[rows[0]]
        core, factors = layer.shared_factors(name, x.dtype, x.device)
        delta = rowwise_factorised_delta(layer.tera_plan[name], sub, core, factors, *vectors)
        delta = cast(delta, result.dtype)
        result = result + delta if index is None else result.index_add(0, index, delta)
    return result.to(previous_dtype)


def _vectors(table: RowTable) -> tuple[torch.Tensor | None, ...]:
    return table.in_rank, table.out_rank, table.in_mode, table.out_mode


@contextmanager
def trusting_tables(layers: Sequence[Any]) -> Iterator[None]:
    """Within one ``forward`` / ``generate`` call no adapter is added, loaded, trained or deleted, so a table found
    current on its first use in the call is reused for the rest of it without walking the adapters again."""
    for layer in layers:
        layer._tera_tables_checked = {}
    try:
        yield
    finally:
        for layer in layers:
            layer._tera_tables_checked = None


def row_table(layer: Any, group: str, dtype: torch.dtype, device: torch.device) -> RowTable:
    """The stacked table of ``group`` on ``layer``: the kept one when still current, else built (and kept)."""
    checked = getattr(layer, "_tera_tables_checked", None)
    call_key = (group, dtype, device, torch.is_inference_mode_enabled())
    if checked is not None and call_key in checked and not torch.is_grad_enabled():
        return checked[call_key]
    table = _current_table(layer, group, dtype, device)
    if checked is not None and not torch.is_grad_enabled():
        checked[call_key] = table
    return table


def _current_table(layer: Any, group: str, dtype: torch.dtype, device: torch.device) -> RowTable:
    names = [name for name, g in layer.tera_factor_group.items() if g == group]
    lambdas = [layer.tera_lambda[name] for name in names]
    # An optimizer step or load_state_dict bumps a version, a new adapter or a deleted one changes the names; a
    # table built under inference_mode cannot take part in autograd, so it is kept apart from one built outside.
    key = (
        dtype,
        device,
        torch.is_inference_mode_enabled(),
        *(
            (n, lam.data_ptr(), lam._version, layer.tera_placement[n], layer.tera_scaling[n])
            for n, lam in zip(names, lambdas)
        ),
    )
    # Inference (PEFT's use) keeps a detached table; with gradients wanted it is built anew each time, differentiably.
    if torch.is_grad_enabled() and any(lam.requires_grad for lam in lambdas):
        return _build_table(layer, names, key, dtype, device)
    kept = layer._tera_row_tables.get(group)
    if kept is not None and kept.key == key:
        return kept
    layer._tera_row_tables.pop(group, None)  # free the stale table before building the new one
    with torch.no_grad():
        table = _build_table(layer, names, key, dtype, device)
    layer._tera_row_tables[group] = table
    return table


def _build_table(layer: Any, names: list[str], key: tuple, dtype: torch.dtype, device: torch.device) -> RowTable:
    plan = layer.tera_plan[names[0]]  # one group, one plan
    p = plan.num_out_modes
    any_mode_side = any(layer.tera_placement[name] != RANK_SIDE for name in names)
    columns: list[list[torch.Tensor]] = [[], [], [], []]  # in_rank, out_rank, in_mode, out_mode
    for name in names:
        lams = layer.lambdas(name)
        # Kronecker products in at least float32 (bf16 products of many diagonals would lose digits), then cast.
        work = torch.promote_types(lams[0].dtype, torch.float32)
        lams = [cast(lam, work, device) for lam in lams]
        k_out, k_in = kron(lams[:p]), kron(lams[p:])
        scale = float(layer.tera_scaling[name])
        if layer.tera_placement[name] == RANK_SIDE:
            vectors = [k_in, k_out * scale, k_in.new_ones(plan.d_in), k_in.new_ones(plan.d_out)]
        else:  # diagonals on the mode side: the rank-side vectors only carry the scale
            in_rank, out_rank = math.prod(plan.in_ranks), math.prod(plan.out_ranks)
            vectors = [k_in.new_ones(in_rank), k_in.new_full((out_rank,), scale), k_in, k_out]
        for column, vector in zip(columns, vectors if any_mode_side else vectors[:2]):
            column.append(vector)
    stacked = [cast(torch.stack(column), dtype) if column else None for column in columns]
    return RowTable(key, {name: i for i, name in enumerate(names)}, *stacked)
