"""Every fine-tuning method of the suite behind one registry: name -> adapted model.

LoRA, DoRA, VeRA, HiRA, LoKr (the KronA family) and RandLoRA come from PEFT, TeRA from ``tera``, MoRA is implemented
in ``baselines.mora`` (it is not in PEFT), and ``full`` trains every weight.
"""

from .registry import METHODS, UnknownMethod, apply_method, make_peft_config

__all__ = ["METHODS", "UnknownMethod", "apply_method", "make_peft_config"]
