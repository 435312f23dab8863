"""One experiment: load task and model, adapt with a method, train, evaluate, record."""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from baselines import apply_method

from . import distributed
from .checkpoints import Checkpointer, checkpoint_path
from .models import load_classifier
from .records import adapter_fields, run_identity, write_json_atomic
from .tasks import load_task
from .tracking import Tracker
from .training import TrainResult, encode, evaluate, labels_of, loop_options, parameter_groups, shuffled_batches, train


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB on Linux)


class IncompatibleChoice(ValueError):
    """A model that cannot run the chosen task (an encoder on a generation task, or the reverse)."""


def check_compatible(cfg: DictConfig) -> None:
    task_kind = cfg.task.get("kind", "classification")
    model_kind = cfg.model.get("kind", "encoder")
    if (task_kind == "causal") != (model_kind == "decoder"):
        wanted = "a decoder (smollm2-135m, llama2-7b, llama3-8b, gemma3-270m, tiny-llama)"
        if task_kind != "causal":
            wanted = "an encoder (minilm, roberta-base, roberta-large, tiny)"
        raise IncompatibleChoice(
            f"Task {cfg.task.suite}/{cfg.task.name} needs {wanted} model, but model={cfg.model.name} is a {model_kind}."
        )


def record_path(cfg: DictConfig) -> Path:
    return Path(cfg.output_dir) / f"{cfg.run_name}.json"


# Settings that change how a run is executed or logged, not what it computes.
_NOT_IN_SIGNATURE = {"skip_complete", "logger", "device", "output_dir", "run_name"}
_NOT_IN_TRAIN_SIGNATURE = {"checkpoint_every", "eval_batch_size"}


def run_signature(config: dict[str, Any]) -> str:
    """What a run computes (model, task, method, training, evaluation, seed), as a stable string."""
    kept = {k: v for k, v in config.items() if k not in _NOT_IN_SIGNATURE and k != "hydra"}
    kept["train"] = {k: v for k, v in kept.get("train", {}).items() if k not in _NOT_IN_TRAIN_SIGNATURE}
    if "eval" in kept:
        kept["eval"] = {k: v for k, v in kept["eval"].items() if k != "batch_size"}
    return json.dumps(kept, sort_keys=True, default=str)


def is_complete(cfg: DictConfig) -> bool:
    """This exact run has finished before: its record is complete and was made with the same settings (records are
    written last and atomically, so a killed run never counts)."""
    path = record_path(cfg)
    if not path.exists():
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    current = run_signature(OmegaConf.to_container(cfg, resolve=True))
    return bool(record.get("complete")) and run_signature(record.get("config", {})) == current


def run_checkpointer(cfg: DictConfig) -> Checkpointer:
    return Checkpointer(
        checkpoint_path(cfg.output_dir, cfg.run_name),
        int(cfg.train.get("checkpoint_every") or 0),
        signature=run_signature(OmegaConf.to_container(cfg, resolve=True)),
    )


def finish_run(
    cfg: DictConfig,
    record: dict[str, Any],
    result: TrainResult | None,
    eval_seconds: float,
    started: float,
    device: torch.device,
    checkpoint: Checkpointer,
    tracker: Tracker,
) -> tuple[dict[str, Any], Path]:
    """Add the loss and cost fields, write the record (atomically, last), drop the checkpoint, log the tables."""
    losses = result.losses if result else []
    record |= {
        "loss_first": losses[0] if losses else None,
        "loss_last_20": statistics.fmean(losses[-20:]) if losses else None,
        "train_seconds": result.train_seconds if result else 0.0,
        "eval_seconds": eval_seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_memory_gib": peak_memory_gib(device),
        "complete": True,
    }
    path = write_json_atomic(record_path(cfg), record)
    checkpoint.remove()
    tracker.log_record(record)
    tracker.finish()
    return record, path


def run_experiment(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    """Run the experiment ``cfg`` describes; returns the record and where it was written."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = distributed.init_from_env() or resolve_device(cfg.device)
    check_compatible(cfg)
    if cfg.task.get("kind") == "causal":
        from .causal.harness import run_decoder_experiment

        return run_decoder_experiment(cfg, device)
    task, method, model_cfg, train_cfg = cfg.task, cfg.method, cfg.model, cfg.train
    regression = task.num_labels == 1

    data = load_task(task, seed=cfg.seed)
    limit = train_cfg.max_eval_examples
    validation = data.validation[:limit] if limit else data.validation
    test = data.test[:limit] if limit else data.test
    model, tokenizer = load_classifier(model_cfg, task.num_labels, seed=cfg.seed)
    total_params = sum(p.numel() for p in model.parameters())
    targets = list(method.target_modules or model_cfg.target_modules)
    heads = list(model_cfg.head_modules)
    peft_kwargs = OmegaConf.to_container(method.peft, resolve=True) if method.get("peft") else {}
    model = apply_method(model, method.name, targets, modules_to_save=heads, **peft_kwargs).to(device)
    distributed.check_same_buffers(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(cfg.logger if distributed.is_main() else {"name": "none"}, cfg.run_name, config)
    checkpoint = run_checkpointer(cfg)
    eval_kwargs = dict(
        metrics=list(task.metrics),
        max_length=train_cfg.max_length,
        batch_size=train_cfg.eval_batch_size,
        regression=regression,
        device=device,
    )

    def on_eval(step: int) -> dict[str, Any]:
        values = evaluate(model, tokenizer, validation, desc="validation", **eval_kwargs)
        tracker.log({f"validation/{k}": v for k, v in values.items()}, step=step)
        return {"validation": values}

    steps = train_cfg.max_steps
    if train_cfg.epochs:
        steps = max(1, int(train_cfg.epochs * len(data.train) / train_cfg.batch_size))
    result = train(
        model,
        batches=shuffled_batches(len(data.train), train_cfg.batch_size, cfg.seed),
        make_batch=lambda indices: {
            **encode(tokenizer, [data.train[i] for i in indices], train_cfg.max_length, device),
            "labels": labels_of([data.train[i] for i in indices], regression, device),
        },
        param_groups=parameter_groups(model, method.lr, None if method.name == "full" else train_cfg.head_lr, heads),
        steps=steps,
        device=device,
        **loop_options(train_cfg),
        eval_every=train_cfg.eval_every,
        evaluate_fn=on_eval if distributed.is_main() else None,
        log_fn=lambda step, loss: tracker.log({"train/loss": loss}, step=step),
        checkpoint=checkpoint,
    )
    if not distributed.is_main():  # rank 0 evaluates and writes the record
        return None, None

    eval_start = time.perf_counter()
    final_validation = evaluate(model, tokenizer, validation, desc="validation", **eval_kwargs)
    final_test = (
        final_validation if test is validation else evaluate(model, tokenizer, test, desc="test", **eval_kwargs)
    )
    eval_seconds = time.perf_counter() - eval_start
    evaluations = [*result.evaluations, {"step": steps, "validation": final_validation, "test": final_test}]
    tracker.log(
        {
            **{f"validation/{k}": v for k, v in final_validation.items()},
            **{f"test/{k}": v for k, v in final_test.items()},
        },
        step=steps,
    )

    record = {
        **run_identity(cfg, config, device),
        "data_sizes": {"train": len(data.train), "validation": len(validation), "test": len(test)},
        "test_is_validation": test is validation,
        "trainable_params": trainable,
        "total_params": total_params,
        **adapter_fields(model, method.name),
        "steps": steps,
        "evaluations": evaluations,
        "final_metrics": {
            **{f"validation_{k}": v for k, v in final_validation.items()},
            **{f"test_{k}": v for k, v in final_test.items()},
        },
    }
    return finish_run(cfg, record, result, eval_seconds, started, device, checkpoint, tracker)
