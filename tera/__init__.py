"""TeRA: vector-based random tensor-network adaptation, as a PEFT tuner.

Importing this package registers the ``"TERA"`` PEFT type, so ``peft.get_peft_model(model, TeraConfig(...))``,
``save_pretrained`` and ``PeftModel.from_pretrained`` work as for PEFT's own methods.
"""

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

from .analysis import LayerReport, adapter_report, register_rank_bound
from .config import PEFT_TYPE, TeraConfig
from .factors import SharedFactors, checksum, generate_factors
from .layer import Linear, TeraLayer
from .model import SharedFactorsMismatch, TeraModel
from .tensorize import TensorisationError, TensorPlan, balanced_split, plan_for_weight

# peft's register_peft_method only accepts names already in its PeftType enum; an out-of-tree tuner registers by
# filling the three mappings under its own string type.
PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = TeraConfig
PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = TeraModel
PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = TeraModel.prefix

__all__ = [
    "PEFT_TYPE",
    "LayerReport",
    "Linear",
    "SharedFactors",
    "SharedFactorsMismatch",
    "TensorPlan",
    "TensorisationError",
    "TeraConfig",
    "TeraLayer",
    "TeraModel",
    "adapter_report",
    "balanced_split",
    "checksum",
    "generate_factors",
    "plan_for_weight",
    "register_rank_bound",
]
