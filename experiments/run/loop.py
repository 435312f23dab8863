"""The training loop (any model that returns ``.loss``) and the evaluation of a sequence classifier: plain PyTorch,
progress bars, nothing hidden."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from experiments.errors import RunFailed
from experiments.evaluation.metrics import compute
from experiments.run import distributed
from experiments.run.checkpoints import Checkpointer, PreemptionGuard
from experiments.run.progress import Progress
from experiments.tasks.classification import Example


def encode(tokenizer, examples: Sequence[Example], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    first = [e["text_a"] for e in examples]
    second = [e["text_b"] for e in examples] if examples[0]["text_b"] is not None else None
    batch = tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def labels_of(examples: Sequence[Example], regression: bool, device: torch.device) -> torch.Tensor:
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
    starts = range(0, len(examples), batch_size)
    for start in Progress(starts, len(starts), desc, leave=False):
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


def shuffled_batches(count: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of indices; each pass over the data is a fresh shuffle (a batch may span two passes)."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            order += rng.sample(range(count), count)
        yield order[:batch_size]
        del order[:batch_size]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 autocast on a GPU that supports it, none elsewhere (CPU autocast is slower than float32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def loop_options(train_cfg: Any) -> dict[str, Any]:
    """The optimisation settings of a ``conf/train`` entry that :func:`train` takes as they are."""
    return {
        "grad_accum": train_cfg.get("grad_accum", 1),
        "precision": train_cfg.get("precision", "fp32"),
        "max_grad_norm": train_cfg.get("max_grad_norm"),
        "warmup_ratio": train_cfg.warmup_ratio,
        "weight_decay": train_cfg.weight_decay,
    }


@dataclass
class _Options:
    steps: int
    device: torch.device
    grad_accum: int
    max_grad_norm: float | None
    eval_every: int | None
    evaluate_fn: Callable[[int], dict[str, Any]] | None
    log_fn: Callable[[int, float], None] | None
    log_every: int


class _Loop:
    """The state of one training run: optimizer, schedule, scaler, the losses still on the device and the result."""

    def __init__(
        self,
        model: nn.Module,
        param_groups,
        options: _Options,
        precision: str,
        warmup_ratio: float,
        weight_decay: float,
        checkpoint: Checkpointer | None,
    ) -> None:
        self.model, self.options, self.checkpoint = model, options, checkpoint
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
        steps = options.steps
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, math.ceil(warmup_ratio * steps), steps)
        self.amp = autocast_dtype(precision, options.device)
        # fp16 needs loss scaling (bf16 and fp32 do not): gradients that underflow would silently be zero.
        self.scaler = torch.amp.GradScaler(options.device.type, enabled=self.amp is torch.float16)
        self.trainable = [p for group in param_groups for p in group["params"]]
        self.result = TrainResult(steps=steps, train_seconds=0.0)
        self.pending: list[torch.Tensor] = []  # step losses still on the device: read them (one sync) when needed
        self.start = time.perf_counter()

    def resume(self, batches: Iterator[list[int]]) -> int:
        """The first step to run: after a loaded checkpoint's, else 1."""
        saved = self.checkpoint.load(self.model, self.optimizer, self.scheduler) if self.checkpoint else None
        if saved is None:
            return 1
        self.result.losses, self.result.evaluations = saved["losses"], saved["evaluations"]
        self.result.train_seconds = saved["train_seconds"]
        for _ in range(saved["step"] * self.options.grad_accum):  # replay the batch order up to where it stopped
            next(batches)
        print(f"resuming from {self.checkpoint.path} at step {saved['step'] + 1} of {self.options.steps}")
        return saved["step"] + 1

    def read_losses(self, step: int) -> None:
        """Move the pending losses to ``result.losses``; stop the run at a non-finite loss or trainable value."""
        if not self.pending:
            return
        values = torch.stack(self.pending).tolist()
        self.pending.clear()
        first_pending, steps = step - len(values) + 1, self.options.steps
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise RunFailed(
                    f"Training stopped at step {first_pending + offset} of {steps}: the loss is {value} (a learning "
                    f"rate too large, or data the loss cannot take); no result was recorded as complete.",
                    step=first_pending + offset,
                )
        self.result.losses.extend(values)
        if not all(bool(torch.isfinite(p).all()) for p in self.trainable):
            raise RunFailed(
                f"Training stopped at step {step} of {steps}: a trainable value is not finite (a learning rate too "
                f"large?); no result was recorded as complete.",
                step=step,
            )

    def save(self, step: int) -> None:
        elapsed = self.result.train_seconds + time.perf_counter() - self.start
        state = {"losses": self.result.losses, "evaluations": self.result.evaluations, "train_seconds": elapsed}
        try:
            self.checkpoint.save(self.model, self.optimizer, self.scheduler, step, state)
        except (OSError, RuntimeError) as err:  # a full disk: the run goes on, only its final record must be written
            print(
                f"warning: could not save the checkpoint of step {step} to {self.checkpoint.path} ({err}); "
                f"training goes on"
            )

    def optimizer_step(self, forward: nn.Module, batches: Iterator[list[int]], make_batch: Callable) -> None:
        """One optimizer step over ``grad_accum`` micro-batches; its loss stays on the device (``pending``)."""
        device, grad_accum = self.options.device, self.options.grad_accum
        self.model.train()
        step_loss = torch.zeros((), device=device)
        for micro in range(grad_accum):
            # Under DDP, all-reduce the gradients once per optimizer step: on the last micro-batch only.
            with distributed.sync_gradients(forward, micro == grad_accum - 1):
                with torch.autocast(device.type, dtype=self.amp, enabled=self.amp is not None):
                    loss = forward(**make_batch(distributed.shard(next(batches)))).loss / grad_accum
                self.scaler.scale(loss).backward()
            step_loss += loss.detach().float()
        if self.options.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, self.options.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending.append(step_loss)

    def after_step(self, step: int, bar: Progress, guard: Any) -> None:
        """Read, log, evaluate, checkpoint and answer a preemption signal, each only when due."""
        o, checkpoint = self.options, self.checkpoint
        evaluating = o.evaluate_fn is not None and o.eval_every and step % o.eval_every == 0 and step < o.steps
        due = checkpoint is not None and checkpoint.due(step, o.steps)
        logging = step % o.log_every == 0 or step == o.steps
        # On a CPU reading a loss costs nothing: check every step; on an accelerator at the log steps (one sync).
        read_every = 1 if o.device.type == "cpu" else o.log_every
        if logging or evaluating or due or step % read_every == 0:
            self.read_losses(step)
        if logging:
            if o.log_fn is not None:
                o.log_fn(step, self.result.losses[-1])
            bar.set_loss(sum(self.result.losses[-20:]) / len(self.result.losses[-20:]))
        if evaluating:
            self.result.train_seconds += time.perf_counter() - self.start
            self.result.evaluations.append({"step": step, **o.evaluate_fn(step)})
            self.start = time.perf_counter()
        preempted = checkpoint is not None and guard.pending is not None
        if (due or preempted) and distributed.is_main():
            self.read_losses(step)
            self.save(step)
        if preempted:
            print(f"preemption signal: checkpoint of step {step} saved to {checkpoint.path}", flush=True)
            guard.deliver()  # submitit requeues and exits, or the process ends; if the handler returns, go on

    def save_on_interrupt(self, done: int, first: int) -> None:
        """Ctrl-C: keep what the finished steps did, so the same command continues from there."""
        checkpoint = self.checkpoint
        if checkpoint is not None and distributed.is_main() and done >= first and checkpoint.saved_step != done:
            del self.pending[done - len(self.result.losses) :]  # only the losses of finished steps (1..done) are kept
            self.read_losses(done)
            self.save(done)
            print(f"interrupted: checkpoint of step {done} saved to {checkpoint.path}; the same command continues")


def train(
    model: nn.Module,
    *,
    batches: Iterator[list[int]],
    make_batch: Callable[[list[int]], dict[str, torch.Tensor]],
    param_groups: list[dict[str, Any]],
    steps: int,
    device: torch.device,
    grad_accum: int = 1,
    precision: str = "fp32",
    max_grad_norm: float | None = None,
    warmup_ratio: float = 0.0,
    weight_decay: float = 0.0,
    eval_every: int | None = None,
    evaluate_fn: Callable[[int], dict[str, Any]] | None = None,
    log_fn: Callable[[int, float], None] | None = None,
    log_every: int = 10,  # losses are read from the device (a sync) only at log, evaluation and checkpoint steps
    checkpoint: Checkpointer | None = None,
) -> TrainResult:
    """``steps`` optimizer steps of AdamW with linear warm-up and decay, each over ``grad_accum`` micro-batches.

    ``make_batch`` turns a list of example indices into model inputs with ``labels``; the model returns ``.loss``.
    Under torchrun each rank takes its slice of every batch (``distributed.py``). With ``checkpoint``, the state is
    saved every ``checkpoint.every`` steps and when a preemption signal arrives (after the step in progress), and a
    run that finds a checkpoint continues from it.
    """
    options = _Options(steps, device, grad_accum, max_grad_norm, eval_every, evaluate_fn, log_fn, log_every)
    loop = _Loop(model, param_groups, options, precision, warmup_ratio, weight_decay, checkpoint)
    first = loop.resume(batches)
    forward = distributed.wrap(model)
    loop.start = time.perf_counter()
    bar = Progress(range(first, steps + 1), steps, "train", initial=first - 1, enabled=distributed.is_main())
    if checkpoint is not None and checkpoint.every <= 0:
        loop.checkpoint = None  # checkpointing off: no periodic saves, none on a signal (the loaded one still counts)
    # Only with a checkpoint is a preemption signal worth deferring to the end of the step.
    guard = PreemptionGuard() if loop.checkpoint is not None else contextlib.nullcontext()
    done = first - 1  # the last step whose optimizer update is complete (what a checkpoint may hold)
    try:
        with guard:
            for step in bar:
                loop.optimizer_step(forward, batches, make_batch)
                done = step
                loop.after_step(step, bar, guard)
    except KeyboardInterrupt:
        loop.save_on_interrupt(done, first)
        raise
    loop.read_losses(steps)
    loop.result.train_seconds += time.perf_counter() - loop.start
    return loop.result
