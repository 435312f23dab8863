"""The short end-of-run summary printed by run.py."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def summarise(record: dict[str, Any], path: Path) -> str:
    ranks = sorted(layer["rank"] for layer in record["layers"] if layer["rank"] is not None)
    rank_line = (
        f"min {ranks[0]} / median {statistics.median(ranks):g} / max {ranks[-1]} over {len(ranks)} layers"
        if ranks
        else record.get("rank_reason") or "n/a (full fine-tuning updates every weight)"  # reason: virtual tokens
    )
    metrics = record["final_metrics"]
    if _family(record) == "causal":  # a decoder run: one line per evaluated task
        return "\n".join([*_head(record, rank_line), *_decoder_lines(record), *_tail(record, path)])
    validation = ", ".join(
        f"{k.removeprefix('validation_')} {_value(v)}" for k, v in metrics.items() if k.startswith("validation_")
    )
    test = ", ".join(f"{k.removeprefix('test_')} {_value(v)}" for k, v in metrics.items() if k.startswith("test_"))
    reason = record.get("test_is_validation_reason") or "test labels are hidden"
    test_note = f" (the validation split: {reason})" if record["test_is_validation"] else ""
    lines = [f"validation   {validation}", f"test         {test}{test_note}"]
    return "\n".join([*_head(record, rank_line), *lines, *_tail(record, path)])


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _family(record: dict[str, Any]) -> str:
    # Records from before the run pipeline carry no family; theirs is told by the decoder-only protocol field.
    return record.get("family") or ("causal" if "eval_protocol" in record else "classification")


def _head(record: dict[str, Any], rank_line: str) -> list[str]:
    frozen = record.get("frozen_factor_values")  # shared factors / projections of TeRA, VeRA, RandLoRA
    return [
        f"method       {record['method']} on {record['model']}, task {record['task']}, seed {record['seed']}",
        f"parameters   {record['trainable_params']:,} trainable of {record['total_params']:,}"
        + (f"; {frozen:,} frozen random values beside them" if frozen else ""),
        f"rank of dW   {rank_line}",
    ]


def _decoder_lines(record: dict[str, Any]) -> list[str]:
    lines = [f"evaluation   protocol {record['eval_protocol']}"]
    metrics = record["final_metrics"]
    tasks = [
        *record["evaluated_examples"],
        *(["average"] if any(k.startswith("test_average_") for k in metrics) else []),
    ]
    if record.get("test_is_validation"):
        lines[0] += f"; the test figures are the validation split's ({record.get('test_is_validation_reason')})"
    for task in tasks:
        for split in ("validation", "test"):  # validation only where a custom task had both files
            prefix = f"{split}_{task}_"
            values = ", ".join(
                f"{k.removeprefix(prefix)} {_value(v)}" for k, v in metrics.items() if k.startswith(prefix)
            )
            if split == "test" or values:
                count = record["evaluated_examples"].get(task) if split == "test" else None
                name = task if split == "test" else f"{task} (validation)"
                lines.append(f"  {name:<12} {values}" + (f"  (n={count})" if count else ""))
    stand_ins = [f"{part}: {where}" for part, where in record["data_provenance"].items() if "STAND-IN" in where]
    return lines + [f"data         {line}" for line in stand_ins]


def truncation_lines(truncated: dict[str, Any] | None) -> list[str]:
    """``train: 12 of 900 examples cut to train.max_length=128 tokens (...)``, one line per split with cuts."""
    lines = []
    for split, seen in (truncated or {}).items():
        if seen.get("cut"):
            lines.append(
                f"{split}: {seen['cut']:,} of {seen['examples']:,} examples cut to train.max_length="
                f"{seen['max_length']} tokens ({seen['how']})"
            )
    return lines


def selection_lines(record: dict[str, Any]) -> list[str]:
    """train.keep_best: ``best step 160 of 240 by validation accuracy 0.8120`` and the curve it was chosen on."""
    chosen_by, curve = record.get("chosen_by"), record.get("validation_curve") or []
    if not chosen_by:
        return []
    key = chosen_by.get("metric") or "loss"
    what = f"validation {key}"
    if record.get("chosen_step") is None:
        head = f"none: no validation {key} had a value, so the last step's state ({record['steps']}) was tested"
    else:
        head = (
            f"{record['chosen_step']} of {record['steps']} by {what} {_value(chosen_by.get('value'))} "
            f"(train.keep_best={chosen_by['keep_best']}); the test figures are this step's"
        )
    digits = 4 if key == "loss" else 3  # losses move in the fourth decimal where accuracies move in the third
    points = [f"{row['step']} {_short(row.get(key), digits)}" for row in curve]
    if len(points) > 12:  # a long run evaluates hundreds of times: the ends and the chosen step's neighbourhood
        steps = [row["step"] for row in curve]
        at = steps.index(record["chosen_step"]) if record.get("chosen_step") in steps else len(steps) - 1
        shown = sorted({0, 1, 2, at - 1, at, at + 1, len(points) - 2, len(points) - 1} & set(range(len(points))))
        gaps = [points[i] if i == 0 or i - prev == 1 else f"..., {points[i]}" for prev, i in zip([-1, *shown], shown)]
        points, note = gaps, f" ({len(curve)} evaluations; all in the record's validation_curve)"
    else:
        note = ""
    return [f"best step    {head}", f"curve        {what} at step: {', '.join(points)}{note}"]


def _short(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _resumed(record: dict[str, Any]) -> str:
    """After a resume the train time counts the earlier process too, the wall time only this one: say so."""
    if not record.get("resumed_from_step"):
        return ""
    before = record.get("train_seconds_before_resume") or 0.0
    return f"; resumed after step {record['resumed_from_step']}: {before:.0f} s of training ran in an earlier process"


def _tail(record: dict[str, Any], path: Path) -> list[str]:
    budget = record.get("budget")
    notes = [f"{key} is n/a: {why}" for key, why in (record.get("metric_notes") or {}).items()]
    return [
        *selection_lines(record),
        *[f"data         {line}" for line in record.get("data_notes") or []],  # e.g. a carved validation split
        *[f"truncated    {line}" for line in truncation_lines(record.get("truncated"))],
        *[f"warning      {line}" for line in [*(record.get("warnings") or []), *notes]],
        *([f"budget       {budget['note']}"] if budget else []),
        f"wall time    {record['wall_seconds']:.0f} s (train {record['train_seconds']:.0f} s, "
        f"eval {record['eval_seconds']:.0f} s, {record['steps']} steps)" + _resumed(record),
        f"record       {path}",
    ]
