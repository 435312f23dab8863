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
from experiments.evaluation.generation import evaluate_by_generation, evaluate_texts
from experiments.evaluation.lmeval import evaluate_with_lm_eval
from experiments.evaluation.loss import answer_loss
from experiments.families.base import Evaluation, Family
from experiments.models.loading import load_model
from experiments.run.loop import parameter_groups
from experiments.tasks.decoder import DecoderData, fingerprint, load_decoder_task, training_example
from experiments.tasks.decoder.batching import bucketed_batches, collate, tokenize_example


def evaluate_all(
    model, tokenizer, data: DecoderData, eval_cfg, folder: Path, protocol: str | None = None
) -> tuple[dict[str, dict], dict]:
    """Every evaluated task under the chosen protocol(s) (``eval.protocol`` unless ``protocol`` says); metric names
    say which protocol produced them."""
    protocol = protocol or eval_cfg.protocol
    metrics: dict[str, dict[str, Any]] = {name: {} for name in data.evaluation}
    samples: dict = {}
    common = dict(batch_size=eval_cfg.batch_size, max_new_tokens=eval_cfg.max_new_tokens, limit=eval_cfg.limit)
    # Generation tasks have one reading whatever the protocol: their texts scored by BLEU, BERTScore, METEOR, ROUGE-L.
    texts = {n: items for n, items in data.evaluation.items() if data.kinds[n] == "generation"}
    answered = {n: items for n, items in data.evaluation.items() if n not in texts}
    if protocol in ("lm-eval", "both") and answered:
        for name, values in evaluate_with_lm_eval(model, tokenizer, answered, data.kinds, folder, **common).items():
            metrics[name].update({k if k == "n" else f"lmeval_{k}": v for k, v in values.items()})
    if protocol in ("llm-adapters", "both") and answered:
        values, samples = evaluate_by_generation(model, tokenizer, answered, data.kinds, **common)
        for name, row in values.items():
            metrics[name].update({k if k == "n" else f"llmadapters_{k}": v for k, v in row.items()})
    if texts:
        values, written = evaluate_texts(model, tokenizer, texts, **common)
        for name, row in values.items():
            metrics[name].update(row)
        samples = {**samples, **written}
    return metrics, samples


# The metric train.keep_best=metric maximises on a decoder task, per protocol and task kind: accuracy, and GSM8K's
# strict exact match (the answer after "####" / "The answer is") under lm-eval, the extracted number's under
# LLM-Adapters.
MAIN_KEYS = {
    ("lm-eval", "choice"): "lmeval_acc",
    ("lm-eval", "math"): "lmeval_exact_match_strict",
    ("llm-adapters", "choice"): "llmadapters_gen_acc",
    ("llm-adapters", "math"): "llmadapters_gen_exact_match",
    ("lm-eval", "generation"): "text_average",  # generation tasks have one reading (evaluate_texts)
    ("llm-adapters", "generation"): "text_average",
}


def validation_protocol(protocol: str) -> str:
    """The one protocol a periodic validation runs: ``both`` chooses by LLM-Adapters' generation scoring, the paper
    lineage's (Table 2's), and keeps lm-eval as a second reading of the test only."""
    return "lm-eval" if protocol == "lm-eval" else "llm-adapters"


def main_metric(
    per_task: dict[str, dict[str, float]], kinds: dict[str, str], protocol: str
) -> tuple[str, float | None]:
    """The name and value of the validation metric keep_best maximises: the task's main metric, or their mean over
    several validated tasks (``average_<metric>``)."""
    keys = {task: MAIN_KEYS[(protocol, kinds[task])] for task in per_task}
    values = [per_task[task].get(key) for task, key in keys.items()]
    value = None if any(v is None for v in values) else statistics.fmean(values)
    if len(keys) == 1:
        [(task, key)] = keys.items()
        return f"{task}_{key}", value
    same = len(set(keys.values())) == 1
    return f"average_{next(iter(keys.values()))}" if same else "average_main_metric", value


def flatten(metrics: dict[str, dict[str, float]], split: str = "test") -> dict[str, float]:
    """``test_<task>_<metric>``, plus ``test_average_<metric>`` over tasks when more than one is evaluated."""
    skip = ("n", "settings")  # a count, and what moved the text metrics (kept in the record apart)
    flat = {f"{split}_{task}_{k}": v for task, row in metrics.items() for k, v in row.items() if k not in skip}
    if len(metrics) > 1:
        keys = sorted({k for row in metrics.values() for k in row if k not in skip})
        for key in keys:
            values = [row[key] for row in metrics.values() if key in row]
            if len(values) == len(metrics) and all(v is not None for v in values):
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

    def periodic_evaluation(self, model, tokenizer, data: DecoderData, device, log):
        """Validation only, never the evaluated (test) items: a custom task's validation file, or the share of train
        ``task.tune_holdout`` holds out. The loss always (one forward pass over the items); the main metric unless
        ``train.keep_best=loss`` (a generation per item is the expensive part)."""
        if not data.validation:
            return None
        max_length, keep_best = self.cfg.train.max_length, self.cfg.train.get("keep_best")
        features = [
            tokenize_example(tokenizer, pair["prompt"], pair["target"], max_length)
            for items in data.validation.values()
            for pair in map(training_example, items[: self.cfg.eval.limit or None])
        ]
        protocol = validation_protocol(self.cfg.eval.protocol)
        only = dataclasses.replace(data, evaluation=data.validation)

        def on_eval(step: int) -> dict[str, Any]:
            cache = model.config.use_cache
            batch = self.cfg.eval.batch_size
            point: dict[str, Any] = {
                "validation_loss": answer_loss(model, features, tokenizer.pad_token_id, device, batch)
            }
            if keep_best != "loss":
                model.config.use_cache = True  # generation; training goes on with the model's setting
                with tempfile.TemporaryDirectory(prefix="lm-eval-tasks-") as folder:
                    per_task, _ = evaluate_all(model, tokenizer, only, self.cfg.eval, Path(folder), protocol)
                name, value = main_metric(per_task, data.kinds, protocol)
                point |= {"validation": per_task, "main_metric": name, "main_value": value}
            model.config.use_cache = cache
            values = flatten(point.get("validation", {}), "validation") | {"validation_loss": point["validation_loss"]}
            log({k.replace("_", "/", 1): v for k, v in values.items()}, step)
            return point

        return on_eval

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
                # generation tasks: the settings behind every text metric (BERTScore model and layer, WordNet, ...)
                "text_metric_settings": {n: r["settings"] for n, r in per_task.items() if "settings" in r} or None,
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
