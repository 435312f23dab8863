"""Mixed-adapter batches: each row of a batch through the adapter it names (PEFT's ``adapter_names=``).

PEFT's LoRA loops over the adapters of a batch, one sub-batch and one pair of matmuls each.  TeRA adapters whose
layers use one set of frozen core and factors (one factor group: the tensor plan when factors are shared) differ only
in their diagonals, and those sit between the core and the factors: a row's diagonals are elementwise scalings of
that row's intermediate.  So each layer runs ONE factorised contraction per factor group for all its rows
(:func:`tera.contraction.rowwise_factorised_delta`), with per-row vectors gathered from a stacked table of the
group's resident adapters.  Rows naming ``"__base__"``, or an adapter this layer does not hold, get no update.

The table (:class:`RowTable`, one per layer and group) is a cache, not state: the adapters' ``tera_lambda``
parameters stay the storage, so state dicts and saving are unchanged.  Serving loops call ``forward`` once per token
with thousands of adapters resident, so a call checks only what its own rows use: the layer's adapter epoch (bumped when
an adapter is added or deleted: the table is rebuilt) and the version counters of the adapters the batch names (an
adapter trained or loaded since has its row refreshed in place).  An adapter changed but not named keeps a stale row
until a batch names it.  Within one ``forward`` / ``generate`` call even that is done once per layer
(:func:`trusting_tables`).
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

    key: tuple  # dtype, device, inference mode, and the layer's adapter epoch: what every row was built under
    index: dict[str, int]
    versions: dict[str, tuple]  # per adapter, what its row was built from (:func:`_row_version`)
    in_rank: torch.Tensor  # adapters x prod R_in
    out_rank: torch.Tensor  # adapters x prod R_out, the adapter's scale folded in
    in_mode: torch.Tensor | None  # adapters x d_in
    out_mode: torch.Tensor | None  # adapters x d_out


def check_adapter_names(adapter_names: Sequence[str], layers: Sequence[Any]) -> None:
    """PEFT's check that every named adapter exists on some layer (a typo would otherwise silently run the base); it
    looks up the names the batch uses, not every resident adapter."""
    asked = set(adapter_names) - {BASE}
    unexpected = {name for name in asked if not any(name in layer.tera_lambda for layer in layers)}
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
        table = row_table(layer, group, x.dtype, x.device, {adapter_names[row] for row in rows})
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


def row_table(layer: Any, group: str, dtype: torch.dtype, device: torch.device, wanted: set[str]) -> RowTable:
    """The stacked table of ``group`` on ``layer`` with current rows for the ``wanted`` adapters: the kept one (its
    stale wanted rows refreshed), or one built anew."""
    checked = getattr(layer, "_tera_tables_checked", None)
    call_key = (group, dtype, device, torch.is_inference_mode_enabled())
    if checked is not None and call_key in checked and not torch.is_grad_enabled():
        return checked[call_key]
    table = _current_table(layer, group, dtype, device, wanted)
    if checked is not None and not torch.is_grad_enabled():
        checked[call_key] = table
    return table


def _row_version(layer: Any, name: str) -> tuple:
    """What an adapter's row depends on: an optimizer step or ``load_state_dict`` bumps the version of its diagonals,
    a reassignment changes their storage."""
    # ParameterDict's own store: a plain dict lookup, where its ``[]`` costs ten times more (this runs for every named
    # adapter on every layer of every call).
    lam = layer.tera_lambda._parameters[name]
    return lam.data_ptr(), lam._version, layer.tera_placement[name], layer.tera_scaling[name]


def _current_table(layer: Any, group: str, dtype: torch.dtype, device: torch.device, wanted: set[str]) -> RowTable:
    # A table built under inference_mode cannot take part in autograd, so it is kept apart from one built outside.
    key = (dtype, device, torch.is_inference_mode_enabled(), layer._tera_adapter_epoch)
    if torch.is_grad_enabled():  # built anew each time, differentiably, when a diagonal of the group is trained
        names = _group_names(layer, group)
        if any(layer.tera_lambda[name].requires_grad for name in names):
            return _build_table(layer, names, key, dtype, device)
    kept = layer._tera_row_tables.get(group)
    if kept is not None and kept.key == key and wanted <= kept.index.keys():
        now = {name: _row_version(layer, name) for name in wanted}
        stale = {name: version for name, version in now.items() if version != kept.versions[name]}
        # a row can be rewritten in place unless its placement moved (the table's mode-side columns may not exist)
        if all(version[2] == kept.versions[name][2] for name, version in stale.items()):
            with torch.no_grad():
                _refresh_rows(layer, kept, stale, dtype)
            return kept
    layer._tera_row_tables.pop(group, None)  # free the stale table before building the new one
    with torch.no_grad():
        table = _build_table(layer, _group_names(layer, group), key, dtype, device)
    layer._tera_row_tables[group] = table
    return table


def _group_names(layer: Any, group: str) -> list[str]:
    return [name for name, g in layer.tera_factor_group.items() if g == group]


def _refresh_rows(layer: Any, table: RowTable, stale: dict[str, tuple], dtype: torch.dtype) -> None:
    """Rewrite the rows of the ``stale`` adapters from their diagonals now, recording the versions they were read at
    (the table's other rows are untouched)."""
    mode_side = table.in_mode is not None
    for name, version in stale.items():
        vectors = _row_vectors(layer, name, table.in_rank.device)
        for tensor, vector in zip(_vectors(table), vectors if mode_side else vectors[:2]):
            tensor[table.index[name]] = cast(vector, dtype)
        table.versions[name] = version


def _row_vectors(layer: Any, name: str, device: torch.device) -> list[torch.Tensor]:
    """One adapter's row: its in/out rank-side and in/out mode-side vectors (ones where its diagonals are not)."""
    plan = layer.tera_plan[name]
    lams = layer.lambdas(name)
    # Kronecker products in at least float32 (bf16 products of many diagonals would lose digits), then cast.
    work = torch.promote_types(lams[0].dtype, torch.float32)
    lams = [cast(lam, work, device) for lam in lams]
    k_out, k_in = kron(lams[: plan.num_out_modes]), kron(lams[plan.num_out_modes :])
    scale = float(layer.tera_scaling[name])
    if layer.tera_placement[name] == RANK_SIDE:
        return [k_in, k_out * scale, k_in.new_ones(plan.d_in), k_in.new_ones(plan.d_out)]
    # diagonals on the mode side: the rank-side vectors only carry the scale
    in_rank, out_rank = math.prod(plan.in_ranks), math.prod(plan.out_ranks)
    return [k_in.new_ones(in_rank), k_in.new_full((out_rank,), scale), k_in, k_out]


def _build_table(layer: Any, names: list[str], key: tuple, dtype: torch.dtype, device: torch.device) -> RowTable:
    any_mode_side = any(layer.tera_placement[name] != RANK_SIDE for name in names)
    columns: list[list[torch.Tensor]] = [[], [], [], []]  # in_rank, out_rank, in_mode, out_mode
    for name in names:
        vectors = _row_vectors(layer, name, device)
        for column, vector in zip(columns, vectors if any_mode_side else vectors[:2]):
            column.append(vector)
    stacked = [cast(torch.stack(column), dtype) if column else None for column in columns]
    index = {name: i for i, name in enumerate(names)}
    return RowTable(key, index, {name: _row_version(layer, name) for name in names}, *stacked)
