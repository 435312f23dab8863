"""MoRA (Jiang et al. 2024, "MoRA: High-Rank Updating for Parameter-Efficient Fine-Tuning") as a PEFT tuner.

Importing this package registers the ``"MORA"`` PEFT type, so ``peft.get_peft_model(model, MoraConfig(...))``,
``save_pretrained`` and ``PeftModel.from_pretrained`` work as for PEFT's own methods (``import baselines`` does it
too).  MoRA's rank bound joins the cross-method report in ``baselines.analysis``.
"""

from tera.tuners_utils import register_tuner

from .config import MORA_TYPES, PEFT_TYPE, MoraConfig, MoraPeftType
from .layer import Linear, MoraLayer, mora_blocks, mora_delta, mora_delta_weight, mora_r_hat, mora_rank_bound
from .model import MoraModel

# Out-of-tree registration, as for TeRA: peft's register_peft_method only accepts names in its PeftType enum.
register_tuner(PEFT_TYPE, MoraConfig, MoraModel)

__all__ = [
    "MORA_TYPES",
    "PEFT_TYPE",
    "Linear",
    "MoraConfig",
    "MoraLayer",
    "MoraModel",
    "MoraPeftType",
    "mora_blocks",
    "mora_delta",
    "mora_delta_weight",
    "mora_r_hat",
    "mora_rank_bound",
]
