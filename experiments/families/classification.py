"""Sequence classification with an encoder (GLUE, the offline tweets): a classifier head trained beside the adapter,
accuracy-type metrics on validation and test."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baselines import trains_every_weight
from experiments.evaluation.metrics import compute
from experiments.families.base import Evaluation, Family
from experiments.models.loading import load_model
from experiments.run.loop import encode, labels_of, parameter_groups, predict, shuffled_batches
from experiments.tasks.classification import TaskData, load_task, task_fingerprint


def cut_examples(tokenizer: Any, examples: list[dict[str, Any]], max_length: int) -> dict[str, Any]:
    """How many examples are longer than ``max_length`` tokens (the encoder reads their first ``max_length``)."""
    first = [e["text_a"] for e in examples]
    second = [e["text_b"] for e in examples] if examples[0]["text_b"] is not None else None
    lengths = [len(ids) for ids in tokenizer(first, second, truncation=False)["input_ids"]]
    cut = sum(1 for n in lengths if n > max_length)
    how = "the texts' ends are cut; pairs lose tokens from the longer text first"
    return {"examples": len(examples), "cut": cut, "max_length": max_length, "how": how}


class ClassificationFamily(Family):
    name = "classification"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.modules_to_save = tuple(cfg.model.get("head_modules") or ())
        # Regression is asked for (task.num_labels=1), never inferred: float labels of a classification task are a
        # mistake that load_task names.
        self.regression = cfg.task.get("num_labels") == 1
        self.data: TaskData | None = None  # the class count, label map and metrics come with the data

    def data_fingerprint(self) -> dict[str, str]:
        return task_fingerprint(self.cfg.task)

    def load_data(self) -> TaskData:
        data = load_task(self.cfg.task, seed=self.cfg.seed)
        limit = self.cfg.train.max_eval_examples
        if limit:
            data.validation = data.validation[:limit]
            data.test = data.validation if data.test_is_validation else data.test[:limit]
        self.data = data
        return data

    def _num_labels(self) -> int:
        return self.data.num_labels if self.data is not None else int(self.cfg.task.num_labels)

    def load_model(self, device: torch.device) -> tuple[nn.Module, Any]:
        return load_model(self.cfg.model, num_labels=self._num_labels(), seed=self.cfg.seed, device=device)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        # Full fine-tuning trains the head at the body's rate; adapters give the fresh head its own rate.
        head_lr = None if trains_every_weight(self.cfg.method.name) else self.cfg.train.head_lr
        return parameter_groups(model, self.learning_rate(), head_lr, list(self.modules_to_save))

    truncated: dict[str, Any] | None = None  # examples per split cut to train.max_length (set by batches)

    def batches(self, data: TaskData, tokenizer: Any, device: torch.device):
        train, max_length = data.train, self.cfg.train.max_length
        splits = {"train": train, "validation": data.validation, "test": data.test}
        self.truncated = {name: cut_examples(tokenizer, part, max_length) for name, part in splits.items() if part}

        def make_batch(indices: list[int]) -> dict[str, torch.Tensor]:
            examples = [train[i] for i in indices]
            return {
                **encode(tokenizer, examples, max_length, device),
                "labels": labels_of(examples, self.regression, device),
            }

        return shuffled_batches(len(train), self.cfg.train.batch_size, self.cfg.seed), make_batch

    def _evaluate(self, model, tokenizer, examples, device, desc: str, with_loss: bool = False):
        """The metrics of ``examples`` and, ``with_loss``, their mean loss (None otherwise)."""
        predictions, loss = predict(
            model,
            tokenizer,
            examples,
            max_length=self.cfg.train.max_length,
            batch_size=self.cfg.train.eval_batch_size,
            regression=self.regression,
            device=device,
            desc=desc,
            with_loss=with_loss,
        )
        metrics = list(self.data.metrics if self.data is not None else self.cfg.task.metrics)
        return compute(metrics, predictions, [e["label"] for e in examples]), loss

    def periodic_evaluation(self, model, tokenizer, data: TaskData, device, log):
        def on_eval(step: int) -> dict[str, Any]:
            # The loss comes from the same forward passes as the metrics: it costs nothing, so it is always there.
            values, loss = self._evaluate(model, tokenizer, data.validation, device, "validation", with_loss=True)
            log({**{f"validation/{k}": v for k, v in values.items()}, "validation/loss": loss}, step)
            main = data.main_metric
            return {"validation": values, "main_metric": main, "main_value": values.get(main), "validation_loss": loss}

        return on_eval

    def evaluate(self, model, tokenizer, data: TaskData, device, steps: int) -> Evaluation:
        validation, _ = self._evaluate(model, tokenizer, data.validation, device, "validation")
        test = validation if data.test_is_validation else self._evaluate(model, tokenizer, data.test, device, "test")[0]
        return Evaluation(
            evaluations=[{"step": steps, "validation": validation, "test": test}],
            final_metrics={
                **{f"validation_{k}": v for k, v in validation.items()},
                **{f"test_{k}": v for k, v in test.items()},
            },
            fields={
                "test_is_validation": data.test_is_validation,
                "test_is_validation_reason": data.test_is_validation_reason,
            },
        )

    def data_warnings(self, data: TaskData) -> list[str]:
        # keep_best on a task whose test figures are its validation split (GLUE) picks the step by the figure it
        # reports, as the LoRA/VeRA GLUE protocol does; allowed, but a reader must know (task.tune_holdout avoids it).
        chosen = (
            ["train.keep_best chooses the step on the validation split, which is also the reported test split"]
            if self.cfg.train.get("keep_best") and data.test_is_validation
            else []
        )
        return chosen + self._class_warnings(data)

    def _class_warnings(self, data: TaskData) -> list[str]:
        # A warning, not a refusal: a small debugging subset can be one-class and the run is still well defined (the
        # model learns the prior); but its accuracy says nothing about the method, and the reader must know that.
        classes = {e["label"] for e in data.train}
        if not self.regression and len(classes) == 1:
            label = next(iter(classes))
            names = {index: name for name, index in (data.label_map or {}).items()}
            return [
                f"the training set has one class only (label {names.get(label, label)!r} in all {len(data.train)} "
                f"examples): the model can only learn to predict it",
                *data.warnings,
            ]
        return list(data.warnings)

    def data_fields(self, data: TaskData) -> dict[str, Any]:
        return {
            "data_sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
            "num_labels": data.num_labels,
            "label_map": data.label_map,  # string label -> class index (sorted); None for integer labels
            "metrics": data.metrics,
            "main_metric": data.main_metric,
            "validation_carved": data.validation_carved,
            "data_notes": data.notes,
            "truncated": self.truncated,
        }
