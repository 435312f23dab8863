"""Causal-LM fine-tuning on answer tokens (commonsense reasoning, math), evaluated with lm-eval or by generation."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.errors import DataUnavailable
from experiments.evaluation.generation import evaluate_by_generation
from experiments.evaluation.lmeval import evaluate_with_lm_eval
from experiments.families.base import Evaluation, Family
from experiments.models.loading import load_model
from experiments.run.loop import parameter_groups
from experiments.tasks.decoder import DecoderData, fingerprint, load_decoder_task
from experiments.tasks.decoder.batching import bucketed_batches, collate, tokenize_example


def evaluate_all(model, tokenizer, data: DecoderData, eval_cfg, folder: Path) -> tuple[dict[str, dict], dict]:
    """Every evaluated task under the chosen protocol(s); metric names say which protocol produced them."""
    protocol = eval_cfg.protocol
    metrics: dict[str, dict[str, float]] = {name: {} for name in data.evaluation}
    samples: dict = {}
    common = dict(batch_size=eval_cfg.batch_size, max_new_tokens=eval_cfg.max_new_tokens, limit=eval_cfg.limit)
    if protocol in ("lm-eval", "both"):
        for name, values in evaluate_with_lm_eval(
            model, tokenizer, data.evaluation, data.kinds, folder, **common
        ).items():
            metrics[name].update({k if k == "n" else f"lmeval_{k}": v for k, v in values.items()})
    if protocol in ("llm-adapters", "both"):
        values, samples = evaluate_by_generation(model, tokenizer, data.evaluation, data.kinds, **common)
        for name, row in values.items():
            metrics[name].update({k if k == "n" else f"llmadapters_{k}": v for k, v in row.items()})
    return metrics, samples


def flatten(metrics: dict[str, dict[str, float]], split: str = "test") -> dict[str, float]:
    """``test_<task>_<metric>``, plus ``test_average_<metric>`` over tasks when more than one is evaluated."""
    flat = {f"{split}_{task}_{k}": v for task, row in metrics.items() for k, v in row.items() if k != "n"}
    if len(metrics) > 1:
        keys = sorted({k for row in metrics.values() for k in row if k != "n"})
        for key in keys:
            values = [row[key] for row in metrics.values() if key in row]
            if len(values) == len(metrics):
                flat[f"{split}_average_{key}"] = statistics.fmean(values)
    return flat


def check_truncation(features: list[dict[str, Any]], max_length: int) -> dict[str, Any]:
    """How many training examples lost tokens to ``max_length``; an example whose prompt would vanish entirely, or
    whose answer would be cut, is refused (it would teach an answer to no question, or half an answer)."""
    for index, feature in enumerate(features):
        if feature["prompt_kept"] == 0 or feature["target_cut"]:
            lost = "its whole prompt" if feature["prompt_kept"] == 0 else f"{feature['target_cut']} answer token(s)"
            raise DataUnavailable(
                f"train.max_length={max_length} is too short for training example {index + 1}: it would lose {lost}; "
                f"raise train.max_length (python -m experiments.preview shows what the model sees)."
            )
    cut = sum(1 for f in features if f["prompt_cut"])
    how = "prompts lose tokens from their start; the answer is kept whole"
    return {"examples": len(features), "cut": cut, "max_length": max_length, "how": how}


class CausalFamily(Family):
    name = "causal"
    task_type = "CAUSAL_LM"

    def data_fingerprint(self) -> dict[str, str]:
        return fingerprint(self.cfg.task)

    def load_data(self) -> DecoderData:
        data = load_decoder_task(self.cfg.task, seed=self.cfg.seed)
        return data

    def load_model(self, device: torch.device) -> tuple[nn.Module, Any]:
        return load_model(self.cfg.model, num_labels=None, seed=self.cfg.seed, device=device)

    def prepare_model(self, model: nn.Module) -> None:
        checkpointing = bool(self.cfg.train.get("gradient_checkpointing"))
        if checkpointing:
            # transformers 5 warns of its own deprecated attribute inside its checkpointing check at every step; the
            # suite cannot act on it. Only that message is silenced.
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            # Before PEFT wraps the model; use_reentrant=False lets gradients reach adapters behind frozen embeddings.
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = not checkpointing

    def learning_rate(self) -> float:
        return float(self.cfg.method.get("decoder_lr") or self.cfg.method.lr)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return parameter_groups(model, self.learning_rate(), None, [])

    def batches(self, data: DecoderData, tokenizer: Any, device: torch.device):
        max_length = self.cfg.train.max_length
        features = [tokenize_example(tokenizer, e["prompt"], e["target"], max_length) for e in data.train]
        self.truncated = {"train": check_truncation(features, max_length)}
        lengths = [len(f["input_ids"]) for f in features]
        batches = bucketed_batches(lengths, self.cfg.train.batch_size, self.cfg.seed)
        return batches, lambda indices: collate([features[i] for i in indices], tokenizer.pad_token_id, device)

    def evaluate(self, model, tokenizer, data: DecoderData, device, steps: int) -> Evaluation:
        model.config.use_cache = True
        with tempfile.TemporaryDirectory(prefix="lm-eval-tasks-") as folder:
            per_task, samples = evaluate_all(model, tokenizer, data, self.cfg.eval, Path(folder))
        point: dict[str, Any] = {"step": steps, "test": per_task}
        final = flatten(per_task)
        if data.validation:  # a custom task given both a validation and a test file: both are reported
            with tempfile.TemporaryDirectory(prefix="lm-eval-tasks-") as folder:
                only = dataclasses.replace(data, evaluation=data.validation)
                point["validation"], _ = evaluate_all(model, tokenizer, only, self.cfg.eval, Path(folder))
            final = {**flatten(point["validation"], "validation"), **final}
        return Evaluation(
            evaluations=[point],
            final_metrics=final,
            fields={
                "evaluated_examples": {name: row.get("n") for name, row in per_task.items()},
                "eval_protocol": self.cfg.eval.protocol,
                "test_is_validation": data.test_is_validation,
                "test_is_validation_reason": data.test_is_validation_reason,
                "learning_rate": self.learning_rate(),
                "generations": {name: rows[:20] for name, rows in samples.items()},  # a few, to see what it wrote
            },
        )

    truncated: dict[str, Any] | None = None  # training examples cut to train.max_length (set by batches)

    def data_fields(self, data: DecoderData) -> dict[str, Any]:
        sizes = {"train": len(data.train), **{f"eval_{k}": len(v) for k, v in data.evaluation.items()}}
        sizes |= {f"validation_{k}": len(v) for k, v in data.validation.items()}
        return {
            "data_sizes": sizes,
            "data_provenance": data.provenance,
            "validation_carved": data.validation_carved,
            "data_notes": data.notes,
            "truncated": self.truncated,
        }
