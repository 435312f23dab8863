"""How a ``d_out x d_in`` weight update is folded into a higher-order tensor.

TeRA views ``dW`` as a tensor with output modes ``(o_1..o_P)`` followed by input modes ``(i_1..i_Q)`` (row-major, so
``reshape(d_out, d_in)`` gives the matrix back).  Every layer with the same :class:`TensorPlan` shares one set of
frozen factors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class TensorisationError(ValueError):
    """A weight dimension cannot be split into the requested tensor shape."""


def balanced_split(dim: int, order: int) -> tuple[int, ...]:
    """Split ``dim`` into ``order`` integer factors that are as close to each other as possible, in ascending order.

    Factors are larger than 1 whenever such a split exists: ``balanced_split(4096, 2) == (64, 64)``,
    ``balanced_split(11008, 2) == (86, 128)``.  Otherwise the missing factors are size-1 modes, so every ``nn.Linear``
    shape has a plan: ``balanced_split(2, 2) == (1, 2)`` (a 20 -> 2 classifier head), ``balanced_split(7, 3) ==
    (1, 1, 7)``.  A size-1 mode carries a single trained value and leaves the rank bound ``min(prod R_out, prod R_in)``
    as it is, so such a side simply behaves like one of lower order.
    """
    if order < 1:
        raise TensorisationError(f"tensor_order must be at least 1, got {order}.")
    if dim < 1:
        raise TensorisationError(f"Cannot tensorise a dimension of size {dim}.")
    if order == 1:
        return (dim,)
    best = _split_above_one(dim, order)
    if best is None:
        return (1, *balanced_split(dim, order - 1))  # fewer real modes: pad with size-1 ones
    return best


def _split_above_one(dim: int, order: int) -> tuple[int, ...] | None:
    """The most balanced split of ``dim`` into ``order`` factors all larger than 1, or None when there is none."""
    if order == 1:
        return (dim,) if dim > 1 else None
    best: tuple[int, ...] | None = None
    # Choose the smallest factor first, no larger than the order-th root, and recurse on the rest; the split whose
    # largest factor is smallest is the most balanced one.
    for first in range(2, int(round(dim ** (1.0 / order))) + 1):
        if dim % first:
            continue
        rest = _split_above_one(dim // first, order - 1)
        if rest is None or rest[0] < first:
            continue
        candidate = (first, *rest)
        # Most balanced: the smallest largest factor, then the largest smallest factor.
        if best is None or (max(candidate), -min(candidate)) < (max(best), -min(best)):
            best = candidate
    return best


LAYOUTS = ("whole-side", "balanced")
WHOLE_SIDES = ("larger", "output", "input")


def equal_modes(dim: int, mode_size: int) -> tuple[int, ...]:
    """Split ``dim`` into modes of ``mode_size`` (the paper's ``4096 -> 8, 8, 8, 8``).

    The number of modes is the smallest ``k`` with ``mode_size ** k >= dim``; where ``dim`` is no power of
    ``mode_size`` (1024 or 11008 in modes of 8, 576 or 384 in SmolLM2 and MiniLM), its ``k`` factors are as equal as
    possible (:func:`balanced_split`): ``equal_modes(1024, 8) == (4, 4, 8, 8)``, ``equal_modes(576, 8) ==
    (4, 4, 6, 6)``, ``equal_modes(11008, 8) == (4, 4, 4, 4, 43)``.
    """
    if mode_size < 2:
        raise TensorisationError(f"mode_size must be at least 2, got {mode_size}.")
    count = 1
    while mode_size**count < dim:
        count += 1
    return balanced_split(dim, count)


def whole_output_side(d_out: int, d_in: int, whole_side: str) -> bool:
    """Whether the published layout keeps the output side whole: ``larger`` keeps the larger side whole, the output
    side of a square matrix (the paper's first mode is the output side)."""
    if whole_side not in WHOLE_SIDES:
        raise TensorisationError(f"whole_side must be one of {WHOLE_SIDES}, got {whole_side!r}.")
    if whole_side == "larger":
        return d_out >= d_in
    return whole_side == "output"


def shape_key(d_out: int, d_in: int) -> str:
    """The key that ``TeraConfig.tensor_shape`` uses for a weight shape, e.g. ``"4096x11008"`` (d_out x d_in)."""
    return f"{d_out}x{d_in}"


@dataclass(frozen=True)
class TensorPlan:
    """Mode sizes and core ranks of one tensorised weight shape."""

    out_modes: tuple[int, ...]
    in_modes: tuple[int, ...]
    ranks: tuple[int, ...]  # one per mode, outputs first

    @property
    def modes(self) -> tuple[int, ...]:
        return self.out_modes + self.in_modes

    @property
    def d_out(self) -> int:
        return math.prod(self.out_modes)

    @property
    def d_in(self) -> int:
        return math.prod(self.in_modes)

    @property
    def num_out_modes(self) -> int:
        return len(self.out_modes)

    @property
    def out_ranks(self) -> tuple[int, ...]:
        return self.ranks[: self.num_out_modes]

    @property
    def in_ranks(self) -> tuple[int, ...]:
        return self.ranks[self.num_out_modes :]

    @property
    def key(self) -> str:
        """A name usable as a buffer key (no dots): modes and ranks, e.g. ``o64x64_i64x64_r64x64x64x64``."""
        join = "x".join
        return f"o{join(map(str, self.out_modes))}_i{join(map(str, self.in_modes))}_r{join(map(str, self.ranks))}"

    def rank_bound(self, lambda_sizes: Sequence[int] | None = None) -> int:
        """Upper bound on ``rank(dW)``: ``min(prod R_out, prod R_in)``.

        Each factor ``A_n L_n`` has rank at most ``min(I_n, R_n)``; ``lambda_sizes`` (the number of non-zero entries of
        each diagonal, when known) can lower it further.
        """
        per_mode = [min(i, r) for i, r in zip(self.modes, self.ranks)]
        if lambda_sizes is not None:
            per_mode = [min(p, k) for p, k in zip(per_mode, lambda_sizes)]
        p = self.num_out_modes
        return min(math.prod(per_mode[:p]), math.prod(per_mode[p:]))


def _core_ranks(modes: Sequence[int], core_rank_ratio: float) -> tuple[int, ...]:
    if not 0.0 < core_rank_ratio <= 1.0:
        raise ValueError(f"core_rank_ratio must lie in (0, 1], got {core_rank_ratio}.")
    return tuple(max(1, int(round(size * core_rank_ratio))) for size in modes)


def plan_for_weight(
    d_out: int,
    d_in: int,
    tensor_order: int = 2,
    tensor_shape: Mapping[str, Sequence[Sequence[int]]] | None = None,
    core_rank_ratio: float = 1.0,
    layout: str = "whole-side",
    mode_size: int = 8,
    whole_side: str = "larger",
) -> TensorPlan:
    """Resolve the tensor plan of a ``d_out x d_in`` weight from the config fields.

    ``tensor_shape`` maps :func:`shape_key` strings to ``[[o_1, ..], [i_1, ..]]``. Shapes not listed follow
    ``layout``: ``whole-side`` (the paper's) keeps one side whole as one mode and splits the other into modes of
    ``mode_size`` (:func:`equal_modes`, :func:`whole_output_side`); ``balanced`` (the suite's earlier default) splits
    each side into ``tensor_order`` balanced factors.
    """
    if layout not in LAYOUTS:
        raise TensorisationError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    key = shape_key(d_out, d_in)
    explicit = (tensor_shape or {}).get(key)
    if explicit is not None:
        if len(explicit) != 2:
            raise TensorisationError(
                f"tensor_shape[{key!r}] must be two lists [[output factors], [input factors]], got {explicit!r}."
            )
        out_modes, in_modes = tuple(int(v) for v in explicit[0]), tuple(int(v) for v in explicit[1])
        if math.prod(out_modes) != d_out or math.prod(in_modes) != d_in or min(out_modes + in_modes) < 1:
            raise TensorisationError(
                f"tensor_shape[{key!r}] = {explicit!r} does not multiply out to {d_out} x {d_in}; give factors whose "
                f"products are {d_out} (outputs) and {d_in} (inputs)."
            )
    elif layout == "balanced":
        out_modes, in_modes = balanced_split(d_out, tensor_order), balanced_split(d_in, tensor_order)
    elif whole_output_side(d_out, d_in, whole_side):
        out_modes, in_modes = (d_out,), equal_modes(d_in, mode_size)
    else:
        out_modes, in_modes = equal_modes(d_out, mode_size), (d_in,)
    modes = out_modes + in_modes
    return TensorPlan(out_modes=out_modes, in_modes=in_modes, ranks=_core_ranks(modes, core_rank_ratio))
