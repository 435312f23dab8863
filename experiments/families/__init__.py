"""Model families: what differs between fine-tuning a classification encoder and a causal decoder.

The run pipeline (``experiments/run/pipeline.py``) drives the same steps for every family; a family (``base.Family``)
supplies only its data and batches, its model loading, its evaluation and the record fields that are its own.
"""

from __future__ import annotations

from omegaconf import DictConfig

from experiments.families.base import Evaluation, Family
from experiments.families.causal import CausalFamily
from experiments.families.classification import ClassificationFamily

FAMILIES: dict[str, type[Family]] = {"classification": ClassificationFamily, "causal": CausalFamily}

__all__ = ["FAMILIES", "Evaluation", "Family", "family_for"]


def family_for(cfg: DictConfig) -> Family:
    """The family of a run, from ``task.kind`` (checked by the schema before anything loads)."""
    return FAMILIES[cfg.task.get("kind", "classification")](cfg)
