"""Reading a decoder task: every part its plan names (``plan.py``), converted to items, with the split rules: a custom
task's carved evaluation split, a tuning trial's held-out share, the validation items ``task.validation_size`` carves
from the training data (the paper's 120 Commonsense170K examples that choose the checkpoint), GSM8K's offline
stand-in. Files in LLM-Adapters' schema (instruction, input, output, answer) are read as such wherever a choice task's
file is expected (``llm_adapters.py``)."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from experiments.errors import DataUnavailable
from experiments.tasks.decoder import llm_adapters, llm_adapters_math, offline
from experiments.tasks.decoder.custom import custom_fields
from experiments.tasks.decoder.plan import Part, github_file, hub_split, plan_parts
from experiments.tasks.decoder.prompts import mc_target
from experiments.tasks.decoder.rows import item_kind
from experiments.tasks.decoder.sources import Item, Source, convert_rows, source
from experiments.tasks.files import Rows, carve, carved_note, read_local


@dataclass
class DecoderData:
    train: list[Item]  # {"prompt", "target"}
    evaluation: dict[str, list[Item]]  # per evaluated task: what the test figures are computed on
    kinds: dict[str, str]  # per evaluated task: "choice" | "math"
    provenance: dict[str, str]  # where each part came from, for the record
    # Items that choose a checkpoint, never reported as test: a custom task's validation file beside its test file, a
    # tuning trial's held-out share, or the items task.validation_size carves from the training data
    validation: dict[str, list[Item]] = field(default_factory=dict)
    test_is_validation: bool = False
    test_is_validation_reason: str | None = None
    validation_carved: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # what a reader should know about the splits

    @property
    def train_size(self) -> int:
        return len(self.train)


def training_example(item: Item) -> Item:
    if "answers" in item:
        return {"prompt": item["prompt"], "target": mc_target(item["answers"][item["label"]])}
    return {"prompt": item["prompt"], "target": item["solution"]}


def _bigbench_split(src: Source, seed: int, eval_fraction: float) -> tuple[list[Mapping], list[Mapping]]:
    examples = offline.bigbench_task(src.bigbench)["examples"]
    key = src.group or (lambda e: e["input"])
    groups = sorted({key(e) for e in examples})
    random.Random(seed).shuffle(groups)
    held_out = set(groups[: round(eval_fraction * len(groups))])
    train = [e for e in examples if key(e) not in held_out]
    test = [e for e in examples if key(e) in held_out]
    return train, test


def _with_ids(name: str, items: list[Item]) -> list[Item]:
    return [{"id": f"{name}-{i}", "task": name, **item} for i, item in enumerate(items)]


class _Reader:
    """Reads the parts of one task; a BIG-bench task or a stand-in is split once and both halves kept."""

    def __init__(self, task: Mapping[str, Any]) -> None:
        self.task = task
        self.split_seed = task.get("split_seed", 0)
        self.halves: dict[str, tuple[list[Mapping], list[Mapping]]] = {}

    def _halves(self, src: Source, make) -> tuple[list[Mapping], list[Mapping]]:
        if src.name not in self.halves:
            self.halves[src.name] = make()
        return self.halves[src.name]

    def read(self, part: Part) -> tuple[list[Mapping], str]:
        """The rows of ``part`` and where they came from (for the record's provenance and error messages)."""
        src = source(part.source)
        half = 0 if part.split == "train" else 1
        if part.origin == "local":
            return read_local(part.path), f"local file {part.path}"
        if part.origin == "bigbench":
            fraction = self.task.get("bigbench_eval_fraction", 0.2)
            rows = self._halves(src, lambda: _bigbench_split(src, self.split_seed, fraction))[half]
            which = "train part" if half == 0 else "held-out part"
            return rows, f"BIG-bench {offline.BIGBENCH_VERSION} {src.bigbench}, {which}"
        if part.origin == "stand-in":
            train, held = self._halves(src, lambda: src.offline_stand_in(self.split_seed))
            if half == 0:
                why = "the hub's train split is unreachable" if src.hub_path else f"from {src.offline_package}"
                where = (
                    f"OFFLINE STAND-IN: {len(train)} {src.name} items ({why}); evaluation uses the other {len(held)}"
                )
                warnings.warn(f"{src.name} train: {where}", stacklevel=1)
                return train, where
            return held, f"OFFLINE STAND-IN: held-out {src.name} {src.eval_split or ''} items".replace("  ", " ")
        if part.origin == "installed":
            return src.offline_eval(), f"{src.name} {src.eval_split} (installed package {src.offline_package})"
        if part.origin == "github":
            file, key = github_file(src.name, half == 0)
            path = llm_adapters.local_copy(file, key)
            return read_local(path), f"LLM-Adapters {part.path} at commit {llm_adapters.COMMIT[:12]} ({path})"
        at = f" at revision {part.revision}" if part.revision else ""
        return list(hub_split(src, part.split, revision=part.revision)), f"hub {src.hub_path} {part.split}{at}"


def _converter(src: Source, rows: list[Mapping]) -> Callable[[Mapping], Item] | None:
    """LLM-Adapters' commonsense row converter where a choice task's file is in LLM-Adapters' schema; else the
    source's own (AQuA's own converter reads LLM-Adapters' rows itself)."""
    if src.kind == "choice" and src.name not in llm_adapters_math.TEST_FILES and llm_adapters.is_llm_adapters(rows):
        return partial(llm_adapters.choice_row, task_words=llm_adapters.TASK_WORDS.get(src.name))
    return None


@dataclass
class _TrainPart:
    """One training part as read: its rows, where they came from and how a row becomes an item."""

    role: str
    src: Source
    rows: list[Mapping]
    where: str
    convert: Callable[[Mapping], Item] | None


def load_decoder_task(task: Mapping[str, Any], seed: int = 0) -> DecoderData:
    """Training examples and evaluation items for a ``conf/task/{commonsense,math,custom}/*`` entry."""
    parts = plan_parts(task)
    if source(parts[0].source).custom:
        return _load_custom(task, source(parts[0].source), {p.role: p.path for p in parts})
    if task.get("validation_size") and task.get("tune_holdout"):
        raise DataUnavailable(
            "task.validation_size and task.tune_holdout both hold training items out to choose a checkpoint; set one."
        )
    reader = _Reader(task)
    eval_names = list(task["evaluate_on"])
    provenance: dict[str, str] = {}
    evaluation: dict[str, list[Item]] = {}
    pool: list[_TrainPart] = []
    for part in parts:
        src = source(part.source)
        rows, where = reader.read(part)
        convert = _converter(src, rows)
        where += " (LLM-Adapters' schema)" if convert else ""
        provenance[part.role] = where
        if part.role.startswith("eval/"):
            evaluation[src.name] = _with_ids(src.name, convert_rows(src, rows, where, convert))
        else:
            pool.append(_TrainPart(part.role, src, rows, where, convert))
    notes: list[str] = []
    if task.get("validation_size"):
        train_rows, validation, carved = carve_validation(task, pool, provenance, notes)
    else:
        (train_rows, validation), carved = _train_items(task, pool, provenance, notes), None
    kinds = {n: source(n).kind for n in eval_names}
    # A carved validation set is scored as its items say (a dialogue's carved turns by the text metrics, not as math).
    kinds |= {n: item_kind(items[0]) for n, items in validation.items() if items}
    return DecoderData(
        train_rows, evaluation, kinds, provenance, validation=validation, validation_carved=carved, notes=notes
    )


def _train_items(
    task: Mapping[str, Any], pool: list[_TrainPart], provenance: dict[str, str], notes: list[str]
) -> tuple[list[Item], dict[str, list[Item]]]:
    """Every training part as training examples; a tuning trial (``task.tune_holdout``) holds a share of each
    evaluated task's training items out as its validation items."""
    train: list[Item] = []
    validation: dict[str, list[Item]] = {}
    for part in pool:
        name = part.src.name
        items = convert_rows(part.src, part.rows, part.where, part.convert)
        if task.get("tune_holdout") and name in task["evaluate_on"]:
            items, held = tune_holdout(task, name, items, part.where, provenance, notes)
            validation[name] = _with_ids(name, held)
        train += [training_example(item) for item in items]
    return train, validation


def carve_validation(
    task: Mapping[str, Any], pool: list[_TrainPart], provenance: dict[str, str], notes: list[str]
) -> tuple[list[Item], dict[str, list[Item]], dict[str, Any]]:
    """``task.validation_size`` rows drawn from all training rows together with ``task.split_seed`` (a uniform draw,
    as the paper's 120 from Commonsense170K), removed from training and kept as validation items, per training
    source, scored like test items against their answers."""
    size, split_seed = int(task["validation_size"]), int(task.get("split_seed") or 0)
    for part in pool:
        if part.src.kind == "instruct" and part.src.scored is None:
            raise DataUnavailable(
                f"task.validation_size scores its items against their answers, but {part.src.name} rows "
                f"({part.src.schema}) carry no answer word to score; use train.keep_best=loss on a task whose rows do."
            )
    total = sum(len(part.rows) for part in pool)
    if size >= total:
        raise DataUnavailable(
            f"task.validation_size={size} would carve all {total} training rows, leaving none to train on; set it "
            f"below {total}."
        )
    order = list(range(total))
    random.Random(split_seed).shuffle(order)  # the split seed, not the run's: every seed of a sweep sees one split
    held, offset = set(order[:size]), 0
    train: list[Item] = []
    validation: dict[str, list[Item]] = {}
    for part in pool:
        chosen = [i for i in range(len(part.rows)) if i + offset in held]
        kept = [i for i in range(len(part.rows)) if i + offset not in held]
        offset += len(part.rows)
        items = convert_rows(part.src, _subset(part.rows, kept, part.where), part.where, part.convert)
        train += [training_example(item) for item in items]
        if chosen:
            convert = part.src.scored if part.src.kind == "instruct" else part.convert
            rows = _subset(part.rows, chosen, part.where)
            validation.update(_by_kind(part.src.name, convert_rows(part.src, rows, part.where, convert)))
            provenance[part.role] += f", less the {len(chosen)} validation items"
            provenance[f"validation/{part.src.name}"] = (
                f"{len(chosen)} items carved from {part.where} (task.validation_size={size}, "
                f"task.split_seed={split_seed})"
            )
    counts = ", ".join(f"{name}: {len(items)}" for name, items in validation.items())
    notes.append(
        f"validation: {size} of the {total} training items ({counts}), carved with task.validation_size={size} and "
        f"task.split_seed={split_seed} and removed from training; they, never the test items, choose a checkpoint"
    )
    return train, validation, {"size": size, "seed": split_seed, "rows": size, "of": total}


def _by_kind(name: str, items: list[Item]) -> dict[str, list[Item]]:
    """Carved items under their source's name; a mixture whose rows are scored two ways (Math10K: AQuA's letters and
    numbers) gives two groups, ``<name>_choice`` and ``<name>_math``, each scored as its kind is."""
    choice = [item for item in items if "answers" in item]
    if len(choice) in (0, len(items)):
        return {name: _with_ids(name, items)}
    math = [item for item in items if "answers" not in item]
    return {f"{name}_choice": _with_ids(f"{name}_choice", choice), f"{name}_math": _with_ids(f"{name}_math", math)}


def _subset(rows: list[Mapping], indices: list[int], where_from: str) -> Rows:
    """The rows at ``indices``, each still able to say where it is in its file (or hub split)."""
    if isinstance(rows, Rows):
        lines = [rows.lines[i] if rows.lines is not None else i + 1 for i in indices]
        return Rows([rows[i] for i in indices], rows.source, lines, rows.unit)
    return Rows([rows[i] for i in indices], where_from, [i + 1 for i in indices])


def tune_holdout(
    task: Mapping[str, Any], name: str, items: list[Item], where: str, provenance: dict[str, str], notes: list[str]
) -> tuple[list[Item], list[Item]]:
    """A tuning trial's validation items: ``task.tune_holdout`` of what ``name`` trains on, held out of training;
    the evaluated (test) items stay what the task reports, so they never steer the choice."""
    share, split_seed = float(task["tune_holdout"]), int(task.get("split_seed") or 0)
    if len(items) < 2:
        raise DataUnavailable(f"{where} has {len(items)} item(s), too few to hold out a tuning split from.")
    kept, held = carve(items, share, split_seed)
    provenance[f"validation/{name}"] = f"{len(held)} items held out of {where} for tuning (task.tune_holdout={share:g})"
    notes.append(
        f"validation ({name}): {len(held)} of the {len(items)} training items, held out with task.tune_holdout="
        f"{share:g} and task.split_seed={split_seed} for tuning; the reported test items never choose"
    )
    return kept, held


def _load_custom(task: Mapping[str, Any], src: Source, files: Mapping[str, str]) -> DecoderData:
    """A user's own items (``task=custom/choice`` or ``custom/math``) under the split rules of every custom task: the
    test file is evaluated when given, else the validation file, else a fixed-seed share of train carved off; the
    test figures of a run without a test file are the validation split's, and the record says so."""
    if task.get("validation_size"):
        raise DataUnavailable(
            f"Task {task['name']} reads your own files: give a validation file, or carve a share of train with "
            f"task.validation_share, instead of task.validation_size."
        )
    name, convert = src.name, partial(src.convert, fields=custom_fields(task))
    if src.name == "custom_choice":
        convert = partial(convert, answer_format=task.get("answer_format") or "auto")
    parts = {split: convert_rows(src, read_local(path), path, convert) for split, path in files.items()}
    train, validation, test = parts["train"], parts.get("validation"), parts.get("test")
    provenance = {f"train/{name}": f"local file {files['train']}"}
    notes: list[str] = []
    carved = None
    if validation is None and test is None:  # decoders evaluate one split: carve only when there is none
        if len(train) < 2:
            raise DataUnavailable(
                f"{files['train']} has {len(train)} item(s), too few to carve an evaluation split from; give a "
                f"validation or test file."
            )
        share, split_seed = float(task.get("validation_share") or 0.1), int(task.get("split_seed") or 0)
        total = len(train)
        train, validation = carve(train, share, split_seed)
        carved = {"share": share, "seed": split_seed, "rows": len(validation), "of": total}
        notes.append(carved_note(len(validation), total, share, split_seed))
        provenance[f"train/{name}"] += f", less the {len(validation)} carved validation items"
        provenance[f"eval/{name}"] = f"validation: {len(validation)} items carved from {files['train']}"
    elif test is None:
        provenance[f"eval/{name}"] = f"local file {files['validation']} (validation)"
    else:
        provenance[f"eval/{name}"] = f"local file {files['test']}"
    reason = "no test file was given" if test is None else None
    beside = {name: _with_ids(name, validation)} if test is not None and validation is not None else {}
    if task.get("tune_holdout"):  # after the evaluated split is set apart: the held-out items are never test items
        train, held = tune_holdout(task, name, train, f"local file {files['train']}", provenance, notes)
        beside = {name: _with_ids(name, held)}
    return DecoderData(
        train=[training_example(item) for item in train],
        evaluation={name: _with_ids(name, test if test is not None else validation)},
        kinds={name: src.kind},
        provenance=provenance,
        validation=beside,
        test_is_validation=test is None,
        test_is_validation_reason=reason,
        validation_carved=carved,
        notes=notes,
    )
