"""Prompt templates of the LLM-Adapters format (the format of Commonsense170K and of the decoder PEFT literature).

Every example is an instruction; the model is trained to write the response. Multiple-choice tasks answer with a word
(``true``, ``solution2``, ``answer3`` ...) after a fixed lead-in, so log-likelihood scoring and generation with answer
extraction see the same text the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ANSWER_LEAD = "the correct answer is"


def wrap(instruction: str) -> str:
    """The prompt the model sees; the response follows it directly."""
    return f"{HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def boolean_instruction(question: str, lead: str = "Please answer the following question with true or false") -> str:
    return f"{lead}, question: {question.strip()}\n\nAnswer format: true/false"


def numbered_instruction(lead: str, body: str, choices: Sequence[str], word: str) -> str:
    """``word`` names the options: Solution, Answer, Ending, Option (the answers are ``word.lower()`` + index)."""
    options = "".join(f"\n\n{word}{i}: {c.strip()}" for i, c in enumerate(choices, 1))
    answer_format = "/".join(f"{word.lower()}{i}" for i in range(1, len(choices) + 1))
    return f"{lead}: {body.strip()}{options}\n\nAnswer format: {answer_format}"


def numbered_answers(word: str, count: int) -> list[str]:
    return [f"{word.lower()}{i}" for i in range(1, count + 1)]


def mc_target(answer: str) -> str:
    return f"{ANSWER_LEAD} {answer}"
