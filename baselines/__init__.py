"""Every fine-tuning method of the suite behind one registry: name -> adapted model.

LoRA, DoRA, VeRA, HiRA, LoKr (the KronA family) and RandLoRA come from PEFT, TeRA from ``tera``, MoRA is implemented
in ``baselines.mora`` (it is not in PEFT), and ``full`` trains every weight.  ``baselines.analysis`` is the
cross-method rank and parameter report.
"""

from . import analysis  # registers every method's rank bound with the report (and MoRA's PEFT type)
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
