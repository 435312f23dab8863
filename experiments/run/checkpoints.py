"""Training checkpoints, so a long run continues after preemption (Slurm requeue) or a crash.

Only what training changes is saved: the trainable parameters (by name), the optimizer and scheduler state, the step,
the losses so far and the RNG state. The batch order is a pure function of the seed, so a resumed run replays it.
Besides the periodic saves, a preemption signal (Slurm's SIGTERM, submitit's SIGUSR2) saves the step in progress
before the signal goes on to whoever handled it before (submitit requeues the job; by default the process ends).

With ``train.keep_best``, :class:`BestState` keeps the trainable state of the best validation step the same way
(the same payload, the same atomic write, the same restore) and a checkpoint carries it, so a resumed run chooses
as an uninterrupted one would.
"""

from __future__ import annotations

import glob
import math
import os
import random
import re
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Checkpointer:
    path: Path
    every: int  # optimizer steps between saves; 0 turns checkpointing off
    signature: str = ""  # the run's settings: a checkpoint of other settings is not resumed
    minutes: float = 0.0  # also save when this much time passed since the last save (0: by steps only)
    saved_step: int | None = field(default=None, init=False)
    _last_save: float = field(default_factory=lambda: time.monotonic(), init=False)

    def due(self, step: int, last_step: int) -> bool:
        # The last step too: a run preempted during its (possibly long) evaluation then does not train again.
        if self.every <= 0:
            return False
        late = self.minutes > 0 and time.monotonic() - self._last_save >= 60 * self.minutes
        return step % self.every == 0 or step == last_step or late

    def save(self, model: nn.Module, optimizer, scheduler, step: int, state: dict[str, Any]) -> None:
        payload = {
            "step": step,
            "trainable": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
            "signature": self.signature,
            **state,
        }
        save_atomic(payload, self.path)
        self.saved_step, self._last_save = step, time.monotonic()

    def load(self, model: nn.Module, optimizer, scheduler) -> dict[str, Any] | None:
        """Restore into ``model``/``optimizer``/``scheduler``; returns the saved payload, or None without a file."""
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=False)
            if not isinstance(payload, dict) or "trainable" not in payload or "step" not in payload:
                raise ValueError("not a checkpoint of this suite")
        except Exception as err:  # truncated, garbage, another format: never block the relaunch
            aside = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, aside)
            print(
                f"warning: the checkpoint {self.path} cannot be read ({type(err).__name__}); moved it to {aside} "
                f"and starting afresh"
            )
            return None
        if payload.get("signature") != self.signature:
            print(f"ignoring {self.path}: it was saved by a run with other settings")
            return None
        restore_trainable(model, payload["trainable"], self.path)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["torch_rng"])
        if payload.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        random.setstate(payload["python_rng"])
        return payload

    def remove(self) -> None:
        """The checkpoint and the best states kept beside it (``train.keep_best``): the record is written."""
        self.path.unlink(missing_ok=True)
        for path in best_files(self.path):
            path.unlink(missing_ok=True)


def trainable_state(model: nn.Module, device: str | None = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of the parameters that train, by name (``device=None``: where they are, for ``torch.save``, which
    copies one tensor at a time to the host)."""
    return {n: p.detach().to(device) if device else p.detach() for n, p in model.named_parameters() if p.requires_grad}


def restore_trainable(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Copy ``state`` (by name) into ``model``'s parameters; a name the model lacks means another model."""
    params = dict(model.named_parameters())
    missing = set(state) - set(params)
    if missing:
        raise RuntimeError(
            f"Checkpoint {source} does not fit this model ({len(missing)} unknown parameters); delete it to start over."
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_atomic(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, rename: a crash never leaves a truncated file and
    keeps the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def best_file(checkpoint: Path, step: int) -> Path:
    # Short: with the temporary file's prefix and suffix it must fit write.RUN_NAME_SUFFIX's budget up to 6 digits.
    return checkpoint.with_name(f"{checkpoint.stem}.best{step}.pt")


def best_files(checkpoint: Path) -> list[Path]:
    pattern = re.compile(re.escape(checkpoint.stem) + r"\.best(\d+)\.pt")
    candidates = checkpoint.parent.glob(f"{glob.escape(checkpoint.stem)}.best*.pt")
    return sorted(p for p in candidates if pattern.fullmatch(p.name))


class BestState:
    """The trainable state of the best validation step so far (``train.keep_best``), restored before the test.

    ``by="metric"``: the highest value wins; ``by="loss"``: the lowest; a tie keeps the earlier step, an undefined
    value (None, NaN) never wins. Adapters are kept in memory: their trainable tensors, cloned where they live. With
    ``on_disk`` (full fine-tuning: a 7B model's weights are not copied in RAM) the state is written beside the
    checkpoint ``stem``, one file per kept step; a file stays until a saved checkpoint names a later one
    (:meth:`committed`), so a run resumed from any checkpoint finds the state that checkpoint names.
    """

    def __init__(self, by: str, stem: Path, on_disk: bool) -> None:
        if by not in ("metric", "loss"):
            raise ValueError(f"keep_best must be 'metric' or 'loss', got {by!r}")
        self.by, self.stem, self.on_disk = by, stem, on_disk
        self.step: int | None = None
        self.value: float | None = None
        self.tensors: dict[str, torch.Tensor] | None = None  # in memory only
        self._committed: int | None = None  # the step the last saved checkpoint names (on disk: its file is kept)

    def better(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.by == "metric" else value < self.value

    def offer(self, model: nn.Module, step: int, value: float | None) -> bool:
        """Keep ``model``'s trainable state when ``value`` beats the best so far; returns whether it did."""
        if not self.better(value):
            return False
        if self.on_disk:
            save_atomic({"step": step, "trainable": trainable_state(model, device=None)}, best_file(self.stem, step))
        else:
            self.tensors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.step, self.value = step, value
        self._prune()
        return True

    def restore(self, model: nn.Module) -> None:
        """Put the kept state back into ``model`` (nothing kept: the model stays as it is)."""
        if self.step is None:
            return
        if self.on_disk:
            path = best_file(self.stem, self.step)
            # mmap: the tensors are read from the file as they are copied, never all at once into RAM.
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["trainable"]
        else:
            state, path = self.tensors, "the best state kept in memory"
        restore_trainable(model, state, path)

    def state(self) -> dict[str, Any]:
        """What a checkpoint saves of it (the tensors themselves only when they live in memory)."""
        tensors = {n: t.cpu() for n, t in self.tensors.items()} if self.tensors is not None else None
        return {"by": self.by, "step": self.step, "value": self.value, "on_disk": self.on_disk, "tensors": tensors}

    def load(self, saved: dict[str, Any] | None) -> None:
        """Continue from a checkpoint's :meth:`state`; a kept file the checkpoint names but that is gone is said."""
        if not saved or saved.get("step") is None:
            self._prune()
            return
        if self.on_disk and not best_file(self.stem, saved["step"]).exists():
            print(
                f"warning: the best state of step {saved['step']} ({best_file(self.stem, saved['step'])}) is gone; "
                f"the best step is chosen among the evaluations still to come"
            )
            return
        self.step, self.value = saved["step"], saved["value"]
        self.tensors = saved.get("tensors") if not self.on_disk else None
        self.committed()

    def committed(self) -> None:
        """A checkpoint naming the current best is on disk: files of other steps are no longer needed."""
        self._committed = self.step
        self._prune()

    def _prune(self) -> None:
        if not self.on_disk:
            return
        keep = {best_file(self.stem, s) for s in (self.step, self._committed) if s is not None}
        for path in best_files(self.stem):
            if path not in keep:
                path.unlink(missing_ok=True)

    def remove(self) -> None:
        for path in best_files(self.stem) if self.on_disk else []:
            path.unlink(missing_ok=True)


def preemption_signals() -> list[signal.Signals]:
    """SIGTERM (Slurm's preemption and scancel) and submitit's preemption signal (SIGUSR2 unless
    ``SUBMITIT_PREEMPT_SIGNAL`` names another)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    extra = getattr(signal, name, None)
    return [signal.SIGTERM] + ([extra] if extra is not None and extra != signal.SIGTERM else [])


class PreemptionGuard:
    """While training, a preemption signal only sets ``pending``; the loop saves a checkpoint after the step in
    progress (never half an optimizer step) and then calls :meth:`deliver`, which hands the signal to the handler
    that was installed before (submitit's checkpoint-and-requeue, or the default: the process ends).

    Signal handlers can only be set from the main thread; elsewhere the guard does nothing.
    """

    def __init__(self, signals: list[signal.Signals] | None = None) -> None:
        self.signals = preemption_signals() if signals is None else signals
        self.pending: int | None = None
        self._previous: dict[int, object] = {}

    def _defer(self, signum: int, frame) -> None:
        self.pending = signum

    def _arm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._defer)

    def _disarm(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous = {}

    def deliver(self) -> None:
        """Pass a deferred signal to the previous handler now; if that handler returns, keep guarding."""
        signum, self.pending = self.pending, None
        self._disarm()
        try:
            if signum is not None:
                signal.raise_signal(signum)
        finally:
            self._arm()

    def __enter__(self) -> PreemptionGuard:
        self._arm()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._disarm()
        if self.pending is not None and exc_type is None:  # arrived after the last step: deliver it now
            signum, self.pending = self.pending, None
            signal.raise_signal(signum)
