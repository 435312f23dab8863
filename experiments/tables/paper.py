"""Render a declared table (``experiments/specs``) from run records through the one table path (``tables``): every run
the spec expects is a line, found or not, so missing runs are marked; rows add the published reference column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from experiments.records import naming
from experiments.tables import plots
from experiments.tables.figures import figure_section
from experiments.tables.published import published_section
from experiments.tables.render import (
    RecordSet,
    document,
    newest_settings,
    provenance,
    read_records,
    render_rows,
    run_frame,
    summarise,
    to_markdown,
    write,
)
from experiments.tables.specs import TableSpec

PROPERTIES_NOTE = (
    "Trainable values moved by a random step from their initial values (no training): the rank each method can reach. "
    "`*-shapes`: one decoder layer of the real dimensions with random weights, counts scaled to the model's depth; "
    "% of model: trained / (the whole model's parameters + trained), the paper's definition, the whole model counted "
    "from its published configuration on the meta device. Frozen random values: the shared factors or projections "
    "kept beside the model (TeRA, VeRA, RandLoRA), not scaled by depth since every layer uses the same ones. n/a: no "
    "weight is adapted (virtual-token methods), so there is no dW."
)


def row_keys(spec: TableSpec) -> list[str]:
    """Rows are (variant, model, method); the variant column only where the spec has variants."""
    return (["variant"] if any(v.label for v in spec.variants) else []) + ["model", "method"]


def _is_run(record: dict[str, Any], run) -> bool:
    """A record is a spec run's by what it says it is, not by its file name."""
    return (record["method"], record["model"], record["task"], record["seed"]) == (
        run.method,
        run.model,
        run.task,
        run.seed,
    )


def run_key(run) -> tuple:
    return (run.variant.label, run.model, run.task, run.method, run.seed)


def match_runs(spec: TableSpec, found: RecordSet) -> tuple[dict[tuple, dict[str, Any]], list[str]]:
    """The record of each run of the spec (by run name and content), and notes: records named like a run but made
    for another, and cells whose seeds were made with different settings (only the newest settings count)."""
    chosen: dict[Any, dict[str, Any]] = {}
    notes = []
    for run in spec.runs():
        named = found.named(run.name)
        fitting = [r for r in named if _is_run(r, run)]
        for other in (r for r in named if not _is_run(r, run)):
            notes.append(
                f"A record named {run.name} is of {other['method']} on {other['model']}, {other['task']}, seed "
                f"{other['seed']}: not counted as that run."
            )
        if fitting:
            chosen[run_key(run)] = max(fitting, key=lambda r: r.get("environment", {}).get("date", ""))
    cells: dict[tuple, list] = {}
    for key, record in chosen.items():
        variant, model, task, method, _ = key
        cells.setdefault((variant, model, method, task), []).append((key, record))
    for (variant, model, method, task), members in cells.items():
        kept, dropped = newest_settings([record for _, record in members])
        if dropped:
            for key, record in members:
                if record not in kept:
                    del chosen[key]
            where = ", ".join(x for x in (variant, model, method, task) if x)
            notes.append(
                f"{where}: {dropped} seed(s) were run with other settings than the newest; only the newest settings "
                f"are shown (rerun the others to fill the cell)."
            )
    return chosen, notes


def accuracy_rows(spec: TableSpec, found: RecordSet) -> list[dict[str, Any]]:
    """One row per (variant, model, method), in the spec's order; one list of values over seeds per column."""
    chosen, _ = match_runs(spec, found)
    runs = [
        {
            "variant": run.variant.label,
            "model": run.model,
            "method": run.method,
            "task": run.task,
            "seed": run.seed,
            "record": chosen.get(run_key(run)),
        }
        for run in spec.runs()
    ]
    rows = summarise(run_frame(runs, spec.columns), ["variant", "model", "method"], spec.columns)
    steps = _chosen_steps(runs)
    for row in rows:
        row["reference"] = _reference(spec, row["model"], row["method"])
        row["shown"] = spec.row_cells(row["variant"], row["model"], row["method"])  # a tuned table's chosen setting
        if steps:  # train.keep_best: the step each seed's test figures are from
            row["shown"] = {
                **row["shown"],
                "chosen step": steps.get((row["variant"], row["model"], row["method"]), "—"),
            }
    return rows


def _chosen_steps(runs: list[dict[str, Any]]) -> dict[tuple, str]:
    """Per row, the steps ``train.keep_best`` restored over its seeds (``10, 20 of 20``); empty when no record chose."""
    chosen: dict[tuple, list[int]] = {}
    total: dict[tuple, int] = {}
    for run in runs:
        record = run["record"]
        if record and record.get("chosen_step") is not None:
            key = (run["variant"], run["model"], run["method"])
            chosen.setdefault(key, []).append(int(record["chosen_step"]))
            total[key] = int(record.get("steps") or 0)
    return {key: f"{', '.join(map(str, values))} of {total[key]}" for key, values in chosen.items()}


def _reference(spec: TableSpec, model: str, method: str) -> float | None:
    if not spec.reference:
        return None
    return (spec.reference.get("values") or {}).get(model, {}).get(method)


def render_accuracy(spec: TableSpec, found: RecordSet) -> tuple[str, pd.DataFrame]:
    rows = accuracy_rows(spec, found)
    chosen, match_notes = match_runs(spec, found)
    used = list(chosen.values())
    notes = [*spec.caption, *([f"Reference: {spec.reference['source']}"] if spec.reference else [])]
    notes += [*match_notes, *found.notes()]
    reference = spec.reference["column"] if spec.reference else None
    keys = row_keys(spec)
    markdown, frame = render_rows(rows, keys, spec.columns, spec.title, used, spec.show_frozen, reference, notes)
    if spec.paper:  # every printed cell of the paper beside ours (the first variant's rows: the paper's setting)
        first = [row for row in rows if row["variant"] == spec.variants[0].label]
        labels = [column.label for column in spec.columns if column.label in spec.paper_labels]
        section = published_section(spec.paper, first, labels)
        markdown = f"{markdown.rstrip()}\n\n## Beside the paper\n\n{section}\n"
    return markdown, frame


def _method_name(entry: str | dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else entry["name"]


def _paper_percent(spec: TableSpec, model: str, method: str) -> str:
    values = ((spec.reference or {}).get("values") or {}).get(model) or {}
    value = values.get(method)
    return "" if value is None else str(value)


def _properties_cells(record: dict[str, Any]) -> dict[str, str]:
    """The shown cells of one properties record ("n/a" where a method has no dW or does not apply)."""
    if record.get("unsupported"):
        return {"trainable params": "n/a", "rank of dW (median)": "n/a"}
    frozen = record.get("frozen_factor_values")
    percent = record.get("trainable_percent")
    has_rank = record.get("median_rank") is not None
    return {
        "trainable params": f"{record['trainable_params']:,}",
        "% of model": "" if percent is None else f"{percent:.4f}",
        "frozen random values": "—" if frozen is None else f"{frozen:,}",
        "rank bound (median)": f"{record['median_rank_bound']:g}" if has_rank else "n/a",
        "rank of dW (median)": f"{record['median_rank']:g}" if has_rank else "n/a",
        "min rank": str(record["min_rank"]) if has_rank else "n/a",
        "adapted matrices": str(len(record["layers"]) * record["depth_multiplier"]),
    }


def render_properties(spec: TableSpec, found: RecordSet) -> tuple[str, pd.DataFrame]:
    """Table 1: one line per model x method of the grid, from the properties records (missing ones marked), with the
    paper's percentage beside ours where the spec gives it."""
    records = {
        naming.properties_name(r["method"], r["model"]): r for r in found.records if r.get("table") == "properties"
    }
    shown, numbers, used, notes = [], [], [], [PROPERTIES_NOTE]
    for model in spec.grid["model"]:
        for method in map(_method_name, spec.grid["method"]):
            record = records.get(naming.properties_name(method, model))
            cells = {"model": model, "method": method, "paper %": _paper_percent(spec, model, method)}
            if record is None:
                shown.append(cells | {"trainable params": "missing"})
                continue
            used.append(record)
            shown.append(cells | _properties_cells(record))
            if record.get("unsupported"):
                notes.append(f"{method} on {model}: {record['unsupported']}")
                continue
            keys = ("model", "method", "trainable_params", "trainable_percent", "median_rank_bound", "median_rank")
            numbers.append({k: record.get(k) for k in (*keys, "min_rank", "frozen_factor_values")})
    head = ["model", "method", "trainable params", "% of model"]
    if spec.reference:
        head.append("paper %")
    rest = ["frozen random values", "rank bound (median)", "rank of dW (median)", "min rank", "adapted matrices"]
    frame = pd.DataFrame(shown, columns=[*head, *rest]).fillna("")
    missing = sum(cells["trainable params"] == "missing" for cells in shown)
    notes += [f"{missing} of {len(shown)} measurements have no record yet."] if missing else []
    notes += spec.caption + ([f"Paper %: {spec.reference['source']}"] if spec.reference else [])
    return document(spec.title, provenance(used), to_markdown(frame, 2), notes), pd.DataFrame(numbers, dtype=object)


def write_spec_table(spec: TableSpec, folder: Path, out: Path) -> str:
    """Write ``out``.md and ``out``.csv from the records in ``folder``; returns the Markdown."""
    records = read_records(folder)
    render = render_properties if spec.kind == "properties" else render_accuracy
    markdown, frame = render(spec, records)
    if spec.figure and spec.kind == "accuracy":  # one of the paper's figures: drawn and shown under the table
        section = figure_section(spec, accuracy_rows(spec, records), match_runs(spec, records)[0], out.parent)
        markdown = f"{markdown.rstrip()}\n\n{section.rstrip()}\n"
    write(out, markdown, frame)
    return markdown


def main_label(spec: TableSpec) -> str:
    """The column a table's plot shows: its average (``Avg``) where it has one, else its last column."""
    averages = [c.label for c in spec.columns if c.average or c.label.rstrip(".").lower() == "avg"]
    return averages[-1] if averages else spec.columns[-1].label


def render_spec(spec: TableSpec, results: Path) -> str:
    """Write ``spec``'s table from its records folder under ``results`` and draw its plots; returns the Markdown."""
    records_dir = results / "runs" / spec.records_dir
    markdown = write_spec_table(spec, records_dir, results / spec.out_name)
    if spec.kind == "accuracy" and not spec.figure:  # a figure is drawn with its table (write_spec_table)
        found = read_records(records_dir, warn=False)  # write_spec_table warned already
        rows = accuracy_rows(spec, found)
        chosen = match_runs(spec, found)[0]
        main = spec.reference["column"] if spec.reference else main_label(spec)
        figures = results / "plots"
        plots.accuracy_vs_parameters(rows, main, spec.title, figures / f"{spec.out_name}-accuracy-vs-params.png")
        plots.variant_dots(rows, main, spec.title, figures / f"{spec.out_name}-variants.png")  # ablations only
        plots.spectra(list(chosen.values()), figures / f"{spec.out_name}-spectra.png")
    return markdown
