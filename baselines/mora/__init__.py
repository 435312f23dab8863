"""MoRA (Jiang et al. 2024, "MoRA: High-Rank Updating for Parameter-Efficient Fine-Tuning") as a PEFT tuner.

Importing this package registers the ``"MORA"`` PEFT type, so ``peft.get_peft_model(model, MoraConfig(...))``,
``save_pretrained`` and ``PeftModel.from_pretrained`` work as for PEFT's own methods, and registers MoRA's rank bound
with :func:`tera.analysis.register_rank_bound`, so ``tera.adapter_report`` works on MoRA models.
"""

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from tera.analysis import register_rank_bound

from .config import MORA_TYPES, PEFT_TYPE, MoraConfig
from .layer import Linear, MoraLayer, mora_blocks, mora_delta, mora_delta_weight, mora_r_hat, mora_rank_bound
from .model import MoraModel

# Out-of-tree registration, as for TeRA: peft's register_peft_method only accepts names in its PeftType enum.
PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = MoraConfig
PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = MoraModel
PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = MoraModel.prefix
register_rank_bound(MoraLayer, mora_rank_bound)

__all__ = [
    "MORA_TYPES",
    "PEFT_TYPE",
    "Linear",
    "MoraConfig",
    "MoraLayer",
    "MoraModel",
    "mora_blocks",
    "mora_delta",
    "mora_delta_weight",
    "mora_r_hat",
    "mora_rank_bound",
]
