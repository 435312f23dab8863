"""Rows from local files or the hub: the one loader every task family uses.

Local files may be CSV, TSV, JSON, JSONL or Parquet (read with ``datasets``, offline). Hub datasets need the network
once; where it is missing the error says how to point the task at local files instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import DataUnavailable

Row = dict[str, Any]
BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def read_local(path: str | Path) -> list[Row]:
    """Every row of one local file, in file order."""
    import datasets

    path = Path(path)
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataUnavailable(f"{path} must be a CSV, TSV, JSON, JSONL or Parquet file.")
    if not path.is_file():
        raise DataUnavailable(f"The data file {path} does not exist.")
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        table = datasets.load_dataset(builder, data_files={"rows": str(path)}, split="rows", **options)
    except Exception as err:  # a malformed file: name it, with the parser's own words (the innermost cause)
        while err.__cause__ is not None or err.__context__ is not None:
            err = err.__cause__ or err.__context__
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataUnavailable(f"Cannot read {path} as {builder.upper()}: {first.rstrip('.')}.") from None
    return list(table)


def read_local_splits(data_files: Mapping[str, str]) -> dict[str, list[Row]]:
    """``{split: rows}`` for a ``task.data_files`` mapping."""
    return {split: read_local(path) for split, path in data_files.items()}


def read_hub(path: str, name: str | None = None, split: str | None = None, columns: str = "") -> Any:
    """A hub dataset (all splits, or one); where it cannot be reached, one sentence on how to use local files."""
    import datasets

    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as err:  # offline, unknown dataset, auth: all end the same way for the user
        where = f"{path}" + (f" ({name})" if name else "") + (f", split {split}" if split else "")
        schema = f" with columns {columns}" if columns else " in the same schema"
        raise DataUnavailable(
            f"Cannot load {where} from the hub ({type(err).__name__}); connect once to cache it, or point at local "
            f"files{schema} with task.data_files={{train: ..., ...}}."
        ) from None
