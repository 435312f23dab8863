"""The MoRA tuner: injects MoRA layers into the targeted nn.Linear modules."""

from __future__ import annotations

from ..linear_tuner import LinearReplacingTuner
from .layer import Linear, MoraLayer


class MoraModel(LinearReplacingTuner):
    """Adds MoRA adapters to a model.  Use through ``peft.get_peft_model(model, MoraConfig(...))``.

    MoRA has no state shared between layers: each adapted layer owns its ``r_hat x r_hat`` matrix per adapter.
    """

    prefix: str = "mora_"
    tuner_layer_cls = MoraLayer
    layer_cls = Linear
    method_label = "MoRA"
