"""What makes a run the run it is: what it computes (its settings, the content of the data it reads and of the model it
starts from), as a signature; where its record and its checkpoint live. Two runs that compute different things never
share a path; the same run finds its record again from any checkout, folder or machine.

A record's file name is ``<run name>-<id>.json``: the readable name (``naming.py``) and the first hex digits of the
signature's hash. Paths never enter the signature: data is named by its role (train, validation, test, ...) and its
content (``sources.py``), a model by its package release or its files' content, code by what it loads (the model's
and the task's names), not by where the loader lives.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

ID_DIGITS = 8
# Settings that change how a run is executed, logged or where it reads and writes, not what it computes.
NOT_IN_SIGNATURE = {"skip_complete", "skip_failed", "logger", "device", "output_dir", "run_name", "data"}
NOT_IN_TRAIN_SIGNATURE = {"checkpoint_every", "checkpoint_minutes", "eval_batch_size"}
# Adapter options that trade memory for speed and compute the same values (TeRA keeping W + dW between steps).
NOT_IN_PEFT_SIGNATURE = {"cache_merged_weight"}
# Where code and files lie: replaced in the signature by the content they give (the data and model fingerprints).
NOT_IN_MODEL_SIGNATURE = {"loader", "path"}
NOT_IN_TASK_SIGNATURE = {"loader", "data_files"}


def _without(section: Any, keys: set[str]) -> Any:
    return {k: v for k, v in section.items() if k not in keys} if isinstance(section, dict) else section


def _unset_new_keys(train: Any) -> set[str]:
    """Train settings added after records existed, at the value that computes what runs computed before them: left
    out, so every earlier run keeps its id (``keep_best: null`` tests the last step, as every run did)."""
    return {"keep_best"} if isinstance(train, dict) and train.get("keep_best") is None else set()


def _unused_budget_keys(train: Any) -> set[str]:
    """The budget settings a run does not use (``run/budget.py``): an explicit ``max_steps`` wins over the epochs,
    and the epochs over ``default_steps``."""
    if not isinstance(train, dict):
        return set()
    if train.get("max_steps") is not None:
        return {"epochs", "default_steps"}
    return {"default_steps"} if train.get("epochs") else set()


def _unused_rates(config: dict[str, Any]) -> set[str]:
    """The learning rate a run does not train with: ``decoder_lr`` on an encoder (classification) task, ``lr`` on a
    decoder task that sets ``decoder_lr`` (``families/``)."""
    task, method = config.get("task"), config.get("method")
    if not isinstance(task, dict) or not isinstance(method, dict):
        return set()
    if task.get("kind") == "causal":
        return {"lr"} if method.get("decoder_lr") is not None else set()
    return {"decoder_lr"} if task.get("kind") == "classification" else set()


def signature_settings(config: dict[str, Any], with_seed: bool = True) -> dict[str, Any]:
    """The settings of ``config`` that decide what a run computes (no paths, loggers or speed switches)."""
    kept = {k: v for k, v in config.items() if k not in NOT_IN_SIGNATURE and k != "hydra"}
    train = kept.get("train", {})
    kept["train"] = _without(train, NOT_IN_TRAIN_SIGNATURE | _unused_budget_keys(train) | _unset_new_keys(train))
    kept["model"] = _without(kept.get("model", {}), NOT_IN_MODEL_SIGNATURE)
    kept["task"] = _without(kept.get("task", {}), NOT_IN_TASK_SIGNATURE)
    if isinstance(kept.get("method"), dict):  # a search space is not what a run computes; the values it sets are
        # With zero steps nothing is trained: the learning rates compute nothing (the base model's rows); otherwise
        # the rate of the other model family computes nothing either.
        untrained = isinstance(kept["train"], dict) and kept["train"].get("max_steps") == 0
        unused = {"lr", "decoder_lr"} if untrained else _unused_rates(kept)
        kept["method"] = _without(kept["method"], {"tune", *unused})
        kept["method"]["peft"] = _without(kept["method"].get("peft"), NOT_IN_PEFT_SIGNATURE)
    if "eval" in kept:
        kept["eval"] = _without(kept["eval"], {"batch_size"})
    if not with_seed:
        kept.pop("seed", None)
    return kept


def run_signature(
    config: dict[str, Any],
    data: dict[str, str] | None = None,
    model: dict[str, Any] | None = None,
    with_seed: bool = True,
) -> str:
    """What a run computes (settings, the data's content by role, the model's content), as a stable string.
    ``with_seed=False`` gives the signature of the settings a table averages over seeds."""
    kept = signature_settings(config, with_seed)
    if data is not None:
        kept["data"] = data
    if model is not None:
        kept["model_content"] = model
    return json.dumps(canonical(kept), sort_keys=True, default=str)


def canonical(value: Any) -> Any:
    """Equal numbers spelled differently are one value: ``train.warmup_ratio=0`` and the config's ``0.0``, an
    ``epochs`` of 3 and of 3.0, compute the same thing and get one run id."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGITS]


def resolved(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def record_path(cfg: DictConfig, run_id: str) -> Path:
    return Path(cfg.output_dir) / f"{cfg.run_name}-{run_id}.json"


def legacy_record_path(cfg: DictConfig) -> Path:
    """Where a record made before run ids existed would be: ``<run name>.json``."""
    return Path(cfg.output_dir) / f"{cfg.run_name}.json"


def checkpoint_path(cfg: DictConfig, run_id: str) -> Path:
    return Path(cfg.output_dir) / ".checkpoints" / f"{cfg.run_name}-{run_id}.pt"
