"""One run, the same steps for every model family: validate -> load data -> load model -> apply method -> train ->
evaluate -> record. A family (``experiments/families``) supplies only what differs."""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from baselines import apply_method, check_targets

from . import distributed
from .budget import plan_budget
from .checkpoints import Checkpointer, checkpoint_path
from .families import family_for
from .records import adapter_fields, run_identity, write_json_atomic
from .schema import validate
from .tracking import Tracker
from .training import TrainResult, loop_options, train


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB on Linux)


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


def run_experiment(cfg: DictConfig) -> tuple[dict[str, Any] | None, Path | None]:
    """Run the experiment ``cfg`` describes; returns the record and where it was written (None, None on the ranks
    other than 0 of a torchrun launch)."""
    started = time.perf_counter()
    validate(cfg)  # every setting, before anything loads: a mistake costs seconds
    family = family_for(cfg)
    torch.manual_seed(cfg.seed)
    device = distributed.init_from_env() or resolve_device(cfg.device)

    data = family.load_data()
    budget = plan_budget(cfg.train, data.train_size)
    if distributed.is_main():
        print(f"budget: {budget.note}", flush=True)
    model, tokenizer = family.load_model(device)
    total_params = sum(p.numel() for p in model.parameters())
    family.prepare_model(model)
    method = cfg.method
    targets = list(method.target_modules or cfg.model.target_modules)
    check_targets(model, method.name, targets)
    peft_kwargs = OmegaConf.to_container(method.peft, resolve=True) if method.get("peft") else {}
    model = apply_method(
        model,
        method.name,
        targets,
        modules_to_save=list(family.modules_to_save),
        task_type=family.task_type,
        **peft_kwargs,
    ).to(device)
    distributed.check_same_buffers(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(cfg.logger if distributed.is_main() else {"name": "none"}, cfg.run_name, config)
    checkpoint = run_checkpointer(cfg)

    def log(values: dict[str, Any], step: int) -> None:
        tracker.log(values, step=step)

    result = None
    if budget.steps > 0:
        batches, make_batch = family.batches(data, tokenizer, device)
        periodic = family.periodic_evaluation(model, tokenizer, data, device, log) if distributed.is_main() else None
        result = train(
            model,
            batches=batches,
            make_batch=make_batch,
            param_groups=family.param_groups(model),
            steps=budget.steps,
            device=device,
            **loop_options(cfg.train),
            eval_every=cfg.train.eval_every,
            evaluate_fn=periodic,
            log_fn=lambda step, loss: log({"train/loss": loss}, step),
            checkpoint=checkpoint,
        )
    if not distributed.is_main():  # rank 0 evaluates and writes the record
        return None, None

    eval_start = time.perf_counter()
    evaluation = family.evaluate(model, tokenizer, data, device, budget.steps)
    eval_seconds = time.perf_counter() - eval_start
    log({k.replace("_", "/", 1): v for k, v in evaluation.final_metrics.items()}, budget.steps)

    record = {
        **run_identity(cfg, config, device),
        "family": family.name,
        **family.data_fields(data),
        "trainable_params": trainable,
        "total_params": total_params,
        **adapter_fields(model, method.name),
        "steps": budget.steps,
        "budget": budget.as_dict(),
        "train_tokens_per_step": budget.global_batch,
        "evaluations": [*(result.evaluations if result else []), *evaluation.evaluations],
        "final_metrics": evaluation.final_metrics,
        **evaluation.fields,
    }
    return finish_run(cfg, record, result, eval_seconds, started, device, checkpoint, tracker)
