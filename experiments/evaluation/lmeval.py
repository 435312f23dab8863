"""Evaluation with lm-eval in the same process, on the fine-tuned (PEFT) model object.

The evaluated items are written as JSONL next to generated lm-eval task YAMLs (``dataset_path: json``), so hub tasks,
local files and the offline stand-ins take the same path, with the prompts the model was trained on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from experiments.evaluation.extraction import IGNORED_IN_MATCH, LMEVAL_MATH_FILTERS
from experiments.evaluation.virtual_tokens import virtual_token_generation
from experiments.tasks.decoder.prompts import ANSWER_LEAD

TASK_PREFIX = "tera_"


def task_config(name: str, kind: str, data_file: Path, max_new_tokens: int) -> dict[str, Any]:
    """An lm-eval task definition for one of our item files."""
    config: dict[str, Any] = {
        "task": TASK_PREFIX + name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
    }
    if kind == "choice":
        return {
            **config,
            "output_type": "multiple_choice",
            "doc_to_text": "context",  # a field name: lm-eval uses the field as it is
            "doc_to_choice": "answers",
            "doc_to_target": "label",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    if kind == "math":
        return {
            **config,
            "output_type": "generate_until",
            "doc_to_text": "prompt",
            "doc_to_target": "target",
            "generation_kwargs": {"until": ["### Instruction", "\n\n\n"], "do_sample": False},
            "filter_list": LMEVAL_MATH_FILTERS,
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    "ignore_punctuation": False,
                    "regexes_to_ignore": IGNORED_IN_MATCH,
                }
            ],
            "max_gen_toks": max_new_tokens,
        }
    raise ValueError(f"No lm-eval task shape for kind {kind!r}.")


def write_tasks(
    evaluation: Mapping[str, Sequence[Mapping[str, Any]]],
    kinds: Mapping[str, str],
    folder: Path,
    max_new_tokens: int,
) -> list[str]:
    """Write ``<name>.jsonl`` and ``<name>.yaml`` per task into ``folder``; returns the lm-eval task names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, items in evaluation.items():
        data_file = folder / f"{name}.jsonl"
        with open(data_file, "w", encoding="utf-8") as handle:
            for item in items:
                row = dict(item)
                if kinds[name] == "choice":
                    row["context"] = item["prompt"] + ANSWER_LEAD
                handle.write(json.dumps(row) + "\n")
        config = task_config(name, kinds[name], data_file.resolve(), max_new_tokens)
        if "max_gen_toks" in config:  # lm-eval reads it from generation_kwargs
            config["generation_kwargs"]["max_gen_toks"] = config.pop("max_gen_toks")
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names.append(config["task"])
    return names


def evaluate_with_lm_eval(
    model,
    tokenizer,
    evaluation: Mapping[str, Sequence[Mapping[str, Any]]],
    kinds: Mapping[str, str],
    folder: Path,
    *,
    batch_size: int,
    max_new_tokens: int,
    limit: int | None = None,
    max_length: int | None = None,
) -> dict[str, dict[str, float]]:
    """Per task, lm-eval's metrics (``acc``, ``acc_norm`` / ``exact_match_strict``, ``exact_match_flexible``) and n."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = write_tasks(evaluation, kinds, folder, max_new_tokens)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # several INFO lines per task otherwise; bars remain
    # HFLM drops the logits of Prompt Tuning's and P-Tuning's virtual tokens itself; their generation needs the repair
    # of experiments/evaluation/virtual_tokens.py (GSM8K's answers are generated).
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    with virtual_token_generation(model):
        output = simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            limit=limit,
            log_samples=False,
            bootstrap_iters=0,
        )
    return {name.removeprefix(TASK_PREFIX): _metrics(output, name) for name in names}


def _metrics(output: Mapping[str, Any], name: str) -> dict[str, float]:
    raw = output["results"][name]
    renamed = {
        "acc,none": "acc",
        "acc_norm,none": "acc_norm",
        "exact_match,strict-match": "exact_match_strict",
        "exact_match,flexible-extract": "exact_match_flexible",
    }
    metrics = {short: float(raw[key]) for key, short in renamed.items() if key in raw}
    samples = output.get("n-samples", {}).get(name, {})
    metrics["n"] = int(samples.get("effective", samples.get("original", 0)))
    return metrics
