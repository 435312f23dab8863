"""TeRA: vector-based random tensor-network adaptation, as a PEFT tuner.

Importing this package registers the ``"TERA"`` PEFT type, so ``peft.get_peft_model(model, TeraConfig(...))``,
``save_pretrained`` and ``PeftModel.from_pretrained`` work as for PEFT's own methods.  PEFT has no entry point for
out-of-tree tuners, so a process that loads a TeRA adapter must ``import tera`` first; without it PEFT stops with
``KeyError: 'TERA'``.
"""

from . import autotune
from .analysis import LayerReport, adapter_report, register_effective_delta, register_rank_bound
from .config import PEFT_TYPE, TeraConfig, TeraPeftType
from .contraction import release_scratch
from .factors import SharedFactors, adapter_checksum, checksum, generate_factors
from .layer import Linear, TeraLayer
from .model import SharedFactorsMismatch, TeraModel
from .tensorize import TensorisationError, TensorPlan, balanced_split, plan_for_weight
from .tuners_utils import MergeByDeltaWeight, linear_base, register_tuner

register_tuner(PEFT_TYPE, TeraConfig, TeraModel)

__all__ = [
    "autotune",
    "PEFT_TYPE",
    "LayerReport",
    "Linear",
    "MergeByDeltaWeight",
    "SharedFactors",
    "SharedFactorsMismatch",
    "TensorPlan",
    "TensorisationError",
    "TeraConfig",
    "TeraLayer",
    "TeraModel",
    "TeraPeftType",
    "adapter_checksum",
    "adapter_report",
    "balanced_split",
    "checksum",
    "generate_factors",
    "linear_base",
    "plan_for_weight",
    "register_effective_delta",
    "register_rank_bound",
    "register_tuner",
    "release_scratch",
]
