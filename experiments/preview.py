"""``python -m experiments.preview <the same overrides as run.py> [--n N]``: what a run's data becomes, before any
training. The data is read and checked exactly as a run reads it (the same task code, the same errors), the tokenizer
alone is loaded, and N examples per split are printed as JSON lines:

- ``split``; ``input``: the text, or the prompt exactly as the model sees it after templating and truncation;
- ``target``: the gold label or answer exactly as scoring compares it;
- ``truncated``: how many tokens the cut to ``train.max_length`` removed (when it did).

Then one summary line per split: rows, classes or answer kinds, and how many examples are cut.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from experiments.errors import USER_ERRORS
from experiments.families import family_for
from experiments.families.causal import check_truncation
from experiments.models.loading import load_tokenizer
from experiments.run.compose import ComposeError, compose_config
from experiments.run.schema import validate
from experiments.tasks.decoder.batching import tokenize_example
from experiments.tasks.decoder.rows import item_kind


def _classification(data: Any, tokenizer: Any, max_length: int, n: int) -> tuple[list[dict], list[str]]:
    names = {index: name for name, index in (data.label_map or {}).items()}
    lines, summary = [], []
    for split, examples in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        cut = 0
        for index, example in enumerate(examples):
            whole = tokenizer(example["text_a"], example["text_b"], truncation=False)["input_ids"]
            kept = tokenizer(example["text_a"], example["text_b"], truncation=True, max_length=max_length)
            lost = len(whole) - len(kept["input_ids"])
            cut += lost > 0
            if index < n:
                line = {"split": split, "input": tokenizer.decode(kept["input_ids"], skip_special_tokens=True)}
                line |= {"target": example["label"], "label": names.get(example["label"], example["label"])}
                lines.append(line | ({"truncated": f"{lost} of {len(whole)} tokens"} if lost else {}))
        classes = Counter(names.get(e["label"], e["label"]) for e in examples)
        shown = ", ".join(f"{name!r}: {count}" for name, count in sorted(classes.items(), key=lambda kv: str(kv[0])))
        summary.append(f"{split}: {len(examples)} rows; classes {shown}; {cut} cut to {max_length} tokens")
    return lines, summary


def _decoder(data: Any, tokenizer: Any, max_length: int, n: int) -> tuple[list[dict], list[str]]:
    lines, summary = [], []
    features = [tokenize_example(tokenizer, e["prompt"], e["target"], max_length) for e in data.train]
    cut = check_truncation(features, max_length)["cut"]  # refuses what a run refuses
    for index, (example, feature) in enumerate(zip(data.train, features)):
        if index < n:
            prompt = tokenizer.decode(feature["input_ids"][: feature["prompt_kept"]], skip_special_tokens=True)
            line = {"split": "train", "input": prompt, "target": example["target"]}
            lines.append(
                line | ({"truncated": f"{feature['prompt_cut']} prompt tokens"} if feature["prompt_cut"] else {})
            )
    summary.append(f"train: {len(data.train)} examples; {cut} cut to {max_length} tokens (prompts lose their start)")
    for prefix, parts in (("eval", data.evaluation), ("validation", data.validation)):
        for name, items in parts.items():
            kind = data.kinds.get(name, "choice")
            for item in items[:n]:
                lines.append({"split": f"{prefix}/{name}", "input": item["prompt"], "target": _gold(item)})
            golds = Counter(_gold_kind(i) for i in items)
            kinds = ", ".join(f"{g!r}: {c}" for g, c in golds.most_common(8))
            summary.append(f"{prefix}/{name}: {len(items)} {kind} items; answers {kinds}")
    return lines, summary


def _gold(item: dict[str, Any]) -> str | list[str]:
    """What scoring compares a decoder item's output with: the right choice, the number, or every reference text."""
    kind = item_kind(item)
    if kind == "choice":
        return item["answers"][item["label"]]
    return item["references"] if kind == "generation" else item["target"]


def _gold_kind(item: dict[str, Any]) -> str:
    """A summary's answer class: the right choice's text, or "number" / "text" for math and generation items."""
    kind = item_kind(item)
    return item["answers"][item["label"]] if kind == "choice" else {"math": "number", "generation": "text"}[kind]


def preview(overrides: list[str], n: int) -> tuple[list[dict], list[str]]:
    cfg = compose_config(overrides)
    validate(cfg)
    family = family_for(cfg)
    data = family.load_data()
    tokenizer = load_tokenizer(cfg.model)
    if family.name == "causal":
        return _decoder(data, tokenizer, int(cfg.train.max_length), n)
    return _classification(data, tokenizer, int(cfg.train.max_length), n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="run.py's overrides, e.g. task=custom/math task.data_files=...")
    parser.add_argument("--n", type=int, default=3, help="examples shown per split (default 3)")
    args = parser.parse_args(argv)
    try:
        lines, summary = preview(args.overrides, max(args.n, 0))
    except ComposeError as err:
        print(f"error: Cannot compose run.py's config with {' '.join(args.overrides)}: {err}.", file=sys.stderr)
        return 2
    except USER_ERRORS as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    for line in lines:
        print(json.dumps(line, ensure_ascii=False, default=str))
    for line in summary:
        print(f"# {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
