"""Task metrics, computed with scikit-learn and SciPy (``evaluate`` would fetch its metric scripts from the hub)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    return float(accuracy_score(labels, predictions))


def f1(predictions: Sequence, labels: Sequence) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    return float(f1_score(labels, predictions, zero_division=0))


def matthews(predictions: Sequence, labels: Sequence) -> float:
    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions: Sequence, labels: Sequence) -> float:
    return float(pearsonr(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))[0])


def spearman(predictions: Sequence, labels: Sequence) -> float:
    return float(spearmanr(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))[0])


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {sorted(METRICS)}.")
    return {name: METRICS[name](predictions, labels) for name in names}
