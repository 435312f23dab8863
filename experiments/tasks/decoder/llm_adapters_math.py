"""LLM-Adapters' arithmetic files (GitHub ``AGI-Edgerunners/LLM-Adapters``, the commit of ``llm_adapters.py``): the
Math10K training mixture and the AQuA and SVAMP test sets that TeRA's Table 4 reports.

Every row is ``{"instruction", "input", "output", "answer"}``. An AQuA row's instruction holds the question and its
options inline (``... Answer Choices: (A) 21 (B) 21.5 ...``) and its answer is a letter; LLM-Adapters' ``evaluate.py``
takes the FIRST capital A-E anywhere in the generation (no word boundary: the "A" of "A train" counts), and so do we
(``extract: first-letter`` on the item). A SVAMP row's answer is a number ("8.0"); the LAST number of the generation,
commas removed, must be within 1e-3 of it. Math10K mixes GSM8K, MAWPS and AQuA training problems: its rows with a
letter answer become AQuA-like items and the others numeric ones, so the items ``task.validation_size`` carves from it
can be scored as its tests are (or by loss, ``train.keep_best=loss``, as the paper's Table 4 chooses).

The hub's copies in their own schemas work too: ``deepmind/aqua_rat`` (question, options ``["A)21", ...]``, correct)
and ``ChilleD/SVAMP`` (Body, Question, Answer).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from decimal import Decimal

from experiments.tasks.decoder.llm_adapters import RepoFile
from experiments.tasks.decoder.prompts import wrap
from experiments.tasks.decoder.rows import Item, RowProblem, gsm8k, instruction_row

TEST_FILES: dict[str, RepoFile] = {
    "aqua": RepoFile("dataset/AQuA/test.json", "731fbb456f7a93bb4121125de09c4adcf42e5dab"),
    "svamp": RepoFile("dataset/SVAMP/test.json", "98b8f1872db596f8aaff2c95d1d698a9fa13b94f"),
}
TRAIN_FILES: dict[str, RepoFile] = {
    "math10k": RepoFile("ft-training_set/math_10k.json", "27dba77d6ed80aa118d78fbafa5cecd651f6d463"),
}
LETTERS = ("A", "B", "C", "D", "E")
AQUA_SCHEMA = (
    "instruction (the question, then 'Answer Choices: (A) ... (E) ...'), answer (the letter); or the hub's "
    "deepmind/aqua_rat schema: question, options (['A)...', ...]), correct (the letter)"
)
SVAMP_SCHEMA = (
    "instruction (the problem), answer (a number), output (optional worked solution); or the hub's ChilleD/SVAMP "
    "schema: Body, Question, Answer"
)
MATH10K_SCHEMA = (
    "instruction (the problem), input (may be empty), output (the worked solution), answer (a number or a letter)"
)
_OPTION = re.compile(r"\(([A-E])\)")
_HUB_OPTION = re.compile(r"^\s*([A-E])\s*\)\s*(.*)$", re.DOTALL)


def _letter_item(instruction: str, answer: str) -> Item:
    offered = [letter for letter in LETTERS if f"({letter})" in instruction] or list(LETTERS)
    answer = answer.strip().upper()
    if answer not in offered:
        raise RowProblem(f"its answer {answer!r} is not one of its answer choices {'/'.join(offered)}")
    return {"prompt": wrap(instruction), "answers": offered, "label": offered.index(answer), "extract": "first-letter"}


def aqua(row: Mapping) -> Item:
    """An AQuA problem as a choice item scored by its letter (LLM-Adapters' rows, or deepmind/aqua_rat's)."""
    if "instruction" in row:
        return _letter_item(str(row["instruction"]), str(row["answer"]))
    options = []
    for option in row["options"]:
        match = _HUB_OPTION.match(str(option))
        if match is None:
            raise RowProblem(f"its option {option!r} is not written 'A)...'")
        options.append(f"({match.group(1)}) {match.group(2).strip()}")
    return _letter_item(f"{str(row['question']).strip()} Answer Choices: {' '.join(options)}", str(row["correct"]))


def _number(value: object) -> str:
    text = str(value).strip().replace(",", "")
    try:
        float(text)
    except ValueError:
        raise RowProblem(f"its answer {value!r} is not a number") from None
    return text


def svamp(row: Mapping) -> Item:
    """A SVAMP problem as a math item (LLM-Adapters' rows, or ChilleD/SVAMP's)."""
    if "instruction" in row:
        instruction, answer = str(row["instruction"]), row["answer"]
    else:
        instruction, answer = f"{str(row['Body']).strip()} {str(row['Question']).strip()}", row["Answer"]
    target = _number(answer)
    return {"prompt": wrap(instruction), "solution": str(row.get("output") or ""), "target": target}


def math10k(row: Mapping) -> Item:
    """A Math10K row as a training example (instruction, input, output)."""
    return instruction_row(row)


def math10k_scored(row: Mapping) -> Item:
    """A Math10K row as an item scored against its answer: AQuA-like (a letter) or numeric."""
    answer = str(row.get("answer") or "").strip()
    if answer.upper() in LETTERS and _OPTION.search(str(row["instruction"])):
        return {**_letter_item(str(row["instruction"]), answer), "solution": str(row["output"])}
    return {**instruction_row(row), "target": _number(answer)}


def _distractors(answer: Decimal, key: int) -> list[Decimal]:
    """Four wrong options near ``answer`` (off by one, by ten, doubled, halved ...), in an order set by ``key``."""
    candidates = [answer + 1, answer - 1, answer * 2, answer + 10, answer - 10, answer * 10, answer / 2, answer + 2]
    unique = list(dict.fromkeys(c.normalize() for c in candidates if c != answer))
    random.Random(key).shuffle(unique)
    return unique[:4]


def gsm8k_as_aqua(row: Mapping) -> Item:
    """Offline AQuA stand-in: a GSM8K problem posed in AQuA's format, its answer among four distractors derived from
    it, the right letter set by the problem's hash (so letters spread over A-E). Real problems, a built format."""
    item = gsm8k(row)
    answer = Decimal(item["target"])
    key = int(hashlib.sha256(str(row["question"]).encode()).hexdigest()[:8], 16)
    options = _distractors(answer, key)
    options.insert(key % 5, answer.normalize())
    choices = " ".join(f"({letter}) {value:f}" for letter, value in zip(LETTERS, options))
    return {**_letter_item(f"{str(row['question']).strip()} Answer Choices: {choices}", LETTERS[key % 5])}


if __name__ == "__main__":  # fetch AQuA's and SVAMP's test files and Math10K into the cache once
    from experiments.tasks.decoder.llm_adapters import local_copy

    wanted = {**TEST_FILES, "train": TRAIN_FILES["math10k"]}
    paths = {key: local_copy(file, key) for key, file in wanted.items()}
    print("task.data_files='{" + ", ".join(f"{key}: {path}" for key, path in paths.items()) + "}'")
