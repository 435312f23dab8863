"""The serving benchmark's presets (``conf/bench/serving-<name>.yaml``), checked before anything is measured, and the
method entries in them.

Read with PyYAML alone, as the efficiency presets are: the GPU machine has no Hydra or pydantic.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import yaml

from experiments.benchmarks.efficiency.presets import PRESETS, ROOT, method_spec, user_error

PREFIX = "serving-"
# The methods whose PEFT layers take ``adapter_names=`` (several adapters in one batch); PEFT refuses it for most
# others (DoRA, VeRA, ...), so a preset naming one is a mistake, said before anything runs.
SERVING_METHODS = ("lora", "tera", "tera-balanced")
# Each method's own "not zero at the start" option: every adapter gets random non-zero trainable values (seeded per
# adapter), so that updates differ between adapters and the mixed-batch check means something.
RANDOM_INIT = {"lora": {"init_lora_weights": False}, "tera": {"init_weights": False}}
GOAL_KEYS = ("decode_vs_base", "prefill_vs_base", "mixed_vs_single")
REQUIRED = ("name", "device", "dtype", "model", "batch", "seq", "decode_tokens", "targets", "distinct", "resident")
REQUIRED += ("add_budget_s", "load_repeats", "rounds", "methods")


def serving_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob(f"{PREFIX}*.yaml"))


def load_serving_preset(name: str) -> dict[str, Any]:
    """The preset ``serving-<name>`` (``name`` with or without the prefix); one sentence and exit 2 when unknown."""
    full = name if name.startswith(PREFIX) else PREFIX + name
    if full not in serving_presets():
        user_error(f"unknown serving preset {name!r}; choose one of: {', '.join(serving_presets())}.")
    return yaml.safe_load((PRESETS / f"{full}.yaml").read_text())


def for_gpu_check(preset: dict[str, Any]) -> dict[str, Any]:
    """The preset with its ``gpu_check`` overrides applied (fewer rounds and resident adapters: the GPU check's few
    minutes), and the overrides themselves dropped."""
    out = copy.deepcopy(preset)
    out.update(out.pop("gpu_check", None) or {})
    return out


def serving_spec(entry: str | dict[str, Any]) -> dict[str, Any]:
    """The entry's conf/method options, its overrides, and the method's random non-zero initialisation."""
    spec = method_spec(entry)
    family = "tera" if spec["method"].startswith("tera") else spec["method"]
    spec["peft"] = {**spec["peft"], **RANDOM_INIT.get(family, {})}
    return spec


def add_budget(preset: dict[str, Any], name: str) -> float:
    """Seconds of adding adapters method ``name`` may spend on the sweep: ``add_budget_s``, a number for every method
    or a mapping of method names with a ``default`` (the paper's layout may be given the time to reach 4096)."""
    budget = preset["add_budget_s"]
    return float(budget.get(name, budget["default"]) if isinstance(budget, dict) else budget)


def entry_named(preset: dict[str, Any], name: str) -> str | dict[str, Any]:
    """The preset's entry for the method called ``name`` (``base``: the frozen model, always measured)."""
    if name == "base":
        return "base"
    return next(e for e in preset["methods"] if method_spec(e)["name"] == name)


def checked_names(preset: dict[str, Any], methods: list[str] | None) -> list[str]:
    """The method names to measure, base first; one sentence and exit status 2 for a mistaken request, before anything
    is measured or written."""
    name = preset.get("name", "?")
    missing = [key for key in REQUIRED if key not in preset]
    if missing:
        user_error(f"serving preset {name!r} lacks {', '.join(missing)}; see conf/bench/serving-cpu.yaml.")
    if str(preset["device"]).startswith("cuda") and not torch.cuda.is_available():
        user_error(f"preset {name!r} needs a CUDA GPU; use the serving-cpu preset on this machine.")
    _check_shapes(preset)
    # From the entries' own words: conf/method is read only for methods known to serve mixed batches.
    entries = [
        {"name": e, "method": e} if isinstance(e, str) else {"method": e.get("name"), **e} for e in preset["methods"]
    ]
    for entry in entries:
        if entry["method"] not in SERVING_METHODS:
            user_error(
                f"preset entry {entry['name']!r}: PEFT serves mixed-adapter batches (adapter_names=) only for "
                f"{', '.join(SERVING_METHODS)}, not {entry['method']}; drop it from the preset."
            )
    known = [entry["name"] for entry in entries]
    budget = preset["add_budget_s"]
    if isinstance(budget, dict) and ("default" not in budget or set(budget) - {"default", *known}):
        user_error(f"preset {name!r}: add_budget_s maps method names of the preset and `default` to seconds.")
    unknown = [m for m in methods or [] if m not in known]
    if unknown:
        user_error(f"preset {name!r} has no method {', '.join(unknown)}; choose from: {', '.join(known)}.")
    bad_goals = sorted(set(preset.get("goals") or {}) - set(GOAL_KEYS))
    if bad_goals:
        user_error(f"preset {name!r} has unknown goals {', '.join(bad_goals)}; known: {', '.join(GOAL_KEYS)}.")
    if preset.get("goals") and preset.get("goals_method") not in known:
        user_error(f"preset {name!r} judges goals_method {preset.get('goals_method')!r}, which it does not measure.")
    return ["base", *(m for m in known if methods is None or m in methods)]


def _check_shapes(preset: dict[str, Any]) -> None:
    """Distinct adapters per batch: ascending from 1, at most the batch; resident counts ascending from 1, holding the
    largest batch mix (the rounds run with that many adapters resident)."""
    name, batch, distinct, resident = preset["name"], preset["batch"], preset["distinct"], preset["resident"]
    if batch < 2:
        user_error(f"preset {name!r}: batch {batch} cannot mix adapters; use a batch of 2 or more.")
    if distinct[0] != 1 or distinct != sorted(set(distinct)) or distinct[-1] > batch:
        user_error(f"preset {name!r}: distinct must ascend from 1 to at most the batch ({batch}), got {distinct}.")
    if resident[0] != 1 or resident != sorted(set(resident)) or distinct[-1] not in resident:
        user_error(
            f"preset {name!r}: resident must ascend from 1 and include the largest batch mix ({distinct[-1]}), "
            f"got {resident}."
        )


def default_paths(preset: dict[str, Any]) -> dict[str, Path]:
    """Record, report and plot of a preset: ``results/serving.md`` for the main CPU preset,
    ``results/serving-<preset>.md`` for any other (the preset's name already starts with ``serving-``)."""
    name = preset["name"]
    report = "serving.md" if name == "serving-cpu" else f"{name}.md"
    return {
        "out": ROOT / "results" / "benchmarks",
        "report": ROOT / "results" / report,
        "plot": ROOT / "results" / "plots" / f"{name}.png",
    }
