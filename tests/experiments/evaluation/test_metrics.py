"""GLUE metrics against values computed by hand."""

import math

import pytest

from experiments.evaluation.metrics import compute


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


def test_macro_f1_by_hand_for_three_classes():
    predictions, labels = [0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2]
    got = compute(["accuracy", "macro_f1"], predictions, labels)
    # per class: 0: P=1/2 R=1/2 F1=1/2; 1: P=2/3 R=1 F1=4/5; 2: P=1 R=1/2 F1=2/3
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # binary: the mean of both classes' F1, not the F1 of class 1 (MRPC's f1 keeps that)
    binary = compute(["f1", "macro_f1"], [1, 0, 1, 1], [1, 0, 0, 1])
    assert binary["f1"] == pytest.approx(0.8) and binary["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_binary_f1_refuses_more_than_two_classes():
    with pytest.raises(ValueError, match=r"f1 is the F1 of class 1 of a binary task, but the classes are \[0, 1, 2\]"):
        compute(["f1"], [0, 1, 2], [0, 1, 1])
