"""Training checkpoints, so a long run continues after preemption (Slurm requeue) or a crash.

Only what training changes is saved: the trainable parameters (by name), the optimizer and scheduler state, the step,
the losses so far and the RNG state. The batch order is a pure function of the seed, so a resumed run replays it.
Besides the periodic saves, a preemption signal (Slurm's SIGTERM, submitit's SIGUSR2) saves the step in progress
before the signal goes on to whoever handled it before (submitit requeues the job; by default the process ends).
"""

from __future__ import annotations

import os
import random
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
            "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
            "signature": self.signature,
            **state,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the rename: a crash never leaves a truncated checkpoint
            os.replace(tmp, self.path)  # a crash mid-save keeps the previous checkpoint
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
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
        params = dict(model.named_parameters())
        missing = set(payload["trainable"]) - set(params)
        if missing:
            raise RuntimeError(
                f"Checkpoint {self.path} does not fit this model ({len(missing)} unknown parameters); delete it to "
                f"start over."
            )
        with torch.no_grad():
            for name, value in payload["trainable"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["torch_rng"])
        if payload.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        random.setstate(payload["python_rng"])
        return payload

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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
