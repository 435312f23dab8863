"""Render a declared table (``experiments/specs``) from run records: mean ± std over seeds per cell, trainable
parameters, median rank of dW, the published reference column, and missing runs marked as such."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from .specs import Column, TableSpec
from .tables import mean_std


def read_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Complete records in ``folder`` by file stem (the run name)."""
    records = {}
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if record.get("complete"):
            records[path.stem] = record
    return records


def _cell(values: list[float], expected: int) -> str:
    if not values:
        return "missing"
    mean, std = mean_std(values)
    text = f"{100 * mean:.2f} ± {100 * std:.2f}"
    return text if len(values) == expected else f"{text} ({len(values)}/{expected} seeds)"


def accuracy_rows(spec: TableSpec, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, model, method); one cell per column."""
    rows = []
    seeds = len(spec.grid["seed"])
    keys = []
    for run in spec.runs():
        key = (run.variant.label, run.model, run.method)
        if key not in keys:
            keys.append(key)
    for variant, model, method in keys:
        runs = [r for r in spec.runs() if (r.variant.label, r.model, r.method) == (variant, model, method)]
        found = [records[r.name] for r in runs if r.name in records]
        row: dict[str, Any] = {"variant": variant, "model": model, "method": method}
        column_means: list[float] = []
        for column in spec.columns:
            if column.average:
                continue
            values = [
                rec["final_metrics"][column.metric]
                for run, rec in ((r, records.get(r.name)) for r in runs)
                if rec is not None
                and (column.task is None or run.task == column.task)
                and column.metric in rec["final_metrics"]
            ]
            row[column.label] = values
            if values:
                column_means.append(statistics.fmean(values))
        for column in spec.columns:
            if column.average:
                complete = len(column_means) == len([c for c in spec.columns if not c.average])
                row[column.label] = [statistics.fmean(column_means)] if complete else []
        row["trainable_params"] = found[0]["trainable_params"] if found else None
        row["frozen_factor_values"] = found[0].get("frozen_factor_values") if found else None
        ranks = [r["median_rank"] for r in found if r.get("median_rank") is not None]
        row["median_rank"] = statistics.median(ranks) if ranks else None
        row["runs_found"], row["runs_expected"] = len(found), len(runs)
        row["reference"] = _reference(spec, model, method)
        row["_seeds"] = seeds
        rows.append(row)
    return rows


def _reference(spec: TableSpec, model: str, method: str) -> float | None:
    if not spec.reference:
        return None
    return (spec.reference.get("values") or {}).get(model, {}).get(method)


def _expected(column: Column, row: dict[str, Any], spec: TableSpec) -> int:
    if column.average:
        return 1
    tasks = spec.grid["task"] if column.task is None else [column.task]
    return row["_seeds"] * len([t for t in tasks if column.task is None or t == column.task])


def render_accuracy(spec: TableSpec, rows: list[dict[str, Any]], provenance: str) -> str:
    has_variants = any(row["variant"] for row in rows)
    ref_label = f"reference {spec.reference['column']}" if spec.reference else None
    head = ["variant"] if has_variants else []
    head += ["model", "method", *[c.label for c in spec.columns], "trainable params"]
    head += ["frozen random values"] if spec.show_frozen else []
    head += ["median rank of dW"]
    head += [ref_label] if ref_label else []
    lines = [f"# {spec.title}", "", provenance, "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row["variant"]] if has_variants else []
        cells += [row["model"], row["method"]]
        cells += [_cell(row[c.label], _expected(c, row, spec)) for c in spec.columns]
        cells.append(f"{row['trainable_params']:,}" if row["trainable_params"] is not None else "missing")
        if spec.show_frozen:
            frozen = row["frozen_factor_values"]
            cells.append("—" if frozen is None else f"{frozen:,}")
        rank = row["median_rank"]
        cells.append("full FT" if rank is None and row["method"] == "full" else ("—" if rank is None else f"{rank:g}"))
        if ref_label:
            cells.append("—" if row["reference"] is None else f"{row['reference']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    if spec.reference:
        lines += ["", f"Reference: {spec.reference['source']}"]
    missing = sum(row["runs_expected"] - row["runs_found"] for row in rows)
    if missing:
        lines += ["", f"{missing} of {sum(r['runs_expected'] for r in rows)} runs have no complete record yet."]
    return "\n".join(lines) + "\n"


def render_properties(spec: TableSpec, records: dict[str, dict[str, Any]], provenance: str) -> tuple[str, list]:
    head = ["model", "method", "trainable params", "frozen random values", "median rank bound", "median rank of dW"]
    head += ["min rank", "layers"]
    lines = [f"# {spec.title}", "", provenance, "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    rows = []
    for model in spec.grid["model"]:
        for method in spec.grid["method"]:
            record = records.get(f"{method}-{model}")
            if record is None:
                lines.append(f"| {model} | {method} | missing | | | | | |")
                continue
            row = {k: record[k] for k in ("model", "method", "trainable_params", "median_rank_bound", "median_rank")}
            row |= {"min_rank": record["min_rank"], "layers": len(record["layers"]) * record["depth_multiplier"]}
            row["frozen_factor_values"] = record.get("frozen_factor_values")
            frozen = "—" if row["frozen_factor_values"] is None else f"{row['frozen_factor_values']:,}"
            rows.append(row)
            lines.append(
                f"| {model} | {method} | {row['trainable_params']:,} | {frozen} | {row['median_rank_bound']:g} | "
                f"{row['median_rank']:g} | {row['min_rank']} | {row['layers']} |"
            )
    lines += [
        "",
        "Trainable values moved by a random step from their initial values (no training): the rank each method can "
        "reach. `*-shapes`: one "
        "decoder layer of the real dimensions, counts scaled to the model's depth. Frozen random values: the shared "
        "factors or projections kept beside the model (TeRA, VeRA, RandLoRA), not scaled by depth since every layer "
        "uses the same ones.",
    ]
    return "\n".join(lines) + "\n", rows


def provenance(records: list[dict[str, Any]]) -> str:
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
    return f"Rendered from {len(records)} records ({dates[0]} to {dates[-1]}): {'; '.join(envs)}."


def write_spec_table(spec: TableSpec, folder: Path, out: Path) -> str:
    """Write ``out``.md and ``out``.csv; returns the Markdown."""
    records = read_records(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    if spec.kind == "properties":
        markdown, rows = render_properties(spec, records, provenance(list(records.values())))
    else:
        rows = accuracy_rows(spec, records)
        used = [records[r.name] for r in spec.runs() if r.name in records]
        markdown = render_accuracy(spec, rows, provenance(used))
        rows = [_csv_row(spec, row) for row in rows]
    out.with_suffix(".md").write_text(markdown)
    if rows:
        with open(out.with_suffix(".csv"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return markdown


def _csv_row(spec: TableSpec, row: dict[str, Any]) -> dict[str, Any]:
    flat = {"variant": row["variant"], "model": row["model"], "method": row["method"]}
    for column in spec.columns:
        values = row[column.label]
        flat[f"{column.label} mean"] = 100 * statistics.fmean(values) if values else None
        flat[f"{column.label} std"] = 100 * mean_std(values)[1] if values else None
        flat[f"{column.label} n"] = len(values)
    keys = ("trainable_params", "frozen_factor_values", "median_rank", "reference", "runs_found", "runs_expected")
    flat |= {k: row[k] for k in keys}
    return flat
