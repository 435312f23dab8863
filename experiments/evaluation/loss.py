"""The validation loss of a causal LM: the training loss (mean token cross-entropy over the answer tokens) on held-out
items, for ``train.keep_best=loss``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from experiments.tasks.decoder.batching import IGNORE, collate


@torch.no_grad()
def answer_loss(
    model: nn.Module, features: Sequence[dict[str, list[int]]], pad_id: int, device: torch.device, batch_size: int
) -> float:
    """Mean cross-entropy per answer token over all of ``features`` (``batching.tokenize_example``'s): each batch's
    loss (a mean over its answer tokens, as in training) weighted by its answer tokens, so the figure does not depend
    on how the items are batched. NaN when no item has an answer token."""
    model.eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))  # similar lengths: less padding
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([features[i] for i in order[start : start + batch_size]], pad_id, device)
        tokens = int((batch["labels"][:, 1:] != IGNORE).sum())  # the shifted labels the model's loss averages over
        if tokens:
            total += float(model(**batch).loss) * tokens
            count += tokens
    return total / count if count else float("nan")
