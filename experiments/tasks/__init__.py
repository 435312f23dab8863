"""Text-classification tasks as data: every source becomes the same examples, ``{"text_a", "text_b", "label"}``.

A task's rows come from ``task.data_files`` when given (any format ``experiments.datafiles`` reads), else from the
function named by ``task.loader`` (the hub for GLUE, the installed tweets for ``sentiment/tweets``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datafiles import read_hub, read_local_splits
from ..errors import DataUnavailable

Example = dict[str, Any]

__all__ = ["DataUnavailable", "Example", "TaskData", "hub_splits", "load_task", "task_sources"]


@dataclass
class TaskData:
    train: list[Example]
    validation: list[Example]
    test: list[Example]

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def test_is_validation(self) -> bool:
        return self.test is self.validation


def _rows_to_examples(rows, text_fields: list[str], label_field: str, split: str) -> list[Example]:
    second = text_fields[1] if len(text_fields) > 1 else None
    if rows:
        missing = [c for c in [*text_fields, label_field] if c not in rows[0]]
        if missing:
            raise DataUnavailable(
                f"The {split} rows have no column(s) {missing} (they have {sorted(rows[0])}); set task.text_fields / "
                f"task.label_field or rename the columns."
            )
    return [
        {"text_a": row[text_fields[0]], "text_b": row[second] if second else None, "label": _label(row[label_field])}
        for row in rows
    ]


def _label(value: Any) -> Any:
    # A CSV column of 0/1 with one 0.5 in it is read as floats: keep whole numbers as class indices, so the check
    # below names the value that is wrong (0.5), not every label.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def hub_splits(task: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Every split of a hub dataset (``task.hub_path`` / ``task.hub_name``), e.g. GLUE."""
    columns = ", ".join([*task["text_fields"], task.get("label_field", "label")])
    dataset = read_hub(task["hub_path"], task.get("hub_name"), columns=columns)
    return {name: list(split) for name, split in dataset.items()}


hub_splits.data_sources = lambda task: [f"hub:{task['hub_path']}/{task.get('hub_name') or 'default'}"]


def task_sources(task: Mapping[str, Any]) -> list[str | Path]:
    """What ``load_task`` will read: the local files, else what the task's loader says it reads (its
    ``data_sources`` attribute), for the run's data fingerprint."""
    from hydra.utils import get_method

    if task.get("data_files"):
        return [Path(path) for path in task["data_files"].values()]
    loader = get_method(task["loader"])
    sources = getattr(loader, "data_sources", None)
    return list(sources(task)) if sources else [f"loader:{task['loader']}"]


def _check_labels(task: Mapping[str, Any], split: str, examples: list[Example]) -> None:
    """Class labels must be integers in [0, num_labels): anything else would train or score silently wrong."""
    classes = int(task["num_labels"])
    if classes == 1:  # regression: any number
        return
    bad = [e["label"] for e in examples if not isinstance(e["label"], int) or not 0 <= e["label"] < classes]
    if bad:
        raise DataUnavailable(
            f"{len(bad)} {split} label(s) are not integers in [0, {classes}) (first: {bad[0]!r}); task.num_labels is "
            f"{classes}: fix the labels or set task.num_labels."
        )


def load_task(task: Mapping[str, Any], seed: int = 0) -> TaskData:
    """Load a task from its config (``conf/task/...``): local ``data_files`` when given, else its default source."""
    from hydra.utils import get_method

    data_files: Mapping[str, str] | None = task.get("data_files")
    rows = read_local_splits(data_files) if data_files else get_method(task["loader"])(task)
    label_field = task.get("label_field", "label")
    splits = {
        name: _rows_to_examples(part, list(task["text_fields"]), label_field, name) for name, part in rows.items()
    }
    if "train" not in splits:
        raise DataUnavailable(f"Task {task['name']} has no 'train' split; task.data_files must name one.")
    validation_name = task.get("validation_split") or "validation"
    validation = splits.get(validation_name)
    if validation is None:
        raise DataUnavailable(
            f"Task {task['name']} has no {validation_name!r} split; task.data_files must name '{validation_name}'."
        )
    # GLUE hides its test labels: like the PEFT literature, report the validation split as the test figure.
    test_name = task.get("test_split")
    if test_name and test_name not in splits:
        raise DataUnavailable(f"Task {task['name']} has no {test_name!r} split; task.data_files must name it.")
    test = splits[test_name] if test_name else validation
    data = TaskData(train=splits["train"], validation=validation, test=test)
    for name, part in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        _check_labels(task, name, part)
    return data
