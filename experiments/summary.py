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
        else "n/a (full fine-tuning updates every weight)"
    )
    metrics = record["final_metrics"]
    validation = ", ".join(
        f"{k.removeprefix('validation_')} {v:.4f}" for k, v in metrics.items() if k.startswith("validation_")
    )
    test = ", ".join(f"{k.removeprefix('test_')} {v:.4f}" for k, v in metrics.items() if k.startswith("test_"))
    test_note = " (the validation split: test labels are hidden)" if record["test_is_validation"] else ""
    return "\n".join(
        [
            f"method       {record['method']} on {record['model']}, task {record['task']}, seed {record['seed']}",
            f"parameters   {record['trainable_params']:,} trainable of {record['total_params']:,}",
            f"rank of dW   {rank_line}",
            f"validation   {validation}",
            f"test         {test}{test_note}",
            f"wall time    {record['wall_seconds']:.0f} s (train {record['train_seconds']:.0f} s, "
            f"eval {record['eval_seconds']:.0f} s, {record['steps']} steps)",
            f"record       {path}",
        ]
    )
