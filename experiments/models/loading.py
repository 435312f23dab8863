"""Loading the model of a ``conf/model`` entry through the function its ``loader`` names, and naming what that
model is made of for the run's identity (each loader's ``fingerprint``): a package release, a local folder's file
contents or a hub id, never the loader's code path or a folder's location."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def _loader(model_cfg: Mapping[str, Any]):
    from hydra.utils import get_method

    return get_method(model_cfg["loader"])


def load_model(model_cfg: Mapping[str, Any], *, num_labels: int | None, seed: int, device: torch.device):
    """Model and tokenizer of a ``conf/model`` entry (encoders and decoders)."""
    return _loader(model_cfg)(model_cfg, num_labels=num_labels, seed=seed, device=device)


def load_tokenizer(model_cfg: Mapping[str, Any]) -> Any:
    """The tokenizer of a ``conf/model`` entry without its weights (the loader's ``tokenizer``); a loader of one's own
    without one has its model loaded and its tokenizer kept."""
    loader = _loader(model_cfg)
    if hasattr(loader, "tokenizer"):
        return loader.tokenizer(model_cfg)
    return loader(model_cfg, num_labels=None, seed=0, device=torch.device("cpu"))[1]


def model_fingerprint(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What the model of ``model_cfg`` is made of; a loader of one's own without a ``fingerprint`` is named by the
    model's name (its files are then not checked: say what it reads by giving the loader a ``fingerprint``)."""
    describe = getattr(_loader(model_cfg), "fingerprint", None)
    if describe is None:
        return {"model": f"{model_cfg.get('name')} (loader without fingerprint)"}
    return dict(describe(model_cfg))
