"""Render a results table (Markdown and CSV) from run records: mean and std over seeds, parameters, median rank.

python -m experiments.tables results/runs/sentiment-minilm --out results/sentiment_minilm --title "..."
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def load_records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("complete"):
            records.append(record)
    return records


def config_value(record: dict[str, Any], dotted: str) -> Any:
    """``config.<dotted>`` of a record's resolved config, e.g. ``method.decoder_lr``; None where it is not set."""
    value: Any = record.get("config", {})
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def method_label(record: dict[str, Any], label_by: tuple[str, ...] = ()) -> str:
    """The method, or ``base (no training)`` for a zero-step run (the pretrained model evaluated as it is); with
    ``label_by`` config keys (a sweep), their values too, so the runs of one method stay apart."""
    if record.get("steps") == 0:
        return "base (no training)"
    settings = ", ".join(f"{key.split('.')[-1]}={config_value(record, key)}" for key in label_by)
    return f"{record['method']} ({settings})" if settings else record["method"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the seeds of one cell."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise_groups(
    records: Iterable[dict[str, Any]], metric: str, label_by: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """One row per (model, task, method [and ``label_by`` settings]): mean/std of ``metric`` over seeds and the cost
    columns."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["model"], record["task"], method_label(record, label_by))].append(record)
    rows = []
    for (model, task, method), runs in sorted(groups.items()):
        values = [r["final_metrics"][metric] for r in runs]
        mean, std = mean_std(values)
        ranks = [r["median_rank"] for r in runs if r.get("median_rank") is not None]
        rows.append(
            {
                "model": model,
                "task": task,
                "method": method,
                "seeds": sorted(r["seed"] for r in runs),
                "mean": mean,
                "std": std,
                "trainable_params": 0 if runs[0].get("steps") == 0 else runs[0]["trainable_params"],  # nothing trained
                "median_rank": statistics.median(ranks) if ranks else None,
                "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
            }
        )
    return rows


def render_markdown(rows: list[dict[str, Any]], metric: str, title: str, provenance: str) -> str:
    lines = [
        f"# {title}",
        "",
        provenance,
        "",
        f"| model | task | method | {metric} (mean ± std) | seeds | trainable params | median rank of dW | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        rank = "full FT" if row["median_rank"] is None else f"{row['median_rank']:g}"
        lines.append(
            f"| {row['model']} | {row['task']} | {row['method']} | {100 * row['mean']:.2f} ± {100 * row['std']:.2f} | "
            f"{len(row['seeds'])} | {row['trainable_params']:,} | {rank} | {row['train_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def provenance(records: list[dict[str, Any]]) -> str:
    envs = {
        (r["environment"]["device"], r["environment"]["versions"]["torch"], r["environment"]["versions"]["peft"])
        for r in records
    }
    dates = sorted(r["environment"]["date"][:10] for r in records)
    where = "; ".join(f"{device}, torch {torch}, peft {peft}" for device, torch, peft in sorted(envs))
    return f"Rendered from {len(records)} run records ({dates[0]} to {dates[-1]}): {where}."


def write_table(
    folder: Path,
    out: Path,
    title: str,
    metric: str | None = None,
    task: str | None = None,
    label_by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    records = [r for r in load_records(folder) if task is None or r["task"] == task]
    if not records:
        raise SystemExit(f"error: no complete run records under {folder}" + (f" for task {task}." if task else "."))
    metric = metric or f"test_{records[0]['config']['task']['main_metric']}"
    rows = summarise_groups(records, metric, label_by)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(render_markdown(rows, metric, title, provenance(records)))
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=Path, help="folder of run records")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix (.md and .csv)")
    parser.add_argument("--title", default="Results")
    parser.add_argument("--metric", default=None, help="record metric key, default test_<task main metric>")
    parser.add_argument("--task", default=None, help="only records of this task, e.g. math/gsm8k")
    parser.add_argument(
        "--label-by",
        action="append",
        default=[],
        metavar="KEY",
        help="config key whose value tells a sweep's runs apart, e.g. method.decoder_lr (repeatable)",
    )
    args = parser.parse_args(argv)
    write_table(args.records, args.out, args.title, args.metric, args.task, tuple(args.label_by))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
