"""Every fine-tuning method of the suite behind one registry: name -> adapted model.

LoRA, DoRA, VeRA, HiRA, LoKr (the KronA family), RandLoRA, Prompt Tuning and P-Tuning come from PEFT, TeRA from
``tera``, MoRA and LoRETTA are implemented in ``baselines.mora`` and ``baselines.loretta`` (they are not in PEFT), and
``full`` trains every weight. Prompt Tuning and P-Tuning (``VIRTUAL_TOKEN_METHODS``) train virtual tokens prepended
to a decoder's input and adapt no layer.  ``baselines.analysis`` is the cross-method rank and parameter report.
"""

from . import analysis  # registers every method's rank bound with the report (and the PEFT types of MoRA and LoRETTA)
from .registry import (
    METHODS,
    VIRTUAL_TOKEN_METHODS,
    UnknownMethod,
    adds_virtual_tokens,
    apply_method,
    check_mergeable,
    check_targets,
    make_peft_config,
    trains_every_weight,
)

__all__ = [
    "METHODS",
    "VIRTUAL_TOKEN_METHODS",
    "UnknownMethod",
    "adds_virtual_tokens",
    "apply_method",
    "check_mergeable",
    "check_targets",
    "make_peft_config",
    "trains_every_weight",
    "analysis",
]
