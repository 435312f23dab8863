"""Rows from local files or the hub: the one loader every task family uses.

Local files may be CSV, TSV, JSON (a list of objects, or one object per line), JSONL or Parquet. They are parsed here,
not by ``datasets``, so that a bad file is one sentence naming the file, the line and what was expected (a
``datasets`` cast error is sixty lines about Arrow), and every row knows where it came from (:class:`Rows`). CSV and
TSV cells stay text exactly as written (``00017`` stays ``00017``, ``TRUE`` stays ``TRUE``); an empty cell is None.
Where a task needs a number (a class index, a regression target, a math answer, a choice index) it reads the text by
one rule for every format (``classification.py``, ``decoder/custom.py``). A nested Parquet or JSON value in a text
column is refused where it is read, never trained on as its Python repr. Hub datasets need the network once; where it
is missing the error says how to point the task at local files instead.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from experiments.errors import DataUnavailable

Row = dict[str, Any]
SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")  # the local file formats every task reads
csv.field_size_limit(2**31 - 1)  # a long document is one cell, not an error (the default limit is 128 KiB)


class Rows(list):
    """The rows of one source in order, each of which can say where it is: ``train.csv line 7`` (CSV, TSV, JSONL),
    ``items.json item 3`` (a JSON list), ``data.parquet row 5``, or a row of a hub split."""

    def __init__(self, rows: Iterable[Row], source: str, lines: list[int] | None = None, unit: str = "row") -> None:
        super().__init__(rows)
        self.source = source
        self.lines = lines
        self.unit = unit

    def where(self, index: int) -> str:
        number = self.lines[index] if self.lines is not None else index + 1
        return f"{self.source} {self.unit} {number}"

    def columns(self) -> list[str]:
        """Every field name that some row has, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self:
            seen.update(dict.fromkeys(row))
        return list(seen)


def where(rows: list[Row], index: int, source: str) -> str:
    """Where row ``index`` of ``rows`` is: its line when ``rows`` came from a local file, else its number."""
    return rows.where(index) if isinstance(rows, Rows) else f"{source} row {index + 1}"


def read_local(path: str | Path) -> Rows:
    """Every row of one local file, in file order; a file that is not what its suffix says is one sentence."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataUnavailable(f"{path} must be a CSV, TSV, JSON, JSONL or Parquet file.")
    if path.is_dir():
        raise DataUnavailable(f"The data file {path} is a folder; name a file in it (task.data_files takes files).")
    if not path.is_file():
        raise DataUnavailable(f"The data file {path} does not exist.")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = _utf8(path)
    if not text.strip():
        expected = "a header line and rows" if suffix in (".csv", ".tsv") else "JSON objects"
        raise DataUnavailable(f"{path} is empty; expected {expected}.")
    if suffix in (".csv", ".tsv"):
        return _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _read_json_lines(path, text)
    return _read_json(path, text)


def read_local_splits(data_files: Mapping[str, str]) -> dict[str, Rows]:
    """``{split: rows}`` for a ``task.data_files`` mapping."""
    return {split: read_local(path) for split, path in data_files.items()}


def carve(examples: list[Any], share: float, seed: int) -> tuple[list[Any], list[Any]]:
    """``(kept, held_out)``: a fixed-seed ``share`` of ``examples`` held out (at least one, and at least one kept),
    both in their original order. The seed is the task's ``split_seed``, not the run's: every seed of a sweep sees
    the same split."""
    count = min(max(round(share * len(examples)), 1), len(examples) - 1)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def carved_note(rows: int, total: int, share: float, seed: int, what: str = "validation") -> str:
    """The line the summary and the record give a carved split."""
    return (
        f"{what}: {rows} of the {total} train rows, carved with task.validation_share={share:g} and "
        f"task.split_seed={seed} (no validation split was given); train keeps the other {total - rows}"
    )


def _utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Excel's UTF-8 CSV) is not part of the first column name
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataUnavailable(
            f"{path} is not UTF-8 text: line {line} has the byte 0x{data[err.start]:02x}; save the file as UTF-8."
        ) from None


def _read_delimited(path: Path, text: str, delimiter: str) -> Rows:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    name, kind = ("tab", "TSV") if delimiter == "\t" else ("comma", "CSV")
    try:
        header, header_line = next((row, reader.line_num) for row in reader if row)
        header = [column.strip() for column in header]
        duplicated = sorted({c for c in header if header.count(c) > 1})
        if duplicated or "" in header:
            problem = f"the column name(s) {duplicated} more than once" if duplicated else "an empty column name"
            raise DataUnavailable(f"{path} line {header_line} (the header) has {problem}; name every column once.")
        records, lines, last = [], [], reader.line_num
        for row in reader:
            start, last = last + 1, reader.line_num  # a quoted cell may span lines: name the line the row starts on
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines are no rows (as pandas reads them)
            if len(row) != len(header):
                raise DataUnavailable(
                    f"{path} line {start} has {len(row)} field(s), but the header (line {header_line}) has "
                    f"{len(header)} ({', '.join(header)}); quote cells that contain a {name}."
                )
            records.append(row)
            lines.append(start)
    except csv.Error as err:
        raise DataUnavailable(f"Cannot read {path} as {kind}: line {reader.line_num}, {err}.") from None
    if not records:
        raise DataUnavailable(f"{path} has a header line ({', '.join(header)}) but no rows.")
    rows = [{name: cell if cell.strip() else None for name, cell in zip(header, row)} for row in records]
    return Rows(rows, str(path), lines, "line")


def _object_rows(path: Path, items: list[Any], lines: list[int] | None, unit: str) -> Rows:
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            number = lines[index] if lines else index + 1
            raise DataUnavailable(
                f"{path} {unit} {number} is a JSON {_json_type(item)}, not an object; expected one object per "
                f"{'line' if unit == 'line' else 'item'} with the task's fields."
            )
    if not items:
        raise DataUnavailable(f"{path} has no rows; expected JSON objects with the task's fields.")
    return Rows(items, str(path), lines, unit)


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def _read_json_lines(path: Path, text: str) -> Rows:
    items, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataUnavailable(
                f"{path} line {number} is not valid JSON ({err.msg} at column {err.colno}); expected one JSON object "
                f"per line."
            ) from None
        lines.append(number)
    return _object_rows(path, items, lines, "line")


def _read_json(path: Path, text: str) -> Rows:
    """A ``.json`` file: a list of objects, or JSON Lines under a .json name (as ``datasets`` reads both)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several values: JSON Lines
            return _read_json_lines(path, text)
        raise DataUnavailable(
            f"{path} line {err.lineno} is not valid JSON ({err.msg} at column {err.colno}); expected a list of "
            f"objects or one object per line."
        ) from None
    if isinstance(value, dict):
        return _object_rows(path, [value], [1], "line")  # one object: one row
    if not isinstance(value, list):
        raise DataUnavailable(f"{path} holds a JSON {_json_type(value)}; expected a list of objects.")
    return _object_rows(path, value, None, "item")


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # not Parquet, truncated, unsupported: name the file with the reader's first line
        raise DataUnavailable(f"Cannot read {path} as Parquet: {_first_line(err)}.") from None
    if not rows:
        raise DataUnavailable(f"{path} has no rows.")
    return Rows(rows, str(path), None, "row")


def _first_line(err: BaseException) -> str:
    """The innermost cause's first line, without a final full stop: the words that say what went wrong."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first.rstrip(".")[:300]


def hub_rows(dataset: Any, path: str, name: str | None, split: str) -> Rows:
    """A hub split as :class:`Rows` (rows are named by number: ``nyu-mll/glue (sst2) train split row 12``)."""
    return Rows(dataset, f"{path}{f' ({name})' if name else ''} {split} split", None, "row")


def read_hub(path: str, name: str | None = None, split: str | None = None, columns: str = "") -> Any:
    """A hub dataset (all splits, or one); where it cannot be reached, one sentence on how to use local files that
    keeps the original cause."""
    import datasets

    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as err:  # offline, unknown dataset, auth: all end the same way for the user
        where = f"{path}" + (f" ({name})" if name else "") + (f", split {split}" if split else "")
        schema = f" with columns {columns}" if columns else " in the same schema"
        raise DataUnavailable(
            f"Cannot load {where} from the hub ({type(err).__name__}: {_first_line(err)}); connect once to cache it, "
            f"or point at local files{schema} with task.data_files={{train: ..., ...}}."
        ) from None
