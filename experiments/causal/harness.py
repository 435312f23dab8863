"""One decoder experiment: causal-LM fine-tuning on answer tokens, evaluation with lm-eval (or by generation)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from baselines import apply_method

from .. import distributed
from ..harness import finish_run, run_checkpointer
from ..records import adapter_fields, run_identity
from ..tracking import Tracker
from ..training import loop_options, parameter_groups, train
from .batching import bucketed_batches, collate, tokenize_example
from .generation import evaluate_by_generation
from .lmeval import evaluate_with_lm_eval
from .models import load_causal_lm
from .tasks import load_decoder_task

PROTOCOLS = ("lm-eval", "llm-adapters", "both")


def evaluate_all(model, tokenizer, data, eval_cfg, folder: Path) -> tuple[dict[str, dict[str, float]], dict]:
    """Every evaluated task under the chosen protocol(s); metric names say which protocol produced them."""
    protocol = eval_cfg.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
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


def flatten(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """``test_<task>_<metric>``, plus ``test_average_<metric>`` over tasks when more than one is evaluated."""
    flat = {f"test_{task}_{k}": v for task, row in metrics.items() for k, v in row.items() if k != "n"}
    if len(metrics) > 1:
        keys = sorted({k for row in metrics.values() for k in row if k != "n"})
        for key in keys:
            values = [row[key] for row in metrics.values() if key in row]
            if len(values) == len(metrics):
                flat[f"test_average_{key}"] = statistics.fmean(values)
    return flat


def run_decoder_experiment(cfg: DictConfig, device: torch.device) -> tuple[dict[str, Any], Path]:
    started = time.perf_counter()
    task, method, model_cfg, train_cfg, eval_cfg = cfg.task, cfg.method, cfg.model, cfg.train, cfg.eval
    data = load_decoder_task(task, seed=cfg.seed)
    model, tokenizer = load_causal_lm(model_cfg, device, seed=cfg.seed)
    total_params = sum(p.numel() for p in model.parameters())
    if train_cfg.get("gradient_checkpointing"):
        # Before PEFT wraps the model; use_reentrant=False lets gradients reach adapters behind frozen embeddings.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = not train_cfg.get("gradient_checkpointing")
    targets = list(method.target_modules or model_cfg.target_modules)
    peft_kwargs = OmegaConf.to_container(method.peft, resolve=True) if method.get("peft") else {}
    model = apply_method(model, method.name, targets, modules_to_save=[], task_type="CAUSAL_LM", **peft_kwargs)
    model = model.to(device)
    distributed.check_same_buffers(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = method.get("decoder_lr") or method.lr

    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(cfg.logger if distributed.is_main() else {"name": "none"}, cfg.run_name, config)
    checkpoint = run_checkpointer(cfg)
    features = [tokenize_example(tokenizer, e["prompt"], e["target"], train_cfg.max_length) for e in data.train]
    steps = train_cfg.max_steps
    global_batch = train_cfg.batch_size * train_cfg.get("grad_accum", 1)
    if train_cfg.epochs:
        steps = max(1, int(train_cfg.epochs * len(features) / global_batch))
    result = None
    if steps > 0:
        result = train(
            model,
            batches=bucketed_batches([len(f["input_ids"]) for f in features], train_cfg.batch_size, cfg.seed),
            make_batch=lambda indices: collate([features[i] for i in indices], tokenizer.pad_token_id, device),
            param_groups=parameter_groups(model, lr, None, []),
            steps=steps,
            device=device,
            **loop_options(train_cfg),
            log_fn=lambda step, loss: tracker.log({"train/loss": loss}, step=step),
            checkpoint=checkpoint,
        )
    if not distributed.is_main():  # rank 0 evaluates and writes the record
        return None, None

    eval_start = time.perf_counter()
    model.config.use_cache = True
    with tempfile.TemporaryDirectory(prefix="lm-eval-tasks-") as folder:
        per_task, samples = evaluate_all(model, tokenizer, data, eval_cfg, Path(folder))
    eval_seconds = time.perf_counter() - eval_start
    final_metrics = flatten(per_task)
    tracker.log(final_metrics, step=steps)

    record = {
        **run_identity(cfg, config, device),
        "data_sizes": {"train": len(features), **{f"eval_{k}": len(v) for k, v in data.evaluation.items()}},
        "data_provenance": data.provenance,
        "evaluated_examples": {name: row.get("n") for name, row in per_task.items()},
        "eval_protocol": eval_cfg.protocol,
        "test_is_validation": False,
        "trainable_params": trainable,
        "total_params": total_params,
        "learning_rate": lr,
        **adapter_fields(model, method.name),
        "steps": steps,
        "train_tokens_per_step": global_batch,
        "evaluations": [{"step": steps, "test": per_task}],
        "final_metrics": final_metrics,
        "generations": {name: rows[:20] for name, rows in samples.items()},  # a few, to see what the model wrote
    }
    return finish_run(cfg, record, result, eval_seconds, started, device, checkpoint, tracker)
