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
    global_batch: int  # the examples one optimizer step sees: batch_size x grad_accum, a batch at most the whole data
    note: str  # one line for the summary

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_budget(train: Any, train_size: int) -> Budget:
    """Optimizer steps for ``train`` (a ``conf/train`` entry) on ``train_size`` examples.

    An explicit ``train.max_steps`` wins; else ``train.epochs`` (usually the task's protocol epochs) over the global
    batch ``batch_size x grad_accum``; else ``train.default_steps``.

    A micro-batch is never more than the training set: the samplers (``loop.shuffled_batches``, the decoders'
    ``bucketed_batches``) cut passes over the data into batches and a batch larger than the data is the whole data,
    once. So a step sees ``min(batch_size, train_size) x grad_accum`` examples, and the epochs are counted with that.
    """
    batch, accumulation = int(train["batch_size"]), int(train.get("grad_accum") or 1)
    global_batch = (min(batch, train_size) if train_size else batch) * accumulation
    epochs = train.get("epochs")
    whole = (
        f"; a batch of {batch} is more than the {train_size} examples, so each micro-batch is the whole training set"
        if train_size and batch > train_size
        else ""
    )

    def covered(steps: int) -> float | None:
        return round(steps * global_batch / train_size, 3) if train_size else None

    if train.get("max_steps") is not None:
        steps = int(train["max_steps"])
        ignored = f"; the task's {epochs:g} epochs are not used" if epochs else ""
        note = f"{steps} steps (train.max_steps{ignored}), {covered(steps)} epochs of {train_size} examples{whole}"
        return Budget(steps, "train.max_steps", covered(steps), global_batch, note)
    if epochs:
        steps = max(1, math.ceil(epochs * train_size / global_batch))
        note = f"{steps} steps ({epochs:g} epochs of {train_size} examples at a global batch of {global_batch}{whole})"
        return Budget(steps, "epochs", float(epochs), global_batch, note)
    steps = int(train.get("default_steps", 200))
    note = f"{steps} steps (train.default_steps), {covered(steps)} epochs of {train_size} examples{whole}"
    return Budget(steps, "train.default_steps", covered(steps), global_batch, note)
