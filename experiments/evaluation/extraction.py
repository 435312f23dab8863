"""Answer extraction from generated text, for the two evaluation protocols.

* lm-eval (default): GSM8K answers go through lm-eval's regex filters, configured here: ``strict-match`` takes the
  number after ``####`` (GSM8K's own format) or ``The answer is`` (MetaMathQA's), ``flexible-extract`` the last number
  in the text; lm-eval's exact_match then compares strings after removing commas, ``$`` and a final full stop.
* LLM-Adapters: the first answer word (``true``, ``solution2`` ...) found in the generation for choice tasks, and
  for math the last number, compared as a float to within 1e-3. Its figures are not comparable with lm-eval's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

STRICT_PATTERN = r"(?:####|[Tt]he answer is:?)\s*\$?(-?[0-9][0-9.,]*)"
FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
IGNORED_IN_MATCH = [",", "\\$", "\\.$"]

LMEVAL_MATH_FILTERS = [
    {
        "name": "strict-match",
        "filter": [{"function": "regex", "regex_pattern": STRICT_PATTERN}, {"function": "take_first"}],
    },
    {
        "name": "flexible-extract",
        "filter": [
            {"function": "regex", "group_select": -1, "regex_pattern": FLEXIBLE_PATTERN},
            {"function": "take_first"},
        ],
    },
]

_NUMBER = re.compile(r"-?[0-9]+\.?[0-9]*")


def extract_choice(generation: str, answers: Sequence[str]) -> str | None:
    """The first of ``answers`` that appears as a word in ``generation`` (case-insensitive), else None."""
    alternatives = "|".join(re.escape(a) for a in sorted(answers, key=len, reverse=True))
    match = re.search(rf"\b({alternatives})\b", generation, flags=re.IGNORECASE)
    return match.group(1).lower() if match else None


def extract_first_letter(generation: str, letters: Sequence[str]) -> str | None:
    """LLM-Adapters' AQuA rule (``evaluate.py``): the first of ``letters`` (capitals) anywhere in ``generation``, with
    no word boundary and case-sensitive, so the "A" of "A train" counts; else None."""
    match = re.search("|".join(re.escape(letter) for letter in letters), generation.strip())
    return match.group(0) if match else None


def extract_number(generation: str) -> Decimal | None:
    """The last number in ``generation`` (commas removed), as LLM-Adapters scores math, else None; exact (a Decimal),
    so an integer beyond 2**53 or a long decimal is compared as written."""
    numbers = _NUMBER.findall(generation.replace(",", ""))
    if not numbers:
        return None
    try:
        return Decimal(numbers[-1].rstrip("."))
    except InvalidOperation:
        return None


def number_matches(prediction: Decimal | float | None, target: str) -> bool:
    """LLM-Adapters' rule: equal to within 1e-3, computed exactly."""
    if prediction is None:
        return False
    gold = Decimal(target.replace(",", "").replace("$", ""))
    value = Decimal(repr(prediction)) if isinstance(prediction, float) else prediction
    return abs(value - gold) < Decimal("0.001")
