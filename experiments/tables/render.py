"""Render a results table (Markdown and CSV) from run records: mean ± std over seeds, parameters, median rank.

The one table path: records are read and grouped into rows here (pandas), then rendered as Markdown
(``DataFrame.to_markdown``) and CSV (``DataFrame.to_csv``); declared tables (``experiments/specs``) end here too.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from baselines import METHODS, VIRTUAL_TOKEN_METHODS, trains_every_weight
from experiments.records.identity import run_signature, short_hash
from experiments.records.read import flat_settings, is_complete, is_legacy, read_record

HOLLOW = "Warning: finished runs lack"  # a column its complete records do not hold (e.g. a renamed metric)
BASE_LABEL = "base (no training)"  # a zero-step run: the pretrained model evaluated as it is


@dataclass(frozen=True)
class Column:
    """One metric column: ``metric`` from each record's final metrics, only records of ``task`` when given (GLUE:
    one task per column), or the mean of the other columns (``average``)."""

    label: str
    metric: str | None = None
    task: str | None = None
    average: bool = False


REQUIRED = ("method", "model", "task", "seed", "final_metrics", "environment")
PROPERTIES_REQUIRED = ("method", "model", "layers", "environment")  # Table 1's measurements: no task, seed or training
NUMBERS = ("steps", "trainable_params", "median_rank", "train_seconds")  # the fields a table computes with


@dataclass
class RecordSet:
    """The complete records of a folder, each (settings, seed) once, and what was left out and why."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<file> (why)": files that are not usable records
    copies: int = 0  # records of a (settings, seed) already counted with the same metrics (a copied file, a rerun)
    conflicts: list[str] = field(default_factory=list)  # sentences: records of one (settings, seed) that disagree
    unfinished: int = 0  # failed or incomplete runs: never in a table

    def named(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("run_name") == name]

    def notes(self) -> list[str]:
        """What a reader of the table should know about the records it was not built from."""
        notes = []
        if self.skipped:
            notes.append(f"Skipped {len(self.skipped)} unreadable file(s): {', '.join(self.skipped)}.")
        if self.copies:
            notes.append(f"{self.copies} record(s) repeat a (settings, seed) already counted; counted once.")
        notes += self.conflicts
        if self.unfinished:
            notes.append(f"{self.unfinished} failed or unfinished run(s) are not counted.")
        legacy = [r for r in self.records if is_legacy(r)]
        if legacy:
            notes.append(
                f"{len(legacy)} of the {len(self.records)} records in this folder are legacy records, made before run "
                f"ids existed: their settings are recorded, the content of their data and model was not fingerprinted."
            )
        return notes


def settings_of(record: dict[str, Any]) -> str:
    """The settings a record was made with, the same for every seed (records from before ``settings_id`` existed
    get it from their resolved config)."""
    if record.get("settings_id"):
        return record["settings_id"]
    config, data, model = record.get("config") or {}, record.get("data_fingerprint"), record.get("model_fingerprint")
    return short_hash(run_signature(config, data, model, with_seed=False))


def read_records(folder: Path, warn: bool = True) -> RecordSet:
    """Every usable record in ``folder``: complete, readable, one per (settings, seed), the newest (a note names records
    of one run whose metrics differ). Unreadable or damaged files are named, with why, in a warning and the notes."""
    found = RecordSet()
    measurements: dict[tuple[Any, ...], list[tuple[str, dict[str, Any]]]] = {}
    for path in sorted(Path(folder).glob("*.json")):
        record = read_record(path)
        if record is None:
            found.skipped.append(f"{path.name} (not a JSON object)")
        elif not is_complete(record):
            found.unfinished += 1
        elif why := damage(record):
            found.skipped.append(f"{path.name} ({why})")
        else:
            measurements.setdefault(_identity(record), []).append((path.name, record))
    for key, members in measurements.items():
        name, kept = members[0]
        for other_name, other in members[1:]:  # the newest; of equally new ones the first by file name
            name, kept = (other_name, other) if _date(other) > _date(kept) else (name, kept)
        found.records.append(kept)
        disagreeing = sum(_result(r) != _result(kept) for _, r in members)
        found.copies += len(members) - 1 - disagreeing
        found.conflicts += [_conflict(key, members, name, kept)] if disagreeing else []
    found.records.sort(key=lambda r: (r.get("run_name") or "", r.get("seed") or 0))
    for line in [f"skipping {Path(folder) / skipped}" for skipped in found.skipped] + found.conflicts if warn else []:
        print(f"warning: {line}", file=sys.stderr)
    return found


# The fields a table reads and the type each must have; a record with another type there is damaged (edited by hand,
# or made by other code) and skipped with the reason, never a traceback.
FIELD_TYPES = {"environment": dict, "method": str, "model": str, "task": str, "settings_id": str, "config": dict}
FIELD_TYPES |= {"seed": int, "final_metrics": dict, "environment.date": str} | dict.fromkeys(NUMBERS, float)
TYPE_NAMES = {dict: "an object", str: "a string", int: "an integer", float: "a number"}


def damage(record: dict[str, Any]) -> str | None:
    """Why a complete record cannot be counted (a field missing or of the wrong type), or None."""
    required = _required(record)
    if missing := [key for key in required if key not in record]:
        return f"no {', '.join(missing)}"
    fields = {k: record.get(k) for k in FIELD_TYPES if k in required or record.get(k) is not None}
    if isinstance(record["environment"], dict):
        fields["environment.date"] = record["environment"].get("date")
    if isinstance(record.get("final_metrics"), dict) and "final_metrics" in required:
        fields |= {f"final_metrics.{k}": v for k, v in record["final_metrics"].items() if v is not None}
    for key, value in fields.items():
        kind = FIELD_TYPES.get(key, float)
        numeric = (int, float) if kind is float else kind
        if not isinstance(value, numeric) or (kind is not dict and isinstance(value, bool)):
            text = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
            return f"{key} is not {TYPE_NAMES[kind]}" + ("" if kind is dict or value is None else f": {text}")
    return None


def _result(record: dict[str, Any]) -> Any:
    """What two records of one measurement must agree on: the metrics (Table 1: the measured figures)."""
    if record.get("table") == "properties":
        return {k: record.get(k) for k in ("trainable_params", "median_rank", "median_rank_bound", "min_rank")}
    return record.get("final_metrics")


def _conflict(key: tuple[Any, ...], members: list[tuple[str, dict[str, Any]]], name: str, kept: dict) -> str:
    """One sentence: the records of one measurement whose results differ (each with its date and up to three of the
    figures that differ), and which one the table uses and why."""
    results = [_result(r) for _, r in members]
    differing = sorted({k for result in results for k in result if len({repr(r.get(k)) for r in results}) > 1})[:3]
    figures = [", ".join(f"{k} {'n/a' if res.get(k) is None else res[k]}" for k in differing) for res in results]
    files = ", ".join(f"{n} ({_date(r) or 'undated'}: {f})" for (n, r), f in zip(members, figures))
    what = f"properties of {key[1]} on {key[2]}" if key[0] == "properties" else f"settings {key[0]}, seed {key[1]}"
    tie = sum(_date(r) == _date(kept) for _, r in members) > 1
    why = "the first by file name of the equally new ones" if tie else "the newest"
    head = f"{len(members)} complete records of one run ({what}) have different metrics"
    return f"{head}: {files}; the table uses {name}, {why}."


def _required(record: dict[str, Any]) -> tuple[str, ...]:
    return PROPERTIES_REQUIRED if record.get("table") == "properties" else REQUIRED


def _identity(record: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two records the same measurement: (settings, seed) for a run, (method, model) for Table 1."""
    if record.get("table") == "properties":
        return ("properties", record["method"], record["model"])
    return (settings_of(record), record["seed"])


def _date(record: dict[str, Any]) -> str:
    return (record.get("environment") or {}).get("date") or ""


def newest_settings(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The records of the newest settings among ``records`` and how many of other settings were left out: runs
    with different settings are never averaged as if they were seeds."""
    if len({settings_of(r) for r in records}) <= 1:
        return records, 0
    latest = settings_of(max(records, key=_date))
    kept = [r for r in records if settings_of(r) == latest]
    return kept, len(records) - len(kept)


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
            if sum(isinstance(r, dict) for r in wanted["record"]) > len(row[column.label]):
                row.setdefault("lacking", set()).add(column.metric)  # a finished run without the column's metric
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
            "trainable_params": (0 if found[0].get("steps") == 0 else found[0].get("trainable_params"))
            if found
            else None,
            "frozen_factor_values": found[0].get("frozen_factor_values") if found else None,
            "total_params": found[0].get("total_params") if found else None,  # the adapted model's, trained included
            "median_rank": statistics.median(ranks) if ranks else None,
            "train_seconds": statistics.fmean(seconds) if seconds else None,
            "runs_found": len(found),
            "runs_expected": len(group),
        }
        rows.append(row)
    return rows


# --- rendering --------------------------------------------------------------------------------------------------


def cell_text(values: list[float], expected: int) -> str:
    if not values:
        return "missing"
    mean, std = mean_std(values)
    text = f"{100 * mean:.2f} ± {100 * std:.2f}"
    return text if len(values) == expected else f"{text} ({len(values)}/{expected} seeds)"


def _rank(row: dict[str, Any]) -> str:
    if row["median_rank"] is None:
        if row.get("method") in VIRTUAL_TOKEN_METHODS:
            return "n/a"  # Prompt Tuning, P-Tuning: no adapted weight, no dW
        full = row.get("method") in METHODS and trains_every_weight(row["method"]) and row["runs_found"]
        return "full FT" if full else "—"
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
        cells |= row.get("shown") or {}  # cells a table adds after its keys, e.g. a tuned table's chosen setting
        cells |= {c.label: cell_text(row[c.label], row["expected"][c.label]) for c in columns}
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
        line = {key: row[key] for key in keys} | (row.get("shown") or {})
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
    envs = sorted({_environment_text(r.get("environment") or {}) for r in records})
    dates = sorted(_date(r)[:10] or "undated" for r in records)
    return f"Rendered from {len(records)} run records ({dates[0]} to {dates[-1]}): {'; '.join(envs)}."


def _environment_text(environment: dict[str, Any]) -> str:
    versions = environment.get("versions") if isinstance(environment.get("versions"), dict) else {}
    return (
        f"{environment.get('device') or 'unknown device'}, torch {versions.get('torch') or 'unknown'}, "
        f"peft {versions.get('peft') or 'unknown'}"
    )


def missing_note(rows: list[dict[str, Any]]) -> list[str]:
    missing = sum(row["runs_expected"] - row["runs_found"] for row in rows)
    expected = sum(row["runs_expected"] for row in rows)
    notes = [f"{missing} of {expected} runs have no complete record yet."] if missing else []
    if lacking := sorted(set().union(*(row.get("lacking", ()) for row in rows))):  # never a silent "missing"
        notes.append(f"{HOLLOW} {', '.join(lacking)}: those cells read missing although their runs finished.")
    return notes


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


class TableError(ValueError):
    """A table that cannot be rendered as asked (one sentence, exit 2)."""


IGNORED_KEYS = {"seed", "run_name", "output_dir", "skip_complete", "skip_failed", "device"}


def setting_labels(records: list[dict[str, Any]]) -> dict[str, str]:
    """For records of one (model, task, method) made with different settings: per settings id, the config values
    that tell them apart (``lr=0.0004``), or the data fingerprint where only the data differs."""
    by_settings = {settings_of(r): r for r in records}
    contents = {sid: [r.get("data_fingerprint"), r.get("model_fingerprint")] for sid, r in by_settings.items()}
    flats = {
        sid: flat_settings(r.get("config") or {}) | {"data": short_hash(json.dumps(contents[sid], sort_keys=True))}
        for sid, r in by_settings.items()
    }
    keys = sorted({k for flat in flats.values() for k in flat} - IGNORED_KEYS)
    differing = [k for k in keys if len({repr(flat.get(k)) for flat in flats.values()}) > 1]
    differing = [k for k in differing if not k.startswith(("logger.", "train.checkpoint", "method.tune."))]
    labels = {sid: ", ".join(f"{k.split('.')[-1]}={flat.get(k)}" for k in differing[:3]) for sid, flat in flats.items()}
    # Settings that differ only beyond the keys shown must still never share a row: their ids tell them apart.
    shared = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    return {
        sid: (f"{label}, settings {sid}" if label else f"settings {sid}").removeprefix(", ")
        if label in shared
        else label
        for sid, label in labels.items()
    }


def _metric_choice(records: list[dict[str, Any]], metric: str | None, folder: Path) -> str:
    available = sorted({k for r in records for k in r["final_metrics"]})
    if metric is not None:
        if metric not in available:
            raise TableError(
                f"No record under {folder} has the metric {metric!r}; choose one of: {', '.join(available)}."
            )
        return metric
    # A task whose metrics follow its data (custom/classification) records the main metric it used.
    mains = {config_value(r, "task.main_metric") or r.get("main_metric") for r in records}
    if len(mains) == 1 and None not in mains and f"test_{next(iter(mains))}" in available:
        return f"test_{next(iter(mains))}"
    raise TableError(
        f"The records under {folder} have no single main metric (several task families or tasks); pass --metric "
        f"(or --task) with one of: {', '.join(available)}."
    )


def write_table(
    folder: Path,
    out: Path,
    title: str,
    metric: str | None = None,
    task: str | None = None,
    label_by: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """One row per (model, task, method [and ``label_by`` settings]) of the complete records in ``folder``; records
    of one method made with other settings get rows of their own, labelled with what differs."""
    found = read_records(folder)
    records = [r for r in found.records if task is None or r["task"] == task]
    if not records:
        raise TableError(f"No complete run records under {folder}" + (f" for task {task}." if task else "."))
    metric = _metric_choice(records, metric, folder)
    keys = ["model", "task", "method"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["model"], record["task"], method_label(record, label_by)), []).append(record)
    runs = []
    for (model, task_name, label), members in groups.items():
        apart = setting_labels(members) if len({settings_of(r) for r in members}) > 1 else {}
        for r in members:
            method = f"{label} [{apart[settings_of(r)]}]" if apart else label
            runs.append({"model": model, "task": task_name, "method": method, "seed": r["seed"], "record": r})
    runs.sort(key=lambda run: tuple(run[k] for k in keys))
    columns = [Column(label=metric, metric=metric)]
    rows = summarise(run_frame(runs, columns), keys, columns)
    notes = found.notes()
    as_test = {
        r["task"]: r.get("test_is_validation_reason") or "test labels are hidden"
        for r in records
        if r.get("test_is_validation")
    }
    if as_test and metric.startswith("test_"):  # a reader must not take a validation figure for a test figure
        shown = ", ".join(f"{task} ({why})" for task, why in sorted(as_test.items()))
        notes.append(f"Test figures that are the validation split's: {shown}.")
    markdown, frame = render_rows(rows, keys, columns, title, records, notes=notes)
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
    try:
        write_table(args.records, args.out, args.title, args.metric, args.task, tuple(args.label_by))
    except TableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
