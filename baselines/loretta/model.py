"""The LoRETTA tuner: injects LoRETTA layers into the targeted nn.Linear modules."""

from __future__ import annotations

from typing import Any

from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from tera.tuners_utils import linear_base

from .config import LorettaConfig
from .layer import Linear, LorettaLayer


class LorettaModel(BaseTuner):
    """Adds LoRETTA adapters to a model.  Use through ``peft.get_peft_model(model, LorettaConfig(...))``.

    LoRETTA has no state shared between layers: each adapted layer owns the TT cores of its two factors per adapter.
    """

    prefix: str = "loretta_"
    tuner_layer_cls = LorettaLayer
    # LoRETTA_rep replaces LoRA at the same places (the authors' code uses LoRA's default targets too).
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self,
        loretta_config: LorettaConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        linear_base(target, current_key, "LoRETTA")  # only nn.Linear targets; raises otherwise
        if isinstance(target, Linear):
            target.update_layer(adapter_name, loretta_config)
            return
        new_module = Linear(target, adapter_name, loretta_config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # a further adapter is not trainable until it is made active
        self._replace_module(parent, target_name, new_module, target)
