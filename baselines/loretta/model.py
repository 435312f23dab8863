"""The LoRETTA tuner: injects LoRETTA layers into the targeted nn.Linear modules."""

from __future__ import annotations

from ..linear_tuner import LinearReplacingTuner
from .layer import Linear, LorettaLayer


class LorettaModel(LinearReplacingTuner):
    """Adds LoRETTA adapters to a model.  Use through ``peft.get_peft_model(model, LorettaConfig(...))``.

    LoRETTA has no state shared between layers: each adapted layer owns the TT cores of its two factors per adapter.
    """

    prefix: str = "loretta_"
    tuner_layer_cls = LorettaLayer
    layer_cls = Linear
    method_label = "LoRETTA"
