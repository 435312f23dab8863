"""The training loop (any model that returns ``.loss``) and the evaluation of a sequence classifier: plain PyTorch,
progress bars, nothing hidden."""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from experiments.errors import RunFailed
from experiments.evaluation.metrics import compute
from experiments.run import distributed
from experiments.run.checkpoints import BestState, Checkpointer, PreemptionGuard
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
def predict(
    model: nn.Module,
    tokenizer,
    examples: Sequence[Example],
    max_length: int,
    batch_size: int,
    regression: bool,
    device: torch.device,
    desc: str = "eval",
    with_loss: bool = False,
) -> tuple[list, float | None]:
    """Predictions of ``model`` on ``examples`` and, ``with_loss``, its mean loss over them from the same forward
    passes: the training loss (cross-entropy, or mean squared error for regression)."""
    model.eval()
    predictions: list = []
    total = 0.0
    starts = range(0, len(examples), batch_size)
    for start in Progress(starts, len(starts), desc, leave=False):
        chunk = examples[start : start + batch_size]
        labels = {"labels": labels_of(chunk, regression, device)} if with_loss else {}
        output = model(**encode(tokenizer, chunk, max_length, device), **labels)
        predictions.extend(output.logits.squeeze(-1).tolist() if regression else output.logits.argmax(-1).tolist())
        if with_loss:
            total += float(output.loss) * len(chunk)  # the model's loss is a mean over its batch
    return predictions, (total / max(len(examples), 1) if with_loss else None)


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
    predictions, _ = predict(model, tokenizer, examples, max_length, batch_size, regression, device, desc)
    return compute(metrics, predictions, [e["label"] for e in examples])


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    # train.keep_best: the step whose trainable state was restored (None: the last step's state is the model's)
    chosen_step: int | None = None
    selection: dict[str, Any] | None = None  # how it was chosen: by, metric, value, where the state was kept


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
        "keep_best": train_cfg.get("keep_best"),
    }


def selection_value(point: dict[str, Any], by: str) -> float | None:
    """What ``train.keep_best`` compares in a periodic evaluation point (``families/base.py`` names the keys)."""
    return point.get("validation_loss") if by == "loss" else point.get("main_value")


def validation_line(point: dict[str, Any], steps: int, kept: bool) -> str:
    """The log line of one periodic evaluation: ``validation at step 80 of 240: accuracy 0.7900, loss 0.5210``."""
    parts = [f"{point['main_metric']} {_number(point.get('main_value'))}"] if point.get("main_metric") else []
    if "validation_loss" in point:
        parts.append(f"loss {_number(point['validation_loss'])}")
    return f"validation at step {point['step']} of {steps}: {', '.join(parts) or 'done'}" + (
        " (best so far, kept)" if kept else ""
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


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
    keep_best: str | None = None


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
        self.best: BestState | None = None  # train.keep_best (set by train())
        self.start = time.perf_counter()

    def resume(self, batches: Iterator[list[int]]) -> int:
        """The first step to run: after a loaded checkpoint's, else 1."""
        saved = self.checkpoint.load(self.model, self.optimizer, self.scheduler) if self.checkpoint else None
        if self.best is not None:  # the best so far survives a resume; files no checkpoint names are dropped
            self.best.load(saved.get("best") if saved else None)
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
        if self.best is not None:
            state["best"] = self.best.state()
        try:
            self.checkpoint.save(self.model, self.optimizer, self.scheduler, step, state)
            if self.best is not None:
                self.best.committed()
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
        evaluating = self.evaluation_due(step)
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
            self.validate(step)
            self.start = time.perf_counter()
        preempted = checkpoint is not None and guard.pending is not None
        if (due or preempted) and distributed.is_main():
            self.read_losses(step)
            self.save(step)
        if preempted:
            print(f"preemption signal: checkpoint of step {step} saved to {checkpoint.path}", flush=True)
            guard.deliver()  # submitit requeues and exits, or the process ends; if the handler returns, go on

    def evaluation_due(self, step: int) -> bool:
        # The last step is evaluated by the run's final evaluation, unless keep_best needs it among the candidates.
        o = self.options
        periodic = bool(o.eval_every) and step % o.eval_every == 0 and (step < o.steps or bool(o.keep_best))
        return o.evaluate_fn is not None and (periodic or (bool(o.keep_best) and step == o.steps))

    def catch_up(self, step: int) -> None:
        """A checkpoint saved after a step's update but before its evaluation ended (Ctrl-C or a crash during it):
        the model holds that step's state, so evaluate it now; a resumed run then has every point of the curve."""
        if step >= 1 and self.evaluation_due(step) and all(p["step"] != step for p in self.result.evaluations):
            self.validate(step)

    def validate(self, step: int) -> None:
        """One periodic evaluation: into the result, the log and, with keep_best, the best state when it is better."""
        point = {"step": step, **self.options.evaluate_fn(step)}
        self.result.evaluations.append(point)
        best = self.best
        kept = best is not None and best.offer(self.model, step, selection_value(point, best.by))
        if distributed.is_main():
            print(validation_line(point, self.options.steps, kept), flush=True)

    def choose(self) -> None:
        """keep_best: restore the best step's trainable state, so the final evaluation tests it, and say which."""
        best, steps = self.best, self.options.steps
        if best is None:
            return
        if best.step is None:
            print(f"warning: no validation {best.by} had a value; the last step's state ({steps}) is tested")
        else:
            best.restore(self.model)
            what = "loss" if best.by == "loss" else self._metric_name()
            print(f"keep_best: restored step {best.step} of {steps} (validation {what} {_number(best.value)})")
        if self.checkpoint is None:  # nothing will resume from here: kept files are done with once restored
            best.remove()
        self.result.chosen_step = best.step
        self.result.selection = {
            "by": best.by,
            "metric": "loss" if best.by == "loss" else self._metric_name(),
            "value": best.value,
            "kept": "on disk" if best.on_disk else "in memory",
        }

    def _metric_name(self) -> str | None:
        return next((p["main_metric"] for p in self.result.evaluations if p.get("main_metric")), None)

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
    keep_best: str | None = None,
) -> TrainResult:
    """``steps`` optimizer steps of AdamW with linear warm-up and decay, each over ``grad_accum`` micro-batches.

    ``make_batch`` turns a list of example indices into model inputs with ``labels``; the model returns ``.loss``.
    Under torchrun each rank takes its slice of every batch (``distributed.py``). With ``checkpoint``, the state is
    saved every ``checkpoint.every`` steps and when a preemption signal arrives (after the step in progress), and a
    run that finds a checkpoint continues from it.

    ``keep_best`` (``"metric"`` or ``"loss"``): ``evaluate_fn`` also runs at the last step, the trainable state of the
    best evaluation is kept (:class:`BestState`) and restored before returning; ``TrainResult.chosen_step`` says which.
    """
    options = _Options(steps, device, grad_accum, max_grad_norm, eval_every, evaluate_fn, log_fn, log_every, keep_best)
    loop = _Loop(model, param_groups, options, precision, warmup_ratio, weight_decay, checkpoint)
    scratch = _keep_best(loop, keep_best, checkpoint)
    first = loop.resume(batches)
    loop.catch_up(first - 1)
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
        loop.read_losses(steps)
        loop.result.train_seconds += time.perf_counter() - loop.start
        loop.choose()
    except KeyboardInterrupt:
        loop.save_on_interrupt(done, first)
        raise
    finally:
        if scratch is not None:  # a full fine-tuning's best state without a checkpoint folder: a temporary one
            shutil.rmtree(scratch, ignore_errors=True)
    return loop.result


def _keep_best(loop: _Loop, keep_best: str | None, checkpoint: Checkpointer | None) -> Path | None:
    """Set up ``loop.best`` for ``train.keep_best``; returns a scratch folder to remove at the end, if one was made.

    On disk when most of the model trains (full fine-tuning: a copy of every weight would double the model in memory),
    beside the checkpoint; in memory otherwise (an adapter's tensors are a small share of the model)."""
    if not keep_best:
        return None
    if loop.options.evaluate_fn is None:
        if distributed.is_main():  # under torchrun only rank 0 evaluates, and chooses
            raise ValueError("keep_best needs evaluate_fn (a validation evaluation) and eval_every")
        return None
    trainable = sum(p.numel() for p in loop.trainable)
    on_disk = trainable > sum(p.numel() for p in loop.model.parameters()) / 2
    scratch = None
    if checkpoint is not None:
        stem = checkpoint.path
    else:
        scratch = Path(tempfile.mkdtemp(prefix="keep-best-")) if on_disk else None
        stem = (scratch or Path(tempfile.gettempdir())) / "run.pt"
    loop.best = BestState(keep_best, stem, on_disk)
    return scratch
