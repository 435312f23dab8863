"""The benchmark's own correctness check, reported beside its figures (as the efficiency report checks merged against
unmerged): a mixed batch through ``adapter_names=`` gives every row what its adapter gives alone, in the forward
logits and in greedy generation, and the merged single adapter gives what it gives unmerged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

BASE = "__base__"  # PEFT's name for a row with no update
CHECK_ROWS = 4  # rows of the checked batch: the first adapters, each once, and a base-model row
# Relative error allowed (norm of the difference over the norm of the reference): the GPU check's for its paths.
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-300))


def _alone(model, name: str, fn: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """``fn(model)`` with only adapter ``name`` active (``__base__``: with the adapters disabled)."""
    if name == BASE:
        with model.disable_adapter():
            return fn(model)
    model.set_adapter(name, inference_mode=True)
    return fn(model)


@torch.no_grad()
def mixed_batch_check(model, merged, ids: torch.Tensor, names: list[str], preset: dict[str, Any]) -> dict[str, Any]:
    """Rows through the first adapters and one through the base model, mixed in one batch, against each alone."""
    rows = min(CHECK_ROWS, preset["batch"])
    picks = [names[i % len(names)] for i in range(rows - 1)] + [BASE]
    ids = ids[:rows]
    tokens = preset["decode_tokens"]
    greedy = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False, "pad_token_id": 0}

    def logits(m, x=ids):
        return m(input_ids=x).logits.float()

    def generate(m, x=ids, **kwargs):
        return m.generate(input_ids=x, attention_mask=torch.ones_like(x), **greedy, **kwargs)[:, x.shape[1] :]

    mixed = model(input_ids=ids, adapter_names=picks).logits.float()
    mixed_tokens = generate(model, adapter_names=picks)
    alone = [_alone(model, name, lambda m, i=i: logits(m, ids[i : i + 1]))[0] for i, name in enumerate(picks)]
    alone_tokens = [_alone(model, name, lambda m, i=i: generate(m, ids[i : i + 1]))[0] for i, name in enumerate(picks)]
    base = _alone(model, BASE, logits)
    model.set_adapter("default", inference_mode=True)
    merged_diff = _rel(logits(merged, ids[:1]), logits(model, ids[:1]))
    diffs = [_rel(mixed[i], alone[i]) for i in range(rows)]
    # How far each adapter moves its row from the base model: a check is only as sharp as the updates are large.
    update = min(_rel(alone[i], base[i]) for i in range(rows - 1))
    tolerance = TOLERANCE.get(preset["dtype"], TOLERANCE["bfloat16"])
    return {
        "rows": picks,
        "max_rel_diff": max(diffs),
        "tolerance": tolerance,
        "update_rel_size": update,
        "greedy_tokens": tokens,
        "greedy_same_rows": sum(bool(torch.equal(mixed_tokens[i], alone_tokens[i])) for i in range(rows)),
        "merged_rel_diff": merged_diff,
        "ok": max(diffs) <= tolerance and merged_diff <= tolerance and update > tolerance,
    }
