"""Your own decoder items (``task=custom/choice``, ``task=custom/math``): rows of local files in a documented schema,
with field names a task may rename (``task.<role>_field``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from experiments.tasks.decoder.prompts import wrap
from experiments.tasks.decoder.rows import QUESTION, Item, RowProblem, _numbered

# role -> default field name; task.<role>_field renames it
CUSTOM_FIELDS = {role: role for role in ("question", "context", "choices", "answer", "solution", "prompt", "response")}


def _text(row: Mapping, name: str) -> str:
    value = row[name]
    if isinstance(value, (dict, list, tuple)):
        kind = "an object" if isinstance(value, dict) else "a list"
        raise RowProblem(f"its {name!r} is {kind}, not text (a nested Parquet or JSON value)")
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


def _readings(value: Any, choices: list[str]) -> dict[str, int]:
    """Every reading of an answer that points at a choice: ``index`` (a whole number, or text of one: 0 is the first
    choice), ``text`` (exactly one choice's text, spaces around it ignored) and ``letter`` (A is the first choice).
    The same rule for every file format: a CSV cell ``1`` and a JSON ``1`` or ``"1"`` read alike."""
    if isinstance(value, bool) or value is None:
        return {}
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    readings: dict[str, int] = {}
    if re.fullmatch(r"\d+", text) and int(text) < len(choices):
        readings["index"] = int(text)
    if text in choices:
        readings["text"] = choices.index(text)
    if len(text) == 1 and "A" <= text.upper() <= "Z" and ord(text.upper()) - ord("A") < len(choices):
        readings["letter"] = ord(text.upper()) - ord("A")
    return readings


def _answer_index(value: Any, choices: list[str], name: str, answer_format: str = "auto") -> int:
    """The choice an answer names, by :func:`_readings`; with ``answer_format`` auto, an answer whose readings name
    different choices is refused (never guessed)."""
    readings = _readings(value, choices)
    if answer_format != "auto":
        readings = {k: v for k, v in readings.items() if k == answer_format}
    named = sorted(set(readings.values()))
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        how = "; ".join(f"as {k} it is choice {i + 1} ({choices[i]!r})" for k, i in readings.items())
        raise RowProblem(
            f"its {name!r} {value!r} is ambiguous: {how}; add +task.answer_format=index, text or letter to say how "
            f"answers are written"
        )
    whole = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        whole = int(value.strip())
    if whole is not None and answer_format in ("auto", "index"):
        raise RowProblem(
            f"its {name!r} {value} is not an index of its {len(choices)} choices (0 to {len(choices) - 1})"
        )
    letters = f"A-{chr(ord('A') + len(choices) - 1)}"
    kinds = {
        "auto": f"none of its choices, an index from 0 to {len(choices) - 1} or a letter {letters}",
        "index": f"not an index from 0 to {len(choices) - 1} (task.answer_format=index)",
        "text": "not the text of one of its choices (task.answer_format=text)",
        "letter": f"not a letter {letters} (task.answer_format=letter)",
    }
    raise RowProblem(f"its {name!r} {value!r} is {kinds[answer_format]}")


def custom_choice(row: Mapping, fields: Mapping[str, str] = CUSTOM_FIELDS, answer_format: str = "auto") -> Item:
    """A multiple-choice item of one's own, asked like Social-IQa and ARC (numbered answers)."""
    question = _text(row, fields["question"])
    context = row.get(fields["context"])
    body = f"{str(context).strip()} {question}" if context is not None and str(context).strip() else question
    choices = _choices(row[fields["choices"]], fields["choices"])
    label = _answer_index(row[fields["answer"]], choices, fields["answer"], answer_format)
    return _numbered(QUESTION, body, choices, "Answer", label)


_PLAIN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")


def exact_number(value: Any, name: str = "answer") -> Decimal:
    """A gold answer read without loss: exact decimals and integers of any size (``decimal.Decimal``).

    Text may carry a leading ``$`` and commas that group thousands (``1,234,567.5``); any other comma (``3,5``: three
    and a half, or thirty-five?) is refused. JSON numbers are read as written (a float by its shortest repr)."""
    if isinstance(value, bool) or value is None:
        raise RowProblem(f"its {name!r} is {value!r}, not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, (float, Decimal)):
        number = Decimal(repr(value)) if isinstance(value, float) else value
        if not number.is_finite():
            raise RowProblem(f"its {name!r} is {value!r}, not a finite number")
        return number
    text = str(value).strip()
    unsigned = text.lstrip("+-")
    if unsigned.startswith("$"):
        text = text[: len(text) - len(unsigned)] + unsigned[1:]
    if "," in text:
        if not _THOUSANDS.fullmatch(text):
            raise RowProblem(
                f"its {name!r} {value!r} has a comma that does not group thousands (is 3,5 three and a half or "
                f"thirty-five?); write decimals with a point (3.5)"
            )
        text = text.replace(",", "")
    if not _PLAIN.fullmatch(text):
        raise RowProblem(f"its {name!r} is {value!r}, not a number")
    return Decimal(text)


def number_text(number: Decimal) -> str:
    """A number as scoring compares it: no exponent, no trailing zeros after the point (``2.50`` -> ``2.5``)."""
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _number(value: Any, name: str) -> str:
    """A final answer as GSM8K's targets are written, exactly as the user wrote it (no rounding, no float): text keeps
    its digits (``2.50`` stays ``2.50``: lm-eval compares strings) less a ``$`` and thousands commas, which both
    protocols ignore; a JSON number or a number in exponent form is written out in plain digits (``1e20``)."""
    number = exact_number(value, name)
    if isinstance(value, str) and "e" not in value.lower():
        text = value.strip().replace(",", "").replace("$", "")
        return text.removeprefix("+")
    return number_text(number)


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
