"""The part of an out-of-tree tuner that is the same for every method that adapts nn.Linear layers one by one with
no state shared between layers (MoRA, LoRETTA): put a new layer in place of each target, or add an adapter to one
already there."""

from __future__ import annotations

from typing import Any, ClassVar

from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from tera.tuners_utils import linear_base


class LinearReplacingTuner(BaseTuner):
    """A subclass names ``layer_cls`` (its ``Linear(base, adapter_name, config)`` layer) and ``method_label``."""

    # These methods replace LoRA at the same places, so they take LoRA's default targets per architecture.
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    layer_cls: ClassVar[type[nn.Module]]
    method_label: ClassVar[str]

    def _create_and_replace(
        self,
        config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        linear_base(target, current_key, self.method_label)  # only nn.Linear targets; raises otherwise
        if isinstance(target, self.layer_cls):
            target.update_layer(adapter_name, config)
            return
        new_module = self.layer_cls(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # a further adapter is not trainable until it is made active
        self._replace_module(parent, target_name, new_module, target)
