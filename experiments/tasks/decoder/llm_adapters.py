"""LLM-Adapters' own commonsense files (GitHub ``AGI-Edgerunners/LLM-Adapters``): the eight test sets the decoder PEFT
papers report (TeRA's Table 2 among them) and the Commonsense170K mixture they train on.

Every row is ``{"instruction", "input", "output", "answer"}``: the instruction already holds the question, its numbered
options and an ``Answer format: true/false`` (``solution1/solution2``, ``answer1/.../answer5``, ``ending1/...``,
``option1/option2``) line; ``answer`` is the right answer word. Such a row becomes a choice item whose answers are the
words of its own ``Answer format`` line, so lm-eval's log-likelihood scoring compares just the options the row offers,
and LLM-Adapters' generation scoring (``commonsense_evaluate.py``: the first answer word in the generation) compares
against ``answer``.

The files are read at one commit, fetched once into the suite's cache and checked against their git blob ids there,
so the bytes a run reads are the ones the commit names (the run's data fingerprint names repository, commit and path).
``python -m experiments.tasks.decoder.llm_adapters [--train]`` fetches them ahead of time.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from experiments.cache import cache_root
from experiments.errors import DataUnavailable
from experiments.tasks.decoder.rows import Item, RowProblem, instruction_row

REPO = "AGI-Edgerunners/LLM-Adapters"
COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"  # main on 2024-03-10; the test files date from 2023-05-15


@dataclass(frozen=True)
class RepoFile:
    path: str  # inside the repository
    blob: str  # its git blob id at COMMIT: what the fetched bytes must hash to


# The eight test sets by the suite's source names (the keys of task.data_files and of the test_<task>_* metrics).
TEST_FILES: dict[str, RepoFile] = {
    "boolq": RepoFile("dataset/boolq/test.json", "6d7edb0a8e8a6566b546ccf0d98d24e48db3fdf3"),
    "piqa": RepoFile("dataset/piqa/test.json", "f7a1c260692ef31796d4763cb6334f316a754fed"),
    "siqa": RepoFile("dataset/social_i_qa/test.json", "eadf221799ca394367b144c0f86ee0436db409d2"),
    "hellaswag": RepoFile("dataset/hellaswag/test.json", "183c4920415f83ba4b793c4873a33e7e10bd1be5"),
    "winogrande": RepoFile("dataset/winogrande/test.json", "21257263593dd4d00546e1918c88ca0f357b08ad"),
    "arc_e": RepoFile("dataset/ARC-Easy/test.json", "6c0d30aaedaeca148df6bcd7aaacf7c31e6ad70f"),
    "arc_c": RepoFile("dataset/ARC-Challenge/test.json", "9540685439144200b5a7e48dab9ca4655be2af09"),
    "obqa": RepoFile("dataset/openbookqa/test.json", "a6e69676104bcb77237388c3b5a3f0dcbb81d1e2"),
}
TRAIN_FILE = RepoFile("ft-training_set/commonsense_170k.json", "529e426b33d4cdb1d0c4a275a1a7245ad081fd91")
# Training sources in LLM-Adapters' schema: a task trained on one is tested on LLM-Adapters' test files by default,
# as the papers that train on it do (task.evaluate_from=original tests on the original hub datasets instead).
MIXTURES = ("commonsense170k", "math10k")

# The answer words LLM-Adapters' scorer looks for, by family (the word without its number).
_BOOL = ("true", "false")
FAMILIES: dict[str, tuple[str, ...]] = {
    "true": _BOOL,
    "false": _BOOL,
    "solution": ("solution1", "solution2"),
    "answer": tuple(f"answer{i}" for i in range(1, 6)),
    "ending": tuple(f"ending{i}" for i in range(1, 5)),
    "option": ("option1", "option2"),
}
TASK_WORDS: dict[str, tuple[str, ...]] = {
    "boolq": _BOOL,
    "piqa": FAMILIES["solution"],
    "siqa": FAMILIES["answer"],
    "hellaswag": FAMILIES["ending"],
    "winogrande": FAMILIES["option"],
    "arc_e": FAMILIES["answer"],
    "arc_c": FAMILIES["answer"],
    "obqa": FAMILIES["answer"],
}
SCHEMA = (
    "instruction (the question, its options and an 'Answer format: a/b/...' line), input (may be empty), output "
    "('the correct answer is <word>'), answer (the word: true/false, solution1, answer3, ending2, option1 ...)"
)
_FORMAT = re.compile(r"Answer format:\s*([A-Za-z]+[0-9]*(?:\s*/\s*[A-Za-z]+[0-9]*)+)")


def is_llm_adapters(rows: Sequence[Mapping]) -> bool:
    """Whether a file's rows are in LLM-Adapters' schema (judged by its first row), not in a hub dataset's."""
    return bool(rows) and isinstance(rows[0], Mapping) and {"instruction", "output"} <= set(rows[0])


def answer_words(instruction: str, answer: str, task_words: tuple[str, ...] | None = None) -> list[str]:
    """The options a row offers: the words of its last ``Answer format`` line, else the family of its answer word
    (``answer3`` -> answer1..answer5, as LLM-Adapters' scorer reads them)."""
    found = _FORMAT.findall(instruction)
    if found:
        words = [w.strip().lower() for w in found[-1].split("/")]
    else:
        words = list(FAMILIES.get(answer.rstrip("0123456789"), ()))
        if not words:
            raise RowProblem(f"its instruction has no 'Answer format:' line, and its answer {answer!r} is no word")
    if task_words is not None and not set(words) <= set(task_words):
        raise RowProblem(
            f"its answer words {'/'.join(words)} are not this task's ({'/'.join(task_words)}): another task's file?"
        )
    return words


def choice_row(row: Mapping, task_words: tuple[str, ...] | None = None) -> Item:
    """A row of LLM-Adapters' schema as a choice item, prompted exactly as Commonsense170K's rows are trained."""
    answer = str(row["answer"] if row["answer"] is not None else "").strip().lower()
    if not answer:
        raise RowProblem("its 'answer' is empty")
    words = answer_words(str(row["instruction"]), answer, task_words)
    if answer not in words:
        raise RowProblem(f"its answer {answer!r} is not one of its answer words {'/'.join(words)}")
    return {"prompt": instruction_row(row)["prompt"], "answers": words, "label": words.index(answer)}


def git_blob_id(data: bytes) -> str:
    """The id git gives ``data`` as a file (sha1 of a ``blob <size>`` header and the bytes)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cached_path(file: RepoFile) -> Path:
    return cache_root() / f"llm-adapters-{COMMIT[:12]}" / file.path


def local_copy(file: RepoFile, key: str) -> Path:
    """The cached copy of ``file`` at COMMIT, fetched once; ``key`` is the task.data_files key that replaces it."""
    target = cached_path(file)
    if not target.is_file():
        _fetch(file, target, key)
    if git_blob_id(target.read_bytes()) != file.blob:  # an edited or truncated cache file is never read as the commit's
        raise DataUnavailable(
            f"{target} is not LLM-Adapters' {file.path} at commit {COMMIT[:12]} (its git blob id differs); delete it "
            f"to fetch it again, or point at your copy with task.data_files={{{key}: ...}}."
        )
    return target


def _fetch(file: RepoFile, target: Path, key: str) -> None:
    url = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/{file.path}"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except OSError as err:  # offline, DNS, HTTP errors (URLError is an OSError)
        raise DataUnavailable(
            f"Cannot fetch LLM-Adapters' {file.path} (commit {COMMIT[:12]}) from {url} ({type(err).__name__}: {err}); "
            f"connect once to cache it (python -m experiments.tasks.decoder.llm_adapters), or point at a copy of the "
            f"file with task.data_files={{{key}: .../{file.path}}}."
        ) from None
    if git_blob_id(data) != file.blob:
        raise DataUnavailable(f"{url} did not return the file commit {COMMIT[:12]} names (its git blob id differs).")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a reader never sees half a file


if __name__ == "__main__":  # fetch the eight test files (and, with --train, Commonsense170K) into the cache once
    wanted = {**TEST_FILES, **({"train": TRAIN_FILE} if "--train" in sys.argv[1:] else {})}
    paths = {key: local_copy(file, key) for key, file in wanted.items()}
    print("task.data_files='{" + ", ".join(f"{key}: {path}" for key, path in paths.items()) + "}'")
