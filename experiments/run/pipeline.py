"""One run, the same steps for every model family: validate -> load data -> load model -> apply method -> train ->
evaluate -> record. A family (``experiments/families``) supplies only what differs."""

from __future__ import annotations

import math
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from baselines import adds_virtual_tokens, apply_method, check_targets
from experiments.errors import ConfigError, RunFailed
from experiments.families import Family, family_for
from experiments.models.loading import model_fingerprint
from experiments.records import identity
from experiments.records.read import is_complete, is_legacy, legacy_differences, read_record
from experiments.records.write import (
    adapter_fields,
    environment,
    probe_writable,
    run_identity,
    selection_fields,
    write_json_atomic,
)
from experiments.run import distributed
from experiments.run.budget import plan_budget
from experiments.run.checkpoints import Checkpointer
from experiments.run.loop import TrainResult, loop_options, train
from experiments.run.schema import validate
from experiments.run.tracking import Tracker


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB on Linux)


@dataclass
class RunPlan:
    """What is known about a run before its data or model loads: its family, the data it will read (fingerprinted)
    and where its record and checkpoint live."""

    family: Family
    data: dict[str, str]  # the data fingerprint: role -> content hash or name (never a path)
    model: dict[str, Any]  # the model fingerprint: what the model is made of (package release, file contents, hub id)
    run_id: str
    settings_id: str
    record_path: Path
    checkpoint: Checkpointer


def plan_run(cfg: DictConfig) -> RunPlan:
    """Validate ``cfg`` (every setting, before anything loads: a mistake costs seconds) and plan the run."""
    validate(cfg)
    family = family_for(cfg)
    data = family.data_fingerprint()
    model = model_fingerprint(cfg.model)
    config = identity.resolved(cfg)
    signature = identity.run_signature(config, data, model)
    run_id = identity.short_hash(signature)
    checkpoint = Checkpointer(
        identity.checkpoint_path(cfg, run_id),
        int(cfg.train.get("checkpoint_every") or 0),
        signature=signature,
        minutes=float(cfg.train.get("checkpoint_minutes") or 0),
    )
    return RunPlan(
        family=family,
        data=data,
        model=model,
        run_id=run_id,
        settings_id=identity.short_hash(identity.run_signature(config, data, model, with_seed=False)),
        record_path=identity.record_path(cfg, run_id),
        checkpoint=checkpoint,
    )


def finished_record(plan: RunPlan) -> dict[str, Any] | None:
    """The complete record of this exact run (same settings, same data, same model), or None."""
    record = read_record(plan.record_path)
    return record if is_complete(record) else None


def legacy_record(cfg: DictConfig) -> tuple[Path, dict[str, Any]] | None:
    """A complete record of this run's name made before run ids existed, whose recorded settings agree with this
    run's (``records/read.py``), or None. Its data were not fingerprinted: tables mark it legacy."""
    path = identity.legacy_record_path(cfg)
    record = read_record(path)
    if record is None or not is_complete(record) or not is_legacy(record):
        return None
    return None if legacy_differences(record, identity.resolved(cfg)) else (path, record)


def failed_record(plan: RunPlan) -> dict[str, Any] | None:
    """The record of this exact run when it failed (diverged) before, or None: a tuning trial that diverged is a
    result, not something to retry (``skip_failed``)."""
    record = read_record(plan.record_path)
    return record if record is not None and record.get("status") == "failed" else None


def finish_run(
    plan: RunPlan,
    record: dict[str, Any],
    result: TrainResult | None,
    eval_seconds: float,
    started: float,
    device: torch.device,
    tracker: Tracker,
) -> tuple[dict[str, Any], Path]:
    """Add the loss and cost fields, write the record (atomically, last), drop the checkpoint, log the tables. A
    record that cannot be written to its folder is written to a rescue folder, and the run ends with a sentence
    that says where (exit status 3); the checkpoint is then kept."""
    from experiments.records.write import RecordNotWritten, rescue_record, rescued_sentence

    losses = result.losses if result else []
    record |= {
        "loss_first": losses[0] if losses else None,
        "loss_last_20": statistics.fmean(losses[-20:]) if losses else None,
        "train_seconds": result.train_seconds if result else 0.0,  # of every process the run took, resumes included
        "eval_seconds": eval_seconds,
        "wall_seconds": time.perf_counter() - started,  # of this process only
        "peak_memory_gib": peak_memory_gib(device),
        "status": "complete",
        "complete": True,
    }
    if hasattr(plan.checkpoint, "resumed"):  # known where note_resume watched the checkpoint (run.py always does)
        resumed = plan.checkpoint.resumed or {}
        record["resumed_from_step"] = resumed.get("step")  # None: this process trained from step 1
        record["train_seconds_before_resume"] = resumed.get("train_seconds", 0.0)  # in train_seconds, not wall
    try:
        path, why = write_json_atomic(plan.record_path, record), None
    except OSError as err:  # the folder made read-only during the run, a disk error: the results are not lost
        why = err.strerror or type(err).__name__
        path = rescue_record(plan.record_path, record, why)
    if why is None:
        plan.checkpoint.remove()
    tracker.log_record(record)
    tracker.finish()
    if why is not None:
        raise RecordNotWritten(rescued_sentence(plan.record_path, path, why))
    return record, path


def record_failure(plan: RunPlan, cfg: DictConfig, err: RunFailed) -> Path | None:
    """A failed run leaves a record that says so (status failed, the reason, the step) and never counts as done; where
    its folder takes no record, a rescue folder does (a warning says where), and the run's own error still ends it."""
    from experiments.records.write import RecordNotWritten, rescue_record

    failed = {
        "run_name": cfg.run_name,
        "run_id": plan.run_id,
        "settings_id": plan.settings_id,
        "status": "failed",
        "complete": False,
        "reason": str(err),
        "failed_at_step": err.step,
        "config": identity.resolved(cfg),
        "data_fingerprint": plan.data,
        "model_fingerprint": plan.model,
        "environment": environment(),
    }
    try:
        return write_json_atomic(plan.record_path, failed)
    except OSError as err:
        why = err.strerror or type(err).__name__
    try:
        path = rescue_record(plan.record_path, failed, why)
    except RecordNotWritten as unwritten:  # the run's own error (exit 3) still ends it
        print(f"warning: {unwritten}", flush=True)
        return None
    print(f"warning: the failed run's record could not be written to {plan.record_path} ({why}); it is at {path}")
    return path


def note_resume(checkpoint: Checkpointer) -> Checkpointer:
    """Have ``checkpoint`` remember, as ``resumed``, the step and train time of a checkpoint the run continues from
    (None when it starts afresh), so that :func:`finish_run` records that ``train_seconds`` includes the time of an
    earlier, interrupted process while ``wall_seconds`` counts this one only."""
    load = checkpoint.load

    def load_and_note(*args: Any, **kwargs: Any) -> dict[str, Any] | None:
        payload = load(*args, **kwargs)
        if payload is not None:
            checkpoint.resumed = {"step": payload["step"], "train_seconds": float(payload.get("train_seconds", 0.0))}
        return payload

    checkpoint.resumed = None
    checkpoint.load = load_and_note
    return checkpoint


def run_experiment(cfg: DictConfig, plan: RunPlan | None = None) -> tuple[dict[str, Any] | None, Path | None]:
    """Run the experiment ``cfg`` describes; returns the record and where it was written (None, None on the ranks
    other than 0 of a torchrun launch). A run that fails leaves a record with ``"status": "failed"``."""
    plan = plan or plan_run(cfg)
    try:
        return _run(cfg, plan)
    except RunFailed as err:
        if distributed.is_main():
            record_failure(plan, cfg, err)
        raise


@dataclass
class _Loaded:
    """What a run holds after its data and model are loaded and the method applied."""

    data: Any
    budget: Any
    warnings: list[str]
    model: torch.nn.Module
    tokenizer: Any
    total_params: int
    trainable: int


def check_shape_keys(model: torch.nn.Module, tensor_shape: dict[str, Any] | None) -> None:
    """Every explicit tensorisation must name the shape of an adapted weight: a key that matches none would be
    ignored without a word (a typo, or a layout meant for another model)."""
    if not tensor_shape:
        return
    adapted = sorted(
        {
            f"{m.base_layer.weight.shape[0]}x{m.base_layer.weight.shape[1]}"
            for m in model.modules()
            if isinstance(getattr(m, "base_layer", None), torch.nn.Linear)
        }
    )
    unmatched = [key for key in tensor_shape if key not in adapted]
    if unmatched:
        raise ConfigError(
            f"method.peft.tensor_shape key {unmatched[0]!r} matches no adapted weight; the adapted weights' shapes "
            f"(OUTxIN) are {', '.join(adapted)}."
        )


def _load(cfg: DictConfig, plan: RunPlan, device: torch.device) -> _Loaded:
    """Data (checked), budget, the pretrained model and the method applied to it."""
    family = plan.family
    data = family.load_data()
    budget = plan_budget(cfg.train, data.train_size)
    warnings = family.data_warnings(data)
    if distributed.is_main():
        print(f"budget: {budget.note}", flush=True)
        for warning in warnings:
            print(f"warning: {warning}", flush=True)
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
    check_shape_keys(model, peft_kwargs.get("tensor_shape"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return _Loaded(data, budget, warnings, model, tokenizer, total_params, trainable)


def _train(cfg: DictConfig, plan: RunPlan, run: _Loaded, device: torch.device, log) -> TrainResult | None:
    if run.budget.steps <= 0:
        return None
    family = plan.family
    batches, make_batch = family.batches(run.data, run.tokenizer, device)
    main = distributed.is_main()
    periodic = family.periodic_evaluation(run.model, run.tokenizer, run.data, device, log) if main else None
    return train(
        run.model,
        batches=batches,
        make_batch=make_batch,
        param_groups=family.param_groups(run.model),
        steps=run.budget.steps,
        device=device,
        **loop_options(cfg.train),
        eval_every=cfg.train.eval_every,
        evaluate_fn=periodic,
        log_fn=lambda step, loss: log({"train/loss": loss}, step),
        checkpoint=plan.checkpoint,
    )


def _run(cfg: DictConfig, plan: RunPlan) -> tuple[dict[str, Any] | None, Path | None]:
    started = time.perf_counter()
    family = plan.family
    if distributed.is_main():  # before any work: an unwritable output folder is found now, not after training
        probe_writable(plan.record_path.parent)
        if plan.checkpoint.every > 0:
            probe_writable(plan.checkpoint.path.parent)
    torch.manual_seed(cfg.seed)
    device = distributed.init_from_env() or resolve_device(cfg.device)
    run = _load(cfg, plan, device)
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(cfg.logger if distributed.is_main() else {"name": "none"}, cfg.run_name, config)

    def log(values: dict[str, Any], step: int) -> None:
        tracker.log(values, step=step)

    result = _train(cfg, plan, run, device, log)
    if not distributed.is_main():  # rank 0 evaluates and writes the record
        return None, None

    eval_start = time.perf_counter()
    evaluation = family.evaluate(run.model, run.tokenizer, run.data, device, run.budget.steps)
    eval_seconds = time.perf_counter() - eval_start
    final_metrics, metric_notes = defined_metrics(evaluation.final_metrics)
    log({k.replace("_", "/", 1): v for k, v in final_metrics.items() if v is not None}, run.budget.steps)

    record = {
        **run_identity(cfg, config, device),
        "run_id": plan.run_id,
        "settings_id": plan.settings_id,
        "data_fingerprint": plan.data,
        "model_fingerprint": plan.model,
        "warnings": run.warnings,
        "family": family.name,
        **family.data_fields(run.data),
        "trainable_params": run.trainable,
        "total_params": run.total_params,
        **adapter_fields(run.model, cfg.method.name),
        **virtual_token_fields(run.model, cfg.method.name),
        "steps": run.budget.steps,
        "learning_rate": family.learning_rate(),  # the adapter's rate (the head's is train.head_lr)
        "budget": run.budget.as_dict(),
        "train_examples_per_step": run.budget.global_batch,  # the global batch (older records: train_tokens_per_step)
        "evaluations": [*(result.evaluations if result else []), *evaluation.evaluations],
        **selection_fields(result),  # train.keep_best: the validation curve and the step whose state was tested
        "final_metrics": final_metrics,
        "metric_notes": metric_notes,
        **evaluation.fields,
    }
    return finish_run(plan, record, result, eval_seconds, started, device, tracker)


def virtual_token_fields(model: torch.nn.Module, method: str) -> dict[str, Any]:
    """Prompt Tuning and P-Tuning adapt no layer: the record says the rank of dW is n/a and why, rather than leaving a
    reader to guess what an empty ``layers`` and a null ``median_rank`` mean."""
    if not adds_virtual_tokens(method):
        return {}
    return {
        "median_rank": None,
        "rank_reason": f"n/a: {method} trains virtual tokens prepended to the input and adapts no weight (no dW)",
        "virtual_tokens": int(model.active_peft_config.num_virtual_tokens),
    }


def defined_metrics(metrics: dict[str, float]) -> tuple[dict[str, float | None], dict[str, str]]:
    """Metrics with NaN as None, and why each one is missing (records are strict JSON; tables show n/a)."""
    kept: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for key, value in metrics.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            kept[key] = None
            notes[key] = (
                "undefined (NaN): the metric has no value for these predictions and labels, e.g. a correlation "
                "when the predictions or the labels are constant"
            )
        else:
            kept[key] = value
    return kept, notes
