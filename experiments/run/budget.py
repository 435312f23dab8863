"""The training budget: one rule for every task family, and a record of where the number came from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Budget:
    steps: int
    source: str  # "train.max_steps" | "epochs" | "train.default_steps"
    epochs: float | None  # the epochs the steps correspond to (None where unknown)
    global_batch: int
    note: str  # one line for the summary

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_budget(train: Any, train_size: int) -> Budget:
    """Optimizer steps for ``train`` (a ``conf/train`` entry) on ``train_size`` examples.

    An explicit ``train.max_steps`` wins; else ``train.epochs`` (usually the task's protocol epochs) over the global
    batch ``batch_size x grad_accum``; else ``train.default_steps``.
    """
    global_batch = int(train["batch_size"]) * int(train.get("grad_accum") or 1)
    epochs = train.get("epochs")
    steps_per_epoch = train_size / global_batch if train_size else None

    def covered(steps: int) -> float | None:
        return round(steps / steps_per_epoch, 3) if steps_per_epoch else None

    if train.get("max_steps") is not None:
        steps = int(train["max_steps"])
        ignored = f"; the task's {epochs:g} epochs are not used" if epochs else ""
        note = f"{steps} steps (train.max_steps{ignored}), {covered(steps)} epochs of {train_size} examples"
        return Budget(steps, "train.max_steps", covered(steps), global_batch, note)
    if epochs:
        steps = max(1, math.ceil(epochs * train_size / global_batch))
        note = f"{steps} steps ({epochs:g} epochs of {train_size} examples at a global batch of {global_batch})"
        return Budget(steps, "epochs", float(epochs), global_batch, note)
    steps = int(train.get("default_steps", 200))
    note = f"{steps} steps (train.default_steps), {covered(steps)} epochs of {train_size} examples"
    return Budget(steps, "train.default_steps", covered(steps), global_batch, note)
