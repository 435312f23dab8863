"""Pick TeRA's forward path by timing both on the device in use, once per kind of call.

The roofline in :mod:`tera.cost` only knows orders of magnitude; which path is faster depends on the device, its
libraries and the shapes.  So ``forward_path="auto"`` times the factorised and the merged path on the layer's own
operands the first time it meets a (tensor plan, diagonal placement, token-count bucket, dtype, device, training)
combination, keeps the faster and reuses that choice for the rest of the process.  Timing is skipped, and the cost
model decides, where it cannot be done honestly: under ``torch.compile`` tracing or CUDA graph capture, inside a
backward pass (activation checkpointing's recomputation), on devices other than CPU and CUDA, or when the
environment variable ``TERA_AUTOTUNE=0`` asks for the model alone (e.g. for bit-reproducible path choices across
machines).  :func:`choices` lists what was decided and why, for reports.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .contraction import factorised_delta, merged_linear
from .cost import FACTORISED, MERGED, choose_path
from .tensorize import TensorPlan

ENV_SWITCH = "TERA_AUTOTUNE"
TIMED_REPEATS = 5  # per path, after one warm-up call each; the paths alternate so drifts hit both alike
CLOSE_CALL = 1.15  # medians closer than this factor get CLOSE_CALL_REPEATS more calls each before the choice
CLOSE_CALL_REPEATS = 15


@dataclass(frozen=True)
class Choice:
    path: str
    source: str  # "timed" or "cost model"
    ms: dict[str, float]  # median milliseconds per path (timed only)


_CHOICES: dict[tuple, Choice] = {}


def choices() -> dict[tuple, Choice]:
    """Every decision made in this process, keyed by (plan, placement, token bucket, dtype, device, training)."""
    return dict(_CHOICES)


def reset() -> None:
    _CHOICES.clear()


def token_bucket(tokens: int) -> int:
    """The power of two at or above ``tokens``: calls of similar size share one decision."""
    return 1 << max(tokens - 1, 0).bit_length()


def _timing_possible(x: torch.Tensor) -> bool:
    if os.environ.get(ENV_SWITCH, "1") == "0" or x.device.type not in ("cpu", "cuda"):
        return False
    if torch.compiler.is_compiling():
        return False
    if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return torch._C._current_graph_task_id() == -1  # -1: not inside a backward pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_paths(runners: dict[str, Callable[[], None]], device: torch.device) -> dict[str, float]:
    times: dict[str, list[float]] = {path: [] for path in runners}
    order = list(runners)

    def rounds(count: int, warm_up: bool) -> None:
        for repeat in range(count + warm_up):
            for path in order if repeat % 2 else reversed(order):
                _sync(device)
                start = time.perf_counter()
                runners[path]()
                _sync(device)
                if repeat or not warm_up:  # the first round warms caches and kernels up
                    times[path].append(time.perf_counter() - start)

    rounds(TIMED_REPEATS, warm_up=True)
    medians = sorted(statistics.median(values) for values in times.values())
    if medians[-1] < CLOSE_CALL * medians[0]:  # a close call: more repeats, so noise does not decide it
        rounds(CLOSE_CALL_REPEATS, warm_up=False)
    return {path: 1000 * statistics.median(values) for path, values in times.items()}


def _key(plan: TensorPlan, x: torch.Tensor, placement: str, training: bool) -> tuple:
    tokens = x.numel() // x.shape[-1]
    return (plan.key, placement, token_bucket(tokens), x.dtype, str(x.device), training)


Operands = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, Sequence[torch.Tensor], Sequence[torch.Tensor], float]


def pick_path(
    plan: TensorPlan, x: torch.Tensor, placement: str, training: bool, operands: Callable[[], Operands]
) -> str:
    """The faster path for this call, timed on first use of its kind (see the module docstring).

    ``operands()`` gives (weight, bias, core, factors, lambdas, scale) as the layer's forward uses them; it is called
    only when a timing is due, so a decided call costs one dictionary lookup.
    """
    key = _key(plan, x, placement, training)
    known = _CHOICES.get(key)
    if known is not None:
        return known.path
    if not _timing_possible(x):
        # Not cached: a later call that can be timed still decides for good.
        return choose_path(plan, x.numel() // x.shape[-1], training, x.device.type, x.element_size())

    weight, bias, core, factors, lambdas, scale = operands()
    x_in = x.detach().requires_grad_(training and x.requires_grad)
    leaves = [lam.detach().requires_grad_(training) for lam in lambdas]
    # Values do not matter for timing; ones leave the global random stream untouched.
    upstream = x.new_ones(*x.shape[:-1], plan.d_out) if training else None

    def runner(path: str) -> Callable[[], None]:
        def run() -> None:
            if path == MERGED:
                out = merged_linear(plan, x_in, weight, bias, core, factors, leaves, placement, scale)
            else:
                out = F.linear(x_in, weight, bias) + factorised_delta(
                    plan, x_in, core, factors, leaves, placement, scale
                )
            if training:
                torch.autograd.backward(out, upstream, inputs=[t for t in (x_in, *leaves) if t.requires_grad])

        return run

    # Our own saved-tensor hooks shield the timing graph from any outer ones (non-reentrant checkpointing packs
    # every tensor saved inside its region and would count these).
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t), torch.set_grad_enabled(training):
        ms = _time_paths({FACTORISED: runner(FACTORISED), MERGED: runner(MERGED)}, x.device)
    choice = Choice(path=min(ms, key=ms.__getitem__), source="timed", ms=ms)
    _CHOICES[key] = choice
    return choice.path
