"""Training checkpoints, so a long run continues after preemption (Slurm requeue) or a crash.

Only what training changes is saved: the trainable parameters (by name), the optimizer and scheduler state, the step,
the losses so far and the RNG state. The batch order is a pure function of the seed, so a resumed run replays it.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Checkpointer:
    path: Path
    every: int  # optimizer steps between saves; 0 turns checkpointing off
    signature: str = ""  # the run's settings: a checkpoint of other settings is not resumed

    def due(self, step: int, last_step: int) -> bool:
        return self.every > 0 and step % self.every == 0 and step < last_step

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
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, self.path)  # a crash mid-save keeps the previous checkpoint
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, model: nn.Module, optimizer, scheduler) -> dict[str, Any] | None:
        """Restore into ``model``/``optimizer``/``scheduler``; returns the saved payload, or None without a file."""
        if not self.path.exists():
            return None
        payload = torch.load(self.path, map_location="cpu", weights_only=False)
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


def checkpoint_path(output_dir: str | Path, run_name: str) -> Path:
    return Path(output_dir) / ".checkpoints" / f"{run_name}.pt"
