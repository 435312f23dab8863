"""Your own decoder items (``task=custom/choice``, ``task=custom/math``): rows of local files in a documented schema,
with field names a task may rename (``task.<role>_field``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from experiments.tasks.decoder.prompts import wrap
from experiments.tasks.decoder.rows import QUESTION, Item, RowProblem, _numbered

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


def custom_fields(task: Mapping[str, Any]) -> dict[str, str]:
    """The field names of a custom task's rows: ``task.<role>_field``, else the role's own name."""
    return {role: str(task.get(f"{role}_field") or default) for role, default in CUSTOM_FIELDS.items()}
