"""The TeRA tuner: injects TeRA layers and owns the frozen factors they share."""

from __future__ import annotations

import warnings

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING
from torch import nn

from .config import TeraConfig
from .factors import checksum, generate_factors
from .layer import Linear, TeraLayer, core_key, factor_group, factor_key, linear_base
from .tensorize import TensorPlan, plan_for_weight

SHARED_ATTR = "tera_shared"


class SharedFactorsMismatch(ValueError):
    """Regenerated shared factors differ from the ones an adapter was trained with."""


class TeraModel(BaseTuner):
    """Adds TeRA adapters to a model.  Use through ``peft.get_peft_model(model, TeraConfig(...))``.

    The frozen core and factor matrices of every tensor plan are stored once, in the ``tera_shared`` buffer dict of
    this module, keyed by plan (``<plan>_core``, ``<plan>_f<n>``), and are shared by every layer and every adapter with
    that plan.  Adapters on one model must therefore agree on ``projection_prng_key`` and ``save_projection``.  With
    ``share_factors=False`` (an ablation) the key is the plan and the layer's name: one set per layer.
    """

    uses_shared_state: bool = True
    prefix: str = "tera_lambda"
    tuner_layer_cls = TeraLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING

    def _pre_injection_hook(self, model: nn.Module, config: TeraConfig, adapter_name: str) -> None:
        self.tera_shared = BufferDict({}, persistent=config.save_projection)

    def _check_new_adapter_config(self, config: TeraConfig) -> None:
        super()._check_new_adapter_config(config)
        # Called once per adapter before its layers are made: the checksums a loaded config arrives with (none for a
        # new adapter). A per-layer adapter must find its every layer group there.
        self._recorded_groups = set(config.projection_checksums)
        new_name = next(name for name, conf in self.peft_config.items() if conf is config)
        for name, other in self.peft_config.items():
            if other is config:
                continue
            for field in ("projection_prng_key", "save_projection"):
                if getattr(other, field) != getattr(config, field):
                    raise ValueError(
                        f"TeRA adapter {new_name!r} has {field}={getattr(config, field)!r} but adapter {name!r} "
                        f"already set the shared frozen factors with {field}={getattr(other, field)!r}; all TeRA "
                        f"adapters on one model share these factors, so give them the same {field}."
                    )

    def _ensure_shared_factors(
        self, plan: TensorPlan, group: str, config: TeraConfig, device: torch.device, dtype
    ) -> None:
        """Create the factors of ``group`` once; check them against the config's recorded checksum."""
        shared: BufferDict = self.tera_shared
        if core_key(group) in shared:
            return
        recorded_groups = getattr(self, "_recorded_groups", set())
        if not config.share_factors and recorded_groups and group not in recorded_groups:
            raise SharedFactorsMismatch(
                f"The TeRA adapter has per-layer factors (share_factors=False) but none recorded for layer group "
                f"{group}: it was trained on a model whose modules are named differently; load it onto the same model "
                f"class it was trained with."
            )
        generated = generate_factors(plan, config.projection_prng_key, stream=group)
        digest = checksum(generated)
        recorded = config.projection_checksums.get(group)
        if recorded is not None and recorded != digest and not config.save_projection:
            raise SharedFactorsMismatch(
                f"The shared TeRA factors regenerated for {group} (checksum {digest}) differ from those the adapter "
                f"was trained with ({recorded}), so loading would silently change the model; load it with the PyTorch "
                f"version it was saved with, or save the adapter with save_projection=True."
            )
        config.projection_checksums[group] = digest
        # Factors take the weight's floating dtype: a bf16 model gets bf16 factors (the checksum is of float32 values).
        target_dtype = dtype if dtype.is_floating_point else torch.float32
        shared[core_key(group)] = generated.core.to(device=device, dtype=target_dtype)
        for mode, factor in enumerate(generated.factors):
            shared[factor_key(group, mode)] = factor.to(device=device, dtype=target_dtype)

    def _create_and_replace(
        self, tera_config: TeraConfig, adapter_name: str, target, target_name, parent, current_key=None, **kwargs
    ) -> None:
        base = linear_base(target, current_key, "TeRA")
        plan = plan_for_weight(
            base.out_features,
            base.in_features,
            tensor_order=tera_config.tensor_order,
            tensor_shape=tera_config.tensor_shape,
            core_rank_ratio=tera_config.core_rank_ratio,
        )
        weight = base.weight
        device = weight.device if weight.device.type != "meta" else torch.device("cpu")
        group = factor_group(plan, current_key, tera_config.share_factors)
        self._ensure_shared_factors(plan, group, tera_config, device, weight.dtype)
        if isinstance(target, Linear):
            target.update_layer(adapter_name, self.tera_shared, plan, tera_config, group=group)
            return
        new_module = Linear(target, self.tera_shared, plan, adapter_name, tera_config, group=group)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # a further adapter is not trainable until it is made active
        self._replace_module(parent, target_name, new_module, target)

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        to_return = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        if config.save_projection:
            # One canonical copy of the factors this adapter's layers use, never one per layer.
            keys = set()
            for module in model.modules():
                if isinstance(module, TeraLayer) and adapter_name in module.tera_plan:
                    plan, group = module.tera_plan[adapter_name], module.tera_factor_group[adapter_name]
                    keys.add(core_key(group))
                    keys.update(factor_key(group, n) for n in range(len(plan.modes)))
            for key in sorted(keys):
                full = f"base_model.{SHARED_ATTR}.{key}"
                if full not in state_dict:
                    raise ValueError(
                        "The model was created with save_projection=False, so its shared factors are not part of its "
                        "state; set save_projection=False in the config before saving."
                    )
                to_return[full] = state_dict[full]
        return to_return

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        has_factors = any(f".{SHARED_ATTR}." in key for key in remapped)
        if config.save_projection and not has_factors:
            raise ValueError(
                "The TeRA config says save_projection=True but the adapter file holds no shared factors; the file is "
                "incomplete, save it again."
            )
        if not config.save_projection and has_factors:
            warnings.warn(
                "The adapter file holds shared TeRA factors although save_projection=False; ignoring them.",
                stacklevel=2,
            )
            remapped = {k: v for k, v in remapped.items() if f".{SHARED_ATTR}." not in k}
        return remapped
