"""The family interface: what differs between fine-tuning a classification encoder and a causal decoder.

The run pipeline (``experiments/run/pipeline.py``) drives the same steps for every family; a family supplies only its
data and batches, its model loading, its evaluation and the record fields that are its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn


@dataclass
class Evaluation:
    """What a family's final evaluation gives the record."""

    evaluations: list[dict[str, Any]]  # per evaluation point: {"step", "validation"?, "test"}
    final_metrics: dict[str, float]  # flat ``test_*`` / ``validation_*`` numbers that tables read
    fields: dict[str, Any] = field(default_factory=dict)  # the family's own record fields


class Family:
    """The interface; one subclass per model family, chosen by ``task.kind`` (see :data:`FAMILIES`)."""

    name: str = ""
    modules_to_save: tuple[str, ...] = ()
    task_type: str | None = None  # the PEFT task type, e.g. CAUSAL_LM

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def data_fingerprint(self) -> dict[str, str]:
        """What the run will read, known before reading it, by role (train, validation, test, ...): a local file by
        its content hash, an installed one by package release and file, a hub split by name
        (``experiments/records/sources.py``). Never a path: the same data read from anywhere is the same run."""
        raise NotImplementedError

    def load_data(self) -> Any:
        """The task's data; the returned object has ``train_size``."""
        raise NotImplementedError

    def load_model(self, device: torch.device) -> tuple[nn.Module, Any]:
        """The pretrained model (before adaptation) and its tokenizer."""
        raise NotImplementedError

    def prepare_model(self, model: nn.Module) -> None:
        """Anything to do before PEFT wraps the model (e.g. activation checkpointing)."""

    def learning_rate(self) -> float:
        return float(self.cfg.method.lr)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        raise NotImplementedError

    def batches(self, data: Any, tokenizer: Any, device: torch.device) -> tuple[Iterator[list[int]], Callable]:
        """Endless index batches and the function that turns indices into model inputs with ``labels``."""
        raise NotImplementedError

    def periodic_evaluation(self, model: nn.Module, tokenizer: Any, data: Any, device: torch.device, log) -> Callable:
        """The function the loop calls every ``train.eval_every`` steps (and at the last one with ``train.keep_best``),
        or None. Given the step, it returns the evaluation point: ``validation`` (the metrics, shaped as in
        :meth:`evaluate`), ``main_metric`` and ``main_value`` (the name and value of the one metric ``keep_best=metric``
        maximises) and ``validation_loss`` (the training loss on the validation split, which ``keep_best=loss``
        minimises); the last three where the family computed them."""
        return None

    def evaluate(self, model: nn.Module, tokenizer: Any, data: Any, device: torch.device, steps: int) -> Evaluation:
        raise NotImplementedError

    def data_warnings(self, data: Any) -> list[str]:
        """Things about the data a reader of the result should know (in the summary and the record)."""
        return []

    def data_fields(self, data: Any) -> dict[str, Any]:
        """Record fields about the data (sizes, provenance)."""
        return {}
