"""Helpers for PEFT tuners that live outside PEFT's own tree (TeRA here, MoRA in ``baselines.mora``).

PEFT 0.21 has no entry point or plugin hook for out-of-tree tuners: ``peft.utils.register_peft_method`` accepts only
names that already exist in its ``PeftType`` enum, and ``PeftModel.from_pretrained`` looks the saved ``peft_type`` up in
``peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING`` before any code of ours can run.  So a tuner registers itself when its
package is imported (:func:`register_tuner`), and loading an adapter in a process that has not imported the package
ends in ``KeyError: '<TYPE>'`` (for TeRA: ``import tera`` before ``PeftModel.from_pretrained``).
"""

from __future__ import annotations

import enum
import warnings

import torch
from peft.config import PeftConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from torch import nn


def register_tuner(peft_type: enum.Enum, config_cls: type[PeftConfig], model_cls: type[BaseTuner]) -> None:
    """Make ``peft_type`` known to ``get_peft_model``, ``save_pretrained`` and ``PeftModel.from_pretrained``.

    ``peft_type`` should be a member of a ``(str, enum.Enum)`` class, like PEFT's own ``PeftType`` members: PEFT calls
    ``config.peft_type.value`` when it writes a model card and in its error messages, and looks the saved string up in
    its mappings (a str enum member hashes and compares equal to its value, so both keys work).
    """
    if not isinstance(peft_type, str) or not isinstance(peft_type, enum.Enum):
        raise TypeError(f"peft_type must be a member of a (str, enum.Enum) class, got {peft_type!r}.")
    owner = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
    if owner is not None and owner is not model_cls:
        raise ValueError(f"PEFT type {peft_type.value!r} is already registered by {owner.__name__}.")
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = model_cls.prefix


def linear_base(target: nn.Module, current_key: str | None, method: str) -> nn.Linear:
    """The nn.Linear under ``target`` (a plain module or an already adapted layer), or one clear TypeError."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if not isinstance(base, nn.Linear):
        raise TypeError(
            f"{method} target module {current_key!r} is a {type(base).__name__}, not an nn.Linear; remove it from "
            f"target_modules ({method} adapts nn.Linear layers only)."
        )
    return base


class MergeByDeltaWeight:
    """``merge`` / ``unmerge`` for tuner layers whose update is ``get_delta_weight(name)`` added to the base weight.

    Mixed into the ``Linear`` layers of TeRA and MoRA; the layer's first ``adapter_layer_names`` container says which
    adapters it holds.  Errors carry PEFT's own wording, which PEFT's tests and users' code match on.
    """

    def _holds(self, name: str) -> bool:
        return name in getattr(self, self.adapter_layer_names[0])

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in adapter_names or []:
            if not self._holds(name):
                continue
            if safe_merge:
                weight = base.weight.data.clone()  # on a copy, so a broken adapter leaves the weight untouched
                weight += self.get_delta_weight(name)
                if not torch.isfinite(weight).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
                base.weight.data = weight
            else:
                base.weight.data += self.get_delta_weight(name)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if self._holds(name):
                base.weight.data -= self.get_delta_weight(name)
