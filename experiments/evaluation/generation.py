"""The LLM-Adapters evaluation protocol: greedy generation from the training prompt, answer extracted from the text.

Reported under its own metric names (``gen_acc`` / ``gen_exact_match``): its numbers are not comparable with
lm-eval's log-likelihood accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from experiments.evaluation.extraction import extract_choice, extract_first_letter, extract_number, number_matches
from experiments.evaluation.virtual_tokens import virtual_token_generation
from experiments.run.progress import Progress


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int, desc: str) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches, longest first to waste less padding)."""
    model.eval()
    device = next(p for p in model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        starts = range(0, len(order), batch_size)
        for start in Progress(starts, len(starts), desc, leave=False):
            chunk = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True).to(device)
            with virtual_token_generation(model):  # Prompt Tuning, P-Tuning: keep the KV cache (virtual_tokens.py)
                tokens = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            # The input ids, then the new ones: PEFT's generate injects virtual tokens as embeddings, not as ids.
            texts = tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, text in zip(chunk, texts):
                outputs[i] = text
    finally:
        tokenizer.padding_side = side
    return outputs


def evaluate_by_generation(
    model,
    tokenizer,
    evaluation: Mapping[str, Sequence[Mapping[str, Any]]],
    kinds: Mapping[str, str],
    *,
    batch_size: int,
    max_new_tokens: int,
    limit: int | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict[str, Any]]]]:
    """Per task ``gen_acc`` (choice) or ``gen_exact_match`` (math) and n; and the generations, for inspection."""
    metrics: dict[str, dict[str, float]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for name, items in evaluation.items():
        items = list(items[:limit] if limit else items)
        choice = kinds[name] == "choice"
        letters = any(item.get("extract") == "first-letter" for item in items)  # AQuA: reasoning, then a letter
        texts = generate(
            model,
            tokenizer,
            [item["prompt"] for item in items],
            max_new_tokens=min(max_new_tokens, 32) if choice and not letters else max_new_tokens,  # a word is short
            batch_size=batch_size,
            desc=f"generate {name}",
        )
        correct = []
        for item, text in zip(items, texts):
            if choice and item.get("extract") == "first-letter":
                predicted = extract_first_letter(text, item["answers"])
                correct.append(predicted == item["answers"][item["label"]])
            elif choice:
                predicted = extract_choice(text, item["answers"])
                correct.append(predicted == item["answers"][item["label"]])
            else:
                predicted = extract_number(text)
                correct.append(number_matches(predicted, item["target"]))
        key = "gen_acc" if choice else "gen_exact_match"
        metrics[name] = {key: sum(correct) / max(len(correct), 1), "n": len(correct)}
        samples[name] = [
            {"id": item["id"], "generation": text, "correct": ok} for item, text, ok in zip(items, texts, correct)
        ]
    return metrics, samples


TEXT_METRICS = ("bleu", "bert_f1", "bert_r", "bert_p", "meteor", "rouge_l", "average")  # the paper's Table 3 columns


def evaluate_texts(
    model,
    tokenizer,
    evaluation: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    batch_size: int,
    max_new_tokens: int,
    limit: int | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Generation tasks (items with ``references``): each response generated greedily, cut as HiRA cuts it, and scored
    against its references by ``text_metrics`` (as fractions: ``text_bleu`` ... ``text_average``, None where a
    metric could not run), with ``text_empty``, the share of responses cut to nothing; ``settings`` says what moves
    each score (model, layer, tokenisation, WordNet)."""
    from experiments.evaluation.text_metrics import score_generations
    from experiments.tasks.decoder.dialogue import cut_generation

    metrics: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for name, items in evaluation.items():
        items = list(items[:limit] if limit else items)
        texts = generate(
            model,
            tokenizer,
            [i["prompt"] for i in items],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            desc=f"generate {name}",
        )
        responses = [cut_generation(text) for text in texts]
        scored = score_generations(responses, [item["references"] for item in items])
        row: dict[str, Any] = {
            f"text_{key}": None if scored[key] is None else scored[key] / 100 for key in TEXT_METRICS
        }
        # Why a low score is low: a response cut to nothing (an echoed "Q: ..." line) scores 0 on every metric.
        row["text_empty"] = sum(not text.strip() for text in responses) / max(len(responses), 1)
        metrics[name] = {**row, "n": len(items), "settings": {**scored["settings"], "reasons": scored["reasons"]}}
        samples[name] = [
            {"id": item["id"], "generation": raw, "response": text, "references": item["references"][:3]}
            for item, raw, text in zip(items, texts, responses)
        ]
    return metrics, samples
