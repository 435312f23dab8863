"""Task metrics, computed with scikit-learn and SciPy (``evaluate`` would fetch its metric scripts from the hub)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    return float(accuracy_score(labels, predictions))


def f1(predictions: Sequence, labels: Sequence) -> float:
    """F1 of the positive class (label 1) of a binary task, as GLUE reports for MRPC and QQP."""
    classes = sorted(set(labels) | set(predictions))
    if not set(classes) <= {0, 1}:
        raise ValueError(f"f1 is the F1 of class 1 of a binary task, but the classes are {classes}; use macro_f1.")
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def macro_f1(predictions: Sequence, labels: Sequence) -> float:
    """The unweighted mean of the per-class F1 over the classes that occur in the labels or the predictions, so a
    rare class counts as much as a frequent one; any number of classes."""
    return float(f1_score(labels, predictions, average="macro", zero_division=0))


def matthews(predictions: Sequence, labels: Sequence) -> float:
    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions: Sequence, labels: Sequence) -> float:
    return float(pearsonr(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))[0])


def spearman(predictions: Sequence, labels: Sequence) -> float:
    return float(spearmanr(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))[0])


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {sorted(METRICS)}.")
    return {name: METRICS[name](predictions, labels) for name in names}
