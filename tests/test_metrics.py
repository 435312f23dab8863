"""GLUE metrics against values computed by hand."""

import math

import pytest

from experiments.metrics import compute


def test_classification_metrics_by_hand():
    predictions, labels = [1, 0, 1, 1], [1, 0, 0, 1]
    got = compute(["accuracy", "f1", "matthews"], predictions, labels)
    # TP=2, TN=1, FP=1, FN=0
    assert got["accuracy"] == pytest.approx(0.75)
    assert got["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # 0.8
    assert got["matthews"] == pytest.approx((2 * 1 - 1 * 0) / math.sqrt(3 * 2 * 2 * 1))


def test_correlation_metrics_by_hand():
    got = compute(["pearson", "spearman"], [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert got["pearson"] == pytest.approx(9 / math.sqrt(84))
    assert got["spearman"] == pytest.approx(1.0)
    assert compute(["spearman"], [1, 2, 3, 4], [1, 3, 2, 4])["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))


def test_unknown_metric():
    with pytest.raises(ValueError, match="Unknown metric"):
        compute(["bleu"], [1], [1])
