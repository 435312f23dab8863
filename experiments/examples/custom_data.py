"""Build the "Your own data" demo files from real text that installs offline (BIG-bench 1.0.0 through pip).

python -m experiments.examples.custom_data [--out data/custom-demo]

* ``intents/{train,test}.csv``: BIG-bench intent_recognition (SNIPS utterances), 7 classes with string labels
  (add_to_playlist, book_restaurant, get_weather, ...): columns text, label. 500 train and 193 test rows split by a
  fixed seed; no validation file, so the run carves one from train. -> ``task=custom/classification model=minilm``
* ``vitaminc/{train,test}.csv``: VitaminC fact verification, 3 classes (supports, refutes, not enough info): columns
  sentence1 (the evidence), sentence2 (the claim), label; 2,000 train and 500 test rows of 54,668. A harder pair task.
* ``siqa/{train,test}.jsonl``: Social-IQa items in the custom/choice schema (context, question, choices, answer as
  the text of the right choice), 300 train and 100 test items. -> ``task=custom/choice`` on SmolLM2-135M.

The files are a derived copy of benchmark data: keep them out of version control (``data/`` is ignored).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

from experiments.tasks.decoder import offline

VITAMINC_LABELS = {"True": "supports", "False": "refutes", "Neither": "not enough info"}
SEED = 0


def _right(target_scores: dict[str, int]) -> str:
    return next(choice for choice, score in target_scores.items() if score == 1)


def intents(out: Path, train: int = 500) -> list[Path]:
    rows = []
    for example in offline.bigbench_task("intent_recognition")["examples"]:
        rows.append([example["input"].removeprefix("Utterance: ").strip(), _right(example["target_scores"])])
    random.Random(SEED).shuffle(rows)
    return _write_csv(out, ["text", "label"], rows[:train], rows[train:])


def _write_csv(out: Path, header: list[str], train: list[list[str]], test: list[list[str]]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train", train), ("test", test)):
        path = out / f"{name}.csv"
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(part)
        paths.append(path)
    return paths


def vitaminc(out: Path, train: int = 2000, test: int = 500) -> list[Path]:
    examples = offline.bigbench_task("vitaminc_fact_verification")["examples"]
    rows = []
    for example in examples:
        evidence, claim = example["input"].split("\nClaim: ", 1)  # every input is "<evidence>\nClaim: <claim>"
        rows.append([evidence.strip(), claim.strip(), VITAMINC_LABELS[_right(example["target_scores"])]])
    random.Random(SEED).shuffle(rows)
    return _write_csv(out, ["sentence1", "sentence2", "label"], rows[:train], rows[train : train + test])


def siqa(out: Path, train: int = 300, test: int = 100) -> list[Path]:
    examples = offline.bigbench_task("social_iqa")["examples"]
    items = []
    for example in examples:
        text = example["input"].strip()
        # "<context>. <question>?": the last sentence is the question, the rest its context
        parts = re.split(r"(?<=[.!])\s+(?=[^.!?]*\?$)", text, maxsplit=1)
        context, question = (parts[0], parts[1]) if len(parts) == 2 else ("", text)
        choices = list(example["target_scores"])
        items.append(
            {"context": context, "question": question, "choices": choices, "answer": _right(example["target_scores"])}
        )
    random.Random(SEED).shuffle(items)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train", items[:train]), ("test", items[train : train + test])):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(item) + "\n" for item in part), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/custom-demo"))
    args = parser.parse_args(argv)
    i_train, i_test = intents(args.out / "intents")
    v_train, v_test = vitaminc(args.out / "vitaminc")
    s_train, s_test = siqa(args.out / "siqa")
    print(f"wrote {i_train}, {i_test}, {v_train}, {v_test}, {s_train}, {s_test}")
    runs = "output_dir=results/runs/custom-data"
    print("\n# TeRA and LoRA on MiniLM, 100 steps (validation carved from train, test file reported):")
    for method in ("tera", "lora"):
        print(
            f"python run.py task=custom/classification model=minilm method={method} train.max_steps=100 {runs} "
            f"task.data_files='{{train: {i_train}, test: {i_test}}}'"
        )
    print("\n# TeRA and LoRA on SmolLM2-135M and the multiple-choice items, 20 steps; then the base model (0 steps):")
    for method, steps in (("tera", 20), ("lora", 20), ("tera", 0)):
        print(
            f"python run.py task=custom/choice model=smollm2-135m method={method} train.max_steps={steps} "
            f"train.batch_size=8 eval.limit=100 {runs} task.data_files='{{train: {s_train}, test: {s_test}}}'"
        )


if __name__ == "__main__":
    main()
