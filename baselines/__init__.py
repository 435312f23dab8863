"""Every fine-tuning method of the suite behind one registry: name -> adapted model.

LoRA, DoRA, VeRA, HiRA, LoKr (the KronA family) and RandLoRA come from PEFT, TeRA from ``tera``, MoRA and LoRETTA
are implemented in ``baselines.mora`` and ``baselines.loretta`` (they are not in PEFT), and ``full`` trains every
weight.  ``baselines.analysis`` is the cross-method rank and parameter report.
"""

from . import analysis  # registers every method's rank bound with the report (and the PEFT types of MoRA and LoRETTA)
from .registry import METHODS, UnknownMethod, apply_method, check_targets, make_peft_config, trains_every_weight

__all__ = [
    "METHODS",
    "UnknownMethod",
    "apply_method",
    "check_targets",
    "make_peft_config",
    "trains_every_weight",
    "analysis",
]
