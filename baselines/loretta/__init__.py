"""LoRETTA (Yang et al., NAACL 2024, "LoRETTA: Low-Rank Economic Tensor-Train Adaptation for Ultra-Low-Parameter
Fine-Tuning of Large Language Models"), its re-parameterised, mergeable form (LoRETTA_rep), as a PEFT tuner.

Importing this package registers the ``"LORETTA"`` PEFT type, so ``peft.get_peft_model(model, LorettaConfig(...))``,
``save_pretrained`` and ``PeftModel.from_pretrained`` work as for PEFT's own methods (``import baselines`` does it
too).  LoRETTA's rank bound joins the cross-method report in ``baselines.analysis``.
"""

from tera.tuners_utils import register_tuner

from .config import PEFT_TYPE, LorettaConfig, LorettaPeftType
from .layer import (
    Linear,
    LorettaLayer,
    TensorTrain,
    loretta_factors,
    loretta_rank_bound,
    tensor_modes,
    tensor_train,
    tt_cores,
    tt_matrix,
)
from .model import LorettaModel

# Out-of-tree registration, as for TeRA and MoRA: peft's register_peft_method only accepts names in its PeftType enum.
register_tuner(PEFT_TYPE, LorettaConfig, LorettaModel)

__all__ = [
    "PEFT_TYPE",
    "Linear",
    "LorettaConfig",
    "LorettaLayer",
    "LorettaModel",
    "LorettaPeftType",
    "TensorTrain",
    "loretta_factors",
    "loretta_rank_bound",
    "tensor_modes",
    "tensor_train",
    "tt_cores",
    "tt_matrix",
]
