"""Text-classification tasks as data: every source becomes the same examples, ``{"text_a", "text_b", "label"}``.

A task's rows come from ``task.data_files`` when given (any format ``experiments.tasks.files`` reads), else from the
function named by ``task.loader`` (the hub for GLUE, the installed tweets for ``sentiment/tweets``).

What is read is checked before any model loads, and a mistake is one sentence that names the file and line: a missing
column, a blank text, a label that is not a class of the task. The split rules: a task without a validation split
carves a fixed-seed share of train when ``task.validation_share`` is set; a task without a test split reports its
validation split as the test figure, and says so (``test_is_validation`` and its reason).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from experiments.errors import DataUnavailable
from experiments.records import sources as named
from experiments.tasks.files import Rows, carve, carved_note, hub_rows, read_hub, read_local_splits, where

Example = dict[str, Any]

__all__ = ["DataUnavailable", "Example", "TaskData", "hub_splits", "load_task", "task_fingerprint"]


@dataclass
class TaskData:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    test_is_validation: bool = False
    test_is_validation_reason: str | None = None  # why the test figure is the validation split's
    num_labels: int = 2  # 1: regression
    label_map: dict[str, int] | None = None  # string labels -> class index (sorted), None for integer labels
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    main_metric: str = "accuracy"
    validation_carved: dict[str, Any] | None = None  # {"share", "seed", "rows"} when validation was carved from train
    notes: list[str] = field(default_factory=list)  # what a reader should know about the splits
    warnings: list[str] = field(default_factory=list)

    @property
    def train_size(self) -> int:
        return len(self.train)


def hub_splits(task: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Every split of a hub dataset (``task.hub_path`` / ``task.hub_name``), e.g. GLUE."""
    columns = ", ".join([*(task.get("text_fields") or ["text"]), task.get("label_field", "label")])
    dataset = read_hub(task["hub_path"], task.get("hub_name"), columns=columns)
    return {name: hub_rows(split, task["hub_path"], task.get("hub_name"), name) for name, split in dataset.items()}


hub_splits.data_fingerprint = lambda task: {
    "dataset": named.hub(task["hub_path"], task.get("hub_name"), revision=task.get("revision"))
}


def task_fingerprint(task: Mapping[str, Any]) -> dict[str, str]:
    """What ``load_task`` will read, by role: each local file of ``task.data_files`` by its content, else what the
    task's loader says it reads (its ``data_fingerprint`` attribute), for the run's identity."""
    from hydra.utils import get_method

    if task.get("data_files"):
        return {role: named.local_file(path) for role, path in sorted(task["data_files"].items())}
    loader = get_method(task["loader"])
    describe = getattr(loader, "data_fingerprint", None)
    if describe is None:  # a loader of one's own that does not say what it reads: named by the task, not its code
        return {"task": f"{task.get('suite')}/{task.get('name')} (loader without data_fingerprint)"}
    return dict(describe(task))


# ---------------------------------------------------------------------------------------------- columns and texts


def _text_fields(task: Mapping[str, Any], train: list[dict]) -> list[str]:
    """``task.text_fields``, or by default ``text``, else ``sentence1`` and ``sentence2``, when the data has them."""
    if task.get("text_fields"):
        return list(task["text_fields"])
    columns = _columns(train)
    if "text" in columns:
        return ["text"]
    if "sentence1" in columns and "sentence2" in columns:
        return ["sentence1", "sentence2"]
    raise DataUnavailable(
        f"{_source(train, 'the train split')} has no column 'text' and no columns 'sentence1' and 'sentence2' (its "
        f"columns: {', '.join(columns)}); name the text column(s) with task.text_fields=[...]."
    )


def _columns(rows: list[dict]) -> list[str]:
    return rows.columns() if isinstance(rows, Rows) else list(rows[0]) if rows else []


def _source(rows: list[dict], fallback: str) -> str:
    return rows.source if isinstance(rows, Rows) else fallback


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _examples(rows: list[dict], text_fields: list[str], label_field: str, split: str) -> list[Example]:
    """Rows -> examples; a missing column or field, or a blank text, is one sentence naming the file and line."""
    source = _source(rows, f"the {split} split")
    columns = _columns(rows)
    needed = [*text_fields, label_field]
    missing = [c for c in needed if c not in columns]
    if missing:
        hint = "task.label_field" if missing == [label_field] else "task.text_fields / task.label_field"
        named = f"column {missing[0]!r}" if len(missing) == 1 else f"columns {', '.join(map(repr, missing))}"
        raise DataUnavailable(
            f"{source} has no {named} (its columns: {', '.join(columns)}); set {hint} or rename the column."
        )
    second = text_fields[1] if len(text_fields) > 1 else None
    examples = []
    for index, row in enumerate(rows):
        absent = [c for c in needed if c not in row]
        if absent:
            raise DataUnavailable(
                f"{where(rows, index, source)} has no field {absent[0]!r}; every row needs {', '.join(needed)}."
            )
        nested = [c for c in text_fields if isinstance(row[c], (dict, list, tuple))]
        if nested:
            kind = "an object" if isinstance(row[nested[0]], dict) else "a list"
            raise DataUnavailable(
                f"{where(rows, index, source)} has {kind}, not text, in {nested[0]!r} (a nested Parquet or JSON "
                f"value); text columns take text: flatten the column, or name another with task.text_fields."
            )
        blank = [c for c in text_fields if _blank(row[c])]
        if blank:
            raise DataUnavailable(
                f"{where(rows, index, source)} has a blank {blank[0]!r}; every row needs text in "
                f"{' and '.join(map(repr, text_fields))}."
            )
        examples.append(
            {
                "text_a": str(row[text_fields[0]]),
                "text_b": str(row[second]) if second else None,
                "label": row[label_field],
                "where": where(rows, index, source),
            }
        )
    return examples


# ---------------------------------------------------------------------------------------------------- labels


_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _label_value(value: Any) -> Any:
    """One rule for every file format (a CSV cell is text, a JSON value may be a number or a string): a whole number,
    or text of one (``1``, ``"1"``, ``1.0``), is a class index; other numbers are kept as numbers, so the check names
    the value that is not a class (``0.5``); any other text is a class name."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    return value


def _strip_labels(task: Mapping[str, Any], everything: list[Example]) -> list[str]:
    """Labels with spaces around them (``" pos"``) are read without them, and a warning counts them: ``"pos"`` and
    ``" pos"`` are one class, never two."""
    padded = [e for e in everything if isinstance(e["label"], str) and e["label"] != e["label"].strip()]
    if not padded:
        return []
    first = padded[0]
    for e in padded:
        e["label"] = e["label"].strip()
    field = task.get("label_field", "label")
    return [
        f"{len(padded)} label(s) had spaces around them and were read without them (first: {first['where']}, its "
        f"{field!r}); check the file if the spaces meant something"
    ]


def _resolve_labels(
    task: Mapping[str, Any], splits: dict[str, list[Example]]
) -> tuple[int, dict[str, int] | None, list[str]]:
    """Check every label and turn it into what the model trains on: a float (regression, ``num_labels`` 1) or a
    class index. Returns the number of classes (from the data unless ``task.num_labels`` gives it), the label map
    of string labels (sorted) or None, and warnings about labels that were normalised."""
    given = task.get("num_labels")
    everything = [e for part in splits.values() for e in part]
    for e in everything:
        if e["label"] is None or (isinstance(e["label"], str) and not e["label"].strip()):
            raise DataUnavailable(f"{e['where']} has no label (its {task.get('label_field', 'label')!r} is empty).")
    warnings = _strip_labels(task, everything)
    if given == 1:  # regression: any number, written as a number or as text
        for e in everything:
            value = _label_value(e["label"])
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataUnavailable(
                    f"{e['where']} has the label {e['label']!r}; task.num_labels=1 (regression) takes numbers."
                )
            e["label"] = float(value)
        return 1, None, warnings
    for e in everything:
        e["label"] = _label_value(e["label"])
    strings = [e for e in everything if isinstance(e["label"], str)]
    numbers = [e for e in everything if not isinstance(e["label"], str)]
    if strings and numbers:
        raise DataUnavailable(
            f"{strings[0]['where']} has the label {strings[0]['label']!r}, but {numbers[0]['where']} has "
            f"{numbers[0]['label']!r}; use one kind of label, class indices from 0 or strings."
        )
    if strings:
        return (*_string_labels(task, given, strings), warnings)
    return _index_labels(task, given, splits), None, warnings


def _string_labels(task: Mapping[str, Any], given: int | None, examples: list[Example]) -> tuple[int, dict[str, int]]:
    first = examples[0]
    if not task.get("string_labels"):
        expected = f"integer class indices in [0, {given})" if given else "integer class indices"
        raise DataUnavailable(
            f"{first['where']} has the label {first['label']!r}, but task {task.get('suite')}/{task.get('name')} "
            f"takes {expected}; convert the labels, or use task=custom/classification, which maps string labels to "
            f"indices in sorted order."
        )
    names = sorted({e["label"] for e in examples})
    if given and len(names) > given:
        raise DataUnavailable(
            f"The data has {len(names)} distinct labels ({', '.join(names)}), more than task.num_labels={given}; "
            f"leave task.num_labels out to take the count from the data."
        )
    label_map = {name: index for index, name in enumerate(names)}
    for e in examples:
        e["label"] = label_map[e["label"]]
    return max(given or len(names), 2), label_map


def _index_labels(task: Mapping[str, Any], given: int | None, splits: dict[str, list[Example]]) -> int:
    """Integer labels are class indices: in [0, task.num_labels) when it is given, else from 0 up (the count is the
    largest label + 1)."""
    for split, part in splits.items():
        if given:
            bad = [e for e in part if not isinstance(e["label"], int) or not 0 <= e["label"] < given]
            if bad:
                raise DataUnavailable(
                    f"{bad[0]['where']}: {len(bad)} {split} label(s) are not integers in [0, {given}) (first: "
                    f"{bad[0]['label']!r}); task.num_labels is {given}: fix the labels or set task.num_labels."
                )
            continue
        for e in part:
            value = e["label"]
            if isinstance(value, float):
                raise DataUnavailable(
                    f"{e['where']} has the label {value!r}, which is not a class (an integer from 0, or a string); "
                    f"for regression set task.num_labels=1."
                )
            if not isinstance(value, int) or value < 0:
                raise DataUnavailable(
                    f"{e['where']} has the label {value!r}; integer labels are class indices from 0 (or use strings)."
                )
    if given:
        return given
    return max(2, 1 + max(e["label"] for part in splits.values() for e in part))


def _metrics(task: Mapping[str, Any], num_labels: int) -> tuple[list[str], str]:
    """``task.metrics``, or by default: Pearson and Spearman (regression); accuracy and macro-F1, with Matthews
    correlation where binary (classification). The main metric is the first unless ``task.main_metric`` says."""
    if task.get("metrics"):
        metrics = list(task["metrics"])
    elif num_labels == 1:
        metrics = ["pearson", "spearman"]
    else:
        metrics = ["accuracy", "macro_f1", *(["matthews"] if num_labels == 2 else [])]
    if "f1" in metrics and num_labels > 2:
        raise DataUnavailable(
            f"task.metrics has f1, the F1 of class 1 of a binary task, but the data has {num_labels} classes; use "
            f"macro_f1."
        )
    main = task.get("main_metric") or metrics[0]
    if main not in metrics:
        raise DataUnavailable(f"task.main_metric {main!r} is not among this task's metrics {metrics}.")
    return metrics, main


# ---------------------------------------------------------------------------------------------------- splits


def _class_warnings(data: TaskData) -> list[str]:
    """Classes the training set never shows (the model can hardly predict them): a warning, the run is valid."""
    if data.num_labels == 1:
        return []
    seen = {e["label"] for e in data.train}
    names = {index: name for name, index in (data.label_map or {}).items()}
    later = sorted({e["label"] for e in [*data.validation, *data.test]} - seen)
    if later and len(seen) > 1:  # a one-class training set has its own warning (families/classification.py)
        shown = ", ".join(repr(names.get(i, i)) for i in later)
        return [f"label(s) {shown} occur in the evaluated splits but never in the training set"]
    return []


def _tune_holdout(
    task: Mapping[str, Any], rows: list[dict], train: list[Example], test: list[Example], notes: list[str]
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """A tuning trial's splits: ``task.tune_holdout`` of what train keeps becomes the validation split that chooses;
    the test figure stays the split the task reports (GLUE: its validation split), so it never steers the choice."""
    share, split_seed = float(task["tune_holdout"]), int(task.get("split_seed") or 0)
    if len(train) < 2:
        raise DataUnavailable(
            f"{_source(rows, 'The train split')} has {len(train)} row(s), too few to hold out a tuning split from."
        )
    total = len(train)
    train, holdout = carve(train, share, split_seed)
    notes.append(
        f"validation: {len(holdout)} of the {total} train rows, held out with task.tune_holdout={share:g} and "
        f"task.split_seed={split_seed} for tuning; the reported test split ({len(test)} rows) never chooses"
    )
    return train, holdout, {"share": share, "seed": split_seed, "rows": len(holdout), "of": total, "tuning": True}


def _validation_split(
    task: Mapping[str, Any], rows: dict[str, list[dict]], splits: dict[str, list[Example]], validation_name: str
) -> tuple[list[Example], list[Example], dict[str, Any] | None, list[str]]:
    """(train, validation, how validation was carved or None, notes): the task's validation split, else a
    fixed-seed ``task.validation_share`` of train."""
    notes: list[str] = []
    train = splits["train"]
    validation = splits.get(validation_name)
    carved = None
    if validation is None:
        share, split_seed = task.get("validation_share"), int(task.get("split_seed") or 0)
        if not share:
            raise DataUnavailable(
                f"Task {task['name']} has no {validation_name!r} split; name one in task.data_files, or carve one "
                f"from train with ++task.validation_share=0.1."
            )
        if len(train) < 2:
            raise DataUnavailable(
                f"{_source(rows['train'], 'The train split')} has {len(train)} row(s), too few to carve a validation "
                f"split from; give a validation file."
            )
        total = len(train)
        train, validation = carve(train, float(share), split_seed)
        carved = {"share": float(share), "seed": split_seed, "rows": len(validation), "of": total}
        notes.append(carved_note(len(validation), total, float(share), split_seed))
    return train, validation, carved, notes


def load_task(task: Mapping[str, Any], seed: int = 0) -> TaskData:
    """Load a task from its config (``conf/task/...``): local ``data_files`` when given, else its default source.

    Every row is checked here, before any model loads (columns, texts, labels), and the split rules applied: a
    missing validation split is carved from train when ``task.validation_share`` is set, and a missing test split
    means the validation split is reported as the test figure (``test_is_validation``, with the reason)."""
    from hydra.utils import get_method

    data_files: Mapping[str, str] | None = task.get("data_files")
    rows = read_local_splits(data_files) if data_files else get_method(task["loader"])(task)
    if "train" not in rows:
        raise DataUnavailable(f"Task {task['name']} has no 'train' split; task.data_files must name one.")
    validation_name = task.get("validation_split") or "validation"
    test_name = task.get("test_split")
    # Only the splits the task uses are checked: GLUE's hub test split has no labels (-1) and is never read.
    rows = {name: part for name, part in rows.items() if name in ("train", validation_name, test_name)}
    text_fields = _text_fields(task, rows["train"])
    label_field = task.get("label_field", "label")
    splits = {name: _examples(part, text_fields, label_field, name) for name, part in rows.items()}
    num_labels, label_map, label_warnings = _resolve_labels(task, splits)
    metrics, main_metric = _metrics(task, num_labels)

    train, validation, carved, notes = _validation_split(task, rows, splits, validation_name)
    if test_name and test_name in splits:
        test, reason = splits[test_name], None
    else:
        test = validation
        reason = (
            "no test split was given"
            if test_name
            else "task.test_split is null, as for GLUE, whose test labels are hidden"
        )
    if task.get("tune_holdout"):
        train, validation, carved = _tune_holdout(task, rows["train"], train, test, notes)
    data = TaskData(
        train=train,
        validation=validation,
        test=test,
        test_is_validation=test is validation,
        test_is_validation_reason=reason if test is validation else None,
        num_labels=num_labels,
        label_map=label_map,
        metrics=metrics,
        main_metric=main_metric,
        validation_carved=carved,
        notes=notes,
    )
    data.warnings = [*label_warnings, *_class_warnings(data)]
    return data
