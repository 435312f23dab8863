"""Tokenising prompt/target pairs for causal-LM fine-tuning: the loss covers the target tokens only."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


def tokenize_example(tokenizer, prompt: str, target: str, max_length: int) -> dict[str, list[int]]:
    """input_ids of prompt + target + EOS; labels copy the target part and mask the prompt.

    The prompt is tokenised on its own so the mask boundary is exact; when the pair is too long, the prompt loses
    tokens from its start, so the answer (what is learned) survives.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    whole_target = len(target_ids)
    target_ids = target_ids[:max_length]
    room = max_length - len(target_ids)
    kept = prompt_ids[len(prompt_ids) - room :] if room > 0 else []
    return {
        "input_ids": kept + target_ids,
        "labels": [IGNORE] * len(kept) + target_ids,
        "prompt_cut": len(prompt_ids) - len(kept),  # prompt tokens lost from its start
        "prompt_kept": len(kept),
        "target_cut": whole_target - len(target_ids),
    }


def collate(features: Sequence[dict[str, list[int]]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked out of attention and of the loss."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def bucketed_batches(lengths: Sequence[int], batch_size: int, seed: int, pool: int = 50) -> Iterator[list[int]]:
    """Endless batches of indices: each epoch is shuffled, cut into pools of ``pool`` batches, each pool sorted by
    length and cut into batches, and the batches shuffled, so a batch holds examples of similar length (less padding)
    while the order stays random."""
    rng = random.Random(seed)
    while True:
        order = rng.sample(range(len(lengths)), len(lengths))
        batches: list[list[int]] = []
        for start in range(0, len(order), pool * batch_size):
            chunk = sorted(order[start : start + pool * batch_size], key=lambda i: lengths[i])
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        yield from batches
