"""The training loop and evaluation of a sequence classifier: plain PyTorch, progress bars, nothing hidden."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from .metrics import compute
from .tasks import Example


def encode(tokenizer, examples: Sequence[Example], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    first = [e["text_a"] for e in examples]
    second = [e["text_b"] for e in examples] if examples[0]["text_b"] is not None else None
    batch = tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def _labels(examples: Sequence[Example], regression: bool, device: torch.device) -> torch.Tensor:
    values = [e["label"] for e in examples]
    return torch.tensor(values, dtype=torch.float32 if regression else torch.long, device=device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    metrics: Sequence[str],
    max_length: int,
    batch_size: int,
    regression: bool,
    device: torch.device,
    desc: str = "eval",
) -> dict[str, float]:
    model.eval()
    predictions: list = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False):
        chunk = examples[start : start + batch_size]
        logits = model(**encode(tokenizer, chunk, max_length, device)).logits
        predictions.extend(logits.squeeze(-1).tolist() if regression else logits.argmax(-1).tolist())
    return compute(metrics, predictions, [e["label"] for e in examples])


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def parameter_groups(model: nn.Module, lr: float, head_lr: float | None, head_modules: Sequence[str]):
    """The adapter (or, for full fine-tuning, every weight) at ``lr``; the task head at ``head_lr``."""
    head, body = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_head = head_lr is not None and any(f".{m}." in f".{name}" for m in head_modules)
        (head if is_head else body).append(parameter)
    groups = [{"params": body, "lr": lr}]
    if head:
        groups.append({"params": head, "lr": head_lr})
    return groups


def train(
    model: nn.Module,
    tokenizer,
    train_examples: Sequence[Example],
    *,
    lr: float,
    head_lr: float | None,
    head_modules: Sequence[str],
    steps: int,
    batch_size: int,
    max_length: int,
    regression: bool,
    device: torch.device,
    seed: int,
    warmup_ratio: float = 0.0,
    weight_decay: float = 0.0,
    eval_every: int | None = None,
    evaluate_fn: Callable[[int], dict[str, Any]] | None = None,
    log_fn: Callable[[int, float], None] | None = None,
    log_every: int = 10,
) -> TrainResult:
    """``steps`` optimizer steps of AdamW with linear warm-up and decay; epochs cycle through shuffled data."""
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, head_lr, head_modules), weight_decay=weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * steps), steps)
    rng = random.Random(seed)
    order: list[int] = []
    result = TrainResult(steps=steps, train_seconds=0.0)
    start = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc="train")
    for step in bar:
        model.train()
        if len(order) < batch_size:
            order += rng.sample(range(len(train_examples)), len(train_examples))
        chunk = [train_examples[i] for i in order[:batch_size]]
        del order[:batch_size]
        loss = model(**encode(tokenizer, chunk, max_length, device), labels=_labels(chunk, regression, device)).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(loss.item())
        if log_fn is not None and (step % log_every == 0 or step == steps):
            log_fn(step, result.losses[-1])
        bar.set_postfix(loss=f"{sum(result.losses[-20:]) / len(result.losses[-20:]):.4f}")
        if evaluate_fn is not None and eval_every and step % eval_every == 0 and step < steps:
            result.train_seconds += time.perf_counter() - start
            result.evaluations.append({"step": step, **evaluate_fn(step)})
            start = time.perf_counter()
    result.train_seconds += time.perf_counter() - start
    return result
