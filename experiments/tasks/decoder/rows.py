"""Rows of public datasets as decoder items, in the LLM-Adapters prompt format:

* choice items ``{"prompt", "answers", "label"}`` scored by log-likelihood of each answer word, or by generation and
  answer extraction;
* math items ``{"prompt", "solution", "target"}`` (the final number), answered by generation;
* instruction rows ``{"prompt", "solution"}`` (training only).

A row that does not fit raises :class:`RowProblem`; the caller names the file and line (``sources.convert_rows``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from experiments.tasks.decoder.prompts import boolean_instruction, numbered_answers, numbered_instruction, wrap

Item = dict[str, Any]
BOOL_ANSWERS = ["true", "false"]


def item_kind(item: Item) -> str:
    """How an item is scored, read from its keys: ``generation`` (reference texts), ``choice`` (answers) or ``math``."""
    if "references" in item:
        return "generation"
    return "choice" if "answers" in item else "math"


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
