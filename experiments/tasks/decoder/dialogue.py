"""Generation items for decoders: a prompt and one or more reference texts, scored by the text the model writes
(BLEU, BERTScore, METEOR, ROUGE-L: ``experiments/evaluation/text_metrics.py``). TeRA's Table 3 is ConvAI2 in the HiRA
paper's self-persona setting; ``task=custom/generation`` takes any prompt -> text data of one's own.

ConvAI2 follows HiRA's data (the JSON files its repository reads, ``{"instruction", "output"}``, built by its first
author's SPT code from ParlAI's ``*_self_original_no_cands`` files): one example per turn, the speaker's own persona and
the whole dialogue history before the turn (no cut but the tokenizer's), the partner's lines marked ``Q:`` and the
speaker's ``R:`` (so the history ends on a ``Q:`` line), then the persona, then the request; the model sees HiRA's
prompt ``CONTEXT: <instruction> TARGET: `` and writes the response. The hub's per-turn copy
``bavard/personachat_truecased`` (``personality``, ``history``, ``candidates`` whose last entry is the true response:
131,438 training and 7,801 validation turns, HiRA's counts) is converted into the same instruction.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.tasks.decoder.rows import Item, RowProblem

HISTORY_LEAD = "Given the dialog history between Q and R is:"
PERSONA_LEAD = "Given the personality of the R as: "
REQUEST = "Please response to Q according to both the dialog history and the R's personality.\nNow, the R would say:"
STOPS = ("TARGET:", "Q:", "R:")  # HiRA's evaluation cuts a generation at the first of these
CONVAI2_SCHEMA = (
    "instruction (HiRA's prompt text: history, persona, request), output (the response); or the hub's "
    "bavard/personachat_truecased schema: personality (list), history (list), candidates (list, the last one true)"
)


def persona_instruction(history: Sequence[str], persona: Sequence[str]) -> str:
    """SPT's / HiRA's instruction: the history (``Q:`` partner, ``R:`` speaker, ending on ``Q:``), then the persona
    (omitted when there is none), then the request."""
    roles = ["Q: " if (len(history) - 1 - i) % 2 == 0 else "R: " for i in range(len(history))]
    lines = [HISTORY_LEAD, *(role + line.strip() for role, line in zip(roles, history)), ""]
    if persona:
        lines += [PERSONA_LEAD, *(p.strip() for p in persona), ""]
    return "\n".join(lines) + "\n" + REQUEST


def hira_prompt(instruction: str) -> str:
    """HiRA's prompt template for ConvAI2 (its template 0); the response follows ``TARGET: ``."""
    return f"CONTEXT: {instruction} TARGET: "


def _item(instruction: str, references: Sequence[str]) -> Item:
    texts = [str(r).strip() for r in references if r is not None and str(r).strip()]
    if not texts:
        raise RowProblem("it has no non-blank reference text")
    return {"prompt": hira_prompt(instruction), "references": texts, "solution": texts[0]}


def convai2(row: Mapping) -> Item:
    """A ConvAI2 turn (HiRA's file rows, or the hub's bavard/personachat_truecased rows)."""
    if "instruction" in row:
        output = row["output"]
        return _item(str(row["instruction"]), output if isinstance(output, list) else [output])
    candidates = list(row["candidates"])
    if not candidates:
        raise RowProblem("its 'candidates' is empty (the last candidate is the true response)")
    return _item(persona_instruction(list(row["history"]), list(row["personality"])), [candidates[-1]])


def cut_generation(text: str) -> str:
    """A generated response as HiRA scores it: cut at the first ``TARGET:``, ``Q:`` or ``R:``; and, leading blank
    lines set aside, at the end of its first line (a response is one turn)."""
    for stop in STOPS:
        text = text.split(stop)[0]
    return text.strip().split("\n")[0].strip()


# ---- offline stand-in: real dialogue text that installs from PyPI (no persona dialogue ships in any package) -------


def chatterbot_folder() -> Path:
    """The English conversations of the ``chatterbot-corpus`` package (BSD; YAML files of conversations)."""
    from experiments.tasks.decoder.offline import package_folder

    return (
        package_folder("chatterbot_corpus", "The offline dialogue stand-in", "chatterbot-corpus") / "data" / "english"
    )


def chatterbot_rows() -> list[dict[str, Any]]:
    """One row per turn of every English conversation: the turns before it as history, it as the response; rows with
    the same history are one item with several references (the corpus answers one prompt several ways)."""
    import yaml

    grouped: dict[tuple[str, ...], list[str]] = {}
    for path in sorted(chatterbot_folder().glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            turns = [str(t).strip() for t in conversation if t is not None and str(t).strip()]
            for i in range(1, len(turns)):
                grouped.setdefault(tuple(turns[:i]), []).append(turns[i])
    return [{"history": list(h), "references": refs} for h, refs in grouped.items()]


CHATTERBOT_HELD_OUT = 200  # prompts tested; the rest train


def chatterbot_stand_in(seed: int) -> tuple[list[Mapping], list[Mapping]]:
    """A fixed-seed split by prompt (no tested history is ever trained on); a trained prompt with several answers is
    one training example per answer, a tested one one item scored against all of them."""
    rows = chatterbot_rows()
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:CHATTERBOT_HELD_OUT])
    train = [
        {"history": r["history"], "references": [answer]}
        for i, r in enumerate(rows)
        if i not in held
        for answer in r["references"]
    ]
    return train, [r for i, r in enumerate(rows) if i in held]


def chatterbot(row: Mapping) -> Item:
    """A stand-in turn: the history in ConvAI2's instruction, with no persona (the corpus has none)."""
    return _item(persona_instruction(list(row["history"]), []), list(row["references"]))


# ---- your own prompt -> text data -----------------------------------------------------------------------------------


def custom_generation(row: Mapping, fields: Mapping[str, str]) -> Item:
    """A prompt and its reference text(s) of one's own: the model is trained to write the first reference after the
    prompt (as given, no template) and scored against all of them."""
    prompt = row[fields["prompt"]]
    if prompt is None or not str(prompt).strip():
        raise RowProblem(f"its {fields['prompt']!r} is blank")
    references = row[fields["response"]]
    if isinstance(references, str) and references.strip().startswith("["):
        import json

        try:
            references = json.loads(references)
        except json.JSONDecodeError:
            raise RowProblem(f"its {fields['response']!r} starts with '[' but is not a JSON list") from None
    texts = references if isinstance(references, list) else [references]
    item = _item("", texts)
    return {**item, "prompt": str(prompt)}
