"""Render a results table (Markdown and CSV) from run records: mean ± std over seeds, parameters, median rank.

The one table path: records are read and grouped into rows here (pandas), then rendered as Markdown
(``DataFrame.to_markdown``, through tabulate) and CSV (``DataFrame.to_csv``). Declared tables (``experiments/specs``,
via ``paper_tables``) and this command line for any folder of records both end here.

python -m experiments.tables results/runs/sentiment-minilm --out results/sentiment_minilm --title "..."
python -m experiments.tables results/runs/decoder-smollm2-tera-lr --out /tmp/lr --metric test_average_lmeval_acc \
    --task commonsense/offline --label-by method.decoder_lr
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from baselines import METHODS, trains_every_weight

BASE_LABEL = "base (no training)"  # a zero-step run: the pretrained model evaluated as it is


@dataclass(frozen=True)
class Column:
    """One metric column: ``metric`` from each record's final metrics, only records of ``task`` when given (GLUE:
    one task per column), or the mean of the other columns (``average``)."""

    label: str
    metric: str | None = None
    task: str | None = None
    average: bool = False


def read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Complete records in ``folder`` by file stem (the run name); unreadable or incomplete ones never count."""
    records = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("complete"):
            records[path.stem] = record
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
    """The method, or ``base (no training)`` for a zero-step run; with ``label_by`` config keys (a sweep), their
    values too, so the runs of one method stay apart."""
    if record.get("steps") == 0:
        return BASE_LABEL
    settings = ", ".join(f"{key.split('.')[-1]}={config_value(record, key)}" for key in label_by)
    return f"{record['method']} ({settings})" if settings else record["method"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the seeds of one cell."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# --- rows -------------------------------------------------------------------------------------------------------


def run_frame(runs: Iterable[dict[str, Any]], columns: list[Column]) -> pd.DataFrame:
    """One line per run, expected or found: its fields as given (row keys, ``task``, ``seed``, and ``record``: None
    where no complete record exists yet) plus each column's metric value, NaN where the record is missing, is of
    another task or lacks the metric."""
    lines = []
    for run in runs:
        record = run.get("record")
        line = dict(run, record=record)
        for column in columns:
            if column.average:
                continue
            metrics = record["final_metrics"] if record else {}
            wanted = column.task is None or run["task"] == column.task
            line[column.label] = metrics.get(column.metric, math.nan) if wanted else math.nan
        lines.append(line)
    return pd.DataFrame(lines)


def summarise(frame: pd.DataFrame, keys: list[str], columns: list[Column]) -> list[dict[str, Any]]:
    """One row per group of ``keys`` (in order of first appearance): each column's values over seeds and how many
    were expected, the cost fields of the records found, and runs found/expected."""
    rows = []
    for key, group in frame.groupby(keys, sort=False, dropna=False):
        found = [r for r in group["record"] if isinstance(r, dict)]
        row: dict[str, Any] = dict(zip(keys, key))
        row["expected"] = {}
        means = []
        for column in columns:
            if column.average:
                continue
            wanted = group if column.task is None else group[group["task"] == column.task]  # runs this column expects
            row[column.label] = wanted[column.label].dropna().tolist()
            row["expected"][column.label] = len(wanted)
            if row[column.label]:
                means.append(statistics.fmean(row[column.label]))
        plain = [c for c in columns if not c.average]
        for column in columns:
            if column.average:  # the mean of the other columns' means, once every one of them has a value
                row[column.label] = [statistics.fmean(means)] if means and len(means) == len(plain) else []
                row["expected"][column.label] = 1
        ranks = [r["median_rank"] for r in found if r.get("median_rank") is not None]
        seconds = [r["train_seconds"] for r in found if r.get("train_seconds") is not None]
        row |= {
            "seeds": sorted({r["seed"] for r in found if "seed" in r}),
            # A zero-step run trained nothing, whatever its adapter would have trained.
            "trainable_params": (0 if found[0].get("steps") == 0 else found[0]["trainable_params"]) if found else None,
            "frozen_factor_values": found[0].get("frozen_factor_values") if found else None,
            "median_rank": statistics.median(ranks) if ranks else None,
            "train_seconds": statistics.fmean(seconds) if seconds else None,
            "runs_found": len(found),
            "runs_expected": len(group),
        }
        rows.append(row)
    return rows


# --- rendering --------------------------------------------------------------------------------------------------


def _cell(values: list[float], expected: int) -> str:
    if not values:
        return "missing"
    mean, std = mean_std(values)
    text = f"{100 * mean:.2f} ± {100 * std:.2f}"
    return text if len(values) == expected else f"{text} ({len(values)}/{expected} seeds)"


def _rank(row: dict[str, Any]) -> str:
    if row["median_rank"] is None:
        full = row.get("method") in METHODS and trains_every_weight(row["method"])
        return "full FT" if full and row["runs_found"] else "—"
    return f"{row['median_rank']:g}"


def display_frame(
    rows: list[dict[str, Any]],
    keys: list[str],
    columns: list[Column],
    show_frozen: bool = False,
    reference: str | None = None,
) -> pd.DataFrame:
    """The rows as the Markdown table shows them: metric cells in % (mean ± std over seeds), costs, reference."""
    shown = []
    for row in rows:
        cells = {key: str(row[key]) for key in keys}
        cells |= {c.label: _cell(row[c.label], row["expected"][c.label]) for c in columns}
        cells["seeds"] = str(len(row["seeds"]))
        params = row["trainable_params"]
        cells["trainable params"] = "missing" if params is None else f"{params:,}"
        if show_frozen:
            frozen = row["frozen_factor_values"]
            cells["frozen random values"] = "—" if frozen is None else f"{frozen:,}"
        cells["median rank of dW"] = _rank(row)
        cells["train s"] = "—" if row["train_seconds"] is None else f"{row['train_seconds']:.0f}"
        if reference:
            cells[f"reference {reference}"] = "—" if row.get("reference") is None else f"{row['reference']:.1f}"
        shown.append(cells)
    return pd.DataFrame(shown)


def csv_frame(rows: list[dict[str, Any]], keys: list[str], columns: list[Column]) -> pd.DataFrame:
    """The rows as numbers: each column's mean, std and count over seeds (as recorded, not in %), then the costs."""
    flat = []
    for row in rows:
        line = {key: row[key] for key in keys}
        for column in columns:
            values = row[column.label]
            mean, std = mean_std(values) if values else (None, None)
            line |= {f"{column.label} mean": mean, f"{column.label} std": std, f"{column.label} n": len(values)}
        line |= {k: row[k] for k in ("seeds", "trainable_params", "frozen_factor_values", "median_rank")}
        line |= {k: row.get(k) for k in ("train_seconds", "reference", "runs_found", "runs_expected")}
        flat.append(line)
    return pd.DataFrame(flat, dtype=object)  # values as recorded: an integer rank stays 377, not 377.0


def to_markdown(frame: pd.DataFrame, left: int) -> str:
    """A GitHub table, cells exactly as given (no number parsing); the first ``left`` columns left-aligned."""
    align = ["left"] * left + ["right"] * (len(frame.columns) - left)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


def document(title: str, provenance: str, table: str, notes: Iterable[str] = ()) -> str:
    return "\n\n".join([f"# {title}", provenance, table, *notes]) + "\n"


def provenance(records: list[dict[str, Any]]) -> str:
    """Which records a table comes from: how many, their dates, devices and versions (DESIGN: numbers name them)."""
    if not records:
        return "No run records yet."
    envs = sorted(
        {
            f"{r['environment']['device']}, torch {r['environment']['versions']['torch']}, "
            f"peft {r['environment']['versions']['peft']}"
            for r in records
        }
    )
    dates = sorted(r["environment"]["date"][:10] for r in records)
    return f"Rendered from {len(records)} run records ({dates[0]} to {dates[-1]}): {'; '.join(envs)}."


def missing_note(rows: list[dict[str, Any]]) -> list[str]:
    missing = sum(row["runs_expected"] - row["runs_found"] for row in rows)
    expected = sum(row["runs_expected"] for row in rows)
    return [f"{missing} of {expected} runs have no complete record yet."] if missing else []


def write(out: Path, markdown: str, frame: pd.DataFrame) -> None:
    """``out``.md and ``out``.csv (no CSV for a table without rows)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown)
    if len(frame):
        frame.to_csv(out.with_suffix(".csv"), index=False)


def render_rows(
    rows: list[dict[str, Any]],
    keys: list[str],
    columns: list[Column],
    title: str,
    records: list[dict[str, Any]],
    show_frozen: bool = False,
    reference: str | None = None,
    notes: Iterable[str] = (),
) -> tuple[str, pd.DataFrame]:
    """The Markdown document and the CSV frame of an accuracy table's rows."""
    shown = display_frame(rows, keys, columns, show_frozen, reference)
    notes = ["Cells: mean ± std over seeds, in %.", *notes, *missing_note(rows)]
    markdown = document(title, provenance(records), to_markdown(shown, len(keys)), notes)
    return markdown, csv_frame(rows, keys, columns)


# --- any folder of records (no spec) ------------------------------------------------------------------------------


def write_table(
    folder: Path,
    out: Path,
    title: str,
    metric: str | None = None,
    task: str | None = None,
    label_by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """One row per (model, task, method [and ``label_by`` settings]) of the complete records in ``folder``."""
    records = [r for r in read_records(folder).values() if task is None or r["task"] == task]
    if not records:
        raise SystemExit(f"error: no complete run records under {folder}" + (f" for task {task}." if task else "."))
    main_metric = config_value(records[0], "task.main_metric")
    if metric is None and main_metric is None:
        raise SystemExit(f"error: the records under {folder} name no main metric; pass --metric (a final_metrics key).")
    metric = metric or f"test_{main_metric}"
    keys = ["model", "task", "method"]
    runs = [
        {"model": r["model"], "task": r["task"], "method": method_label(r, label_by), "seed": r["seed"], "record": r}
        for r in records
    ]
    runs.sort(key=lambda run: tuple(run[k] for k in keys))
    columns = [Column(label=metric, metric=metric)]
    rows = summarise(run_frame(runs, columns), keys, columns)
    markdown, frame = render_rows(rows, keys, columns, title, records)
    write(out, markdown, frame)
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
