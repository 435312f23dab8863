"""The TeRA tuner: injects TeRA layers and owns the frozen factors they share."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from .config import TeraConfig
from .factors import SharedFactors, adapter_checksum, checksum, generate_factors
from .layer import IDENTITY_SUFFIX, Linear, TeraLayer, core_key, factor_group, factor_key
from .mixed import check_adapter_names, trusting_tables
from .tensorize import TensorPlan, plan_for_weight
from .tuners_utils import linear_base

SHARED_ATTR = "tera_shared"
# Adapter files carry each factor group's checksum as a tensor under this name, so a state dict proves which factors
# it was trained with on its own, whatever config it is loaded with (PEFT's set_peft_model_state_dict path).
CHECKSUM_ATTR = "tera_checksum"


class SharedFactorsMismatch(ValueError):
    """Loading would compute another update than the one an adapter was trained with (factors, placement, scaling)."""


@dataclass(frozen=True)
class _FactorGroup:
    """One set of shared frozen factors on the model: its buffer keys and the digest of its generated values."""

    keys: tuple[str, ...]
    digest: str  # of the float32 values as generated, before any dtype cast


class TeraModel(BaseTuner):
    """Adds TeRA adapters to a model.  Use through ``peft.get_peft_model(model, TeraConfig(...))``.

    The frozen core and factor matrices of every tensor plan are stored once, in the ``tera_shared`` buffer dict of
    this module, keyed by plan (``<plan>_core``, ``<plan>_f<n>``), and are shared by every layer and every adapter with
    that plan.  Adapters on one model must therefore agree on ``projection_prng_key`` and ``save_projection``.  With
    ``share_factors=False`` (an ablation) the key is the plan and the layer's name: one set per layer.  Deleting the
    last adapter that uses a set of factors frees it.

    Every adapter records a checksum per factor group (:func:`tera.factors.adapter_checksum`: the factors, the
    diagonal placement and the scaling), in its config when it is created and in its state dict
    (``base_model.tera_checksum.<group>``, a uint8 tensor of the hex digits).  Every load compares the factors it will
    use with the checksums of the state dict and of the config as it arrived: a mismatch is refused, and so is a load
    where neither holds a checksum nor the file the factors (a file saved before state dicts carried checksums, with a
    new config), so a load never silently computes another model.  Weights in the state dict that no TeRA layer of
    the model takes (``target_modules`` edited since saving) are refused too.
    """

    uses_shared_state: bool = True
    prefix: str = "tera_lambda"
    tuner_layer_cls = TeraLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING

    def _pre_injection_hook(self, model: nn.Module, config: TeraConfig, adapter_name: str) -> None:
        # Called once, for the first adapter; later adapters reuse (and extend) these.
        self.tera_shared = BufferDict({}, persistent=config.save_projection)
        self._groups: dict[str, _FactorGroup] = {}
        self._arrived_checksums: dict[str, dict[str, str]] = {}  # adapter -> checksums its config came with

    def _check_new_adapter_config(self, config: TeraConfig) -> None:
        super()._check_new_adapter_config(config)
        new_name = next(name for name, conf in self.peft_config.items() if conf is config)
        # Called once per adapter before its layers are made. A loaded config arrives with checksums, a new one with
        # none; injection fills in the missing ones, so keep what arrived for the checks at load time.
        self._arrived_checksums[new_name] = dict(config.projection_checksums)
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
        self,
        plan: TensorPlan,
        group: str,
        config: TeraConfig,
        adapter_name: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """Create the factors of ``group`` once; record (or check) this adapter's checksum for them."""
        arrived = self._arrived_checksums.get(adapter_name, {})
        if group not in self._groups:
            if not config.share_factors and arrived and group not in arrived:
                raise SharedFactorsMismatch(
                    f"The TeRA adapter has per-layer factors (share_factors=False) but none recorded for layer group "
                    f"{group}: it was trained on a model whose modules are named differently; load it onto the same "
                    f"model class it was trained with."
                )
            stream = group.removesuffix(IDENTITY_SUFFIX)  # identity factors keep the random core of their plan
            generated = generate_factors(
                plan, config.projection_prng_key, stream=stream, factor_init=config.factor_init
            )
            # Factors take the weight's floating dtype: a bf16 model gets bf16 factors (the digest is of float32).
            target_dtype = dtype if dtype.is_floating_point else torch.float32
            keys = (core_key(group), *(factor_key(group, n) for n in range(len(plan.modes))))
            for key, tensor in zip(keys, (generated.core, *generated.factors)):
                self.tera_shared[key] = tensor.to(device=device, dtype=target_dtype)
            self._groups[group] = _FactorGroup(keys=keys, digest=checksum(generated))
        digest = self._checksum(group, config)
        recorded = arrived.get(group)
        if recorded is not None and not config.save_projection:
            _check_recorded(group, config, recorded, digest)  # fail before any weight is read
        config.projection_checksums[group] = recorded if recorded is not None else digest

    def _checksum(self, group: str, config: TeraConfig, tensors: list[torch.Tensor] | None = None) -> str:
        """This adapter's checksum of ``group``: of the factors as generated, or (when they are saved in the adapter
        file) of ``tensors`` / the stored buffers, the values a load will really use."""
        if tensors is None and config.save_projection:
            tensors = [self.tera_shared[key] for key in self._groups[group].keys]
        digest = self._groups[group].digest if tensors is None else checksum(SharedFactors(tensors[0], tensors[1:]))
        return adapter_checksum(digest, config.diagonal_placement, config.scaling)

    def _adapter_groups(self, adapter_name: str) -> set[str]:
        return {
            module.tera_factor_group[adapter_name]
            for module in self.model.modules()
            if isinstance(module, TeraLayer) and adapter_name in module.tera_factor_group
        }

    def _factor_keys(self, group: str) -> list[str]:
        return [f"base_model.{SHARED_ATTR}.{key}" for key in self._groups[group].keys]

    def _verify_load(
        self, adapter_name: str, config: TeraConfig, state_dict: dict[str, torch.Tensor], in_file: dict[str, str]
    ) -> None:
        """Refuse a load that cannot be shown to compute the update the adapter was trained with.

        ``in_file`` holds the checksums the state dict carries; the config's are the ones it arrived with.  A config
        made anew (``get_peft_model`` then ``set_peft_model_state_dict``) brings none, and the file's decide.
        """
        arrived = self._arrived_checksums.get(adapter_name, {})
        for group in sorted(self._adapter_groups(adapter_name)):
            recorded = [c for c in (arrived.get(group), in_file.get(group)) if c is not None]
            if config.save_projection:
                full = self._factor_keys(group)
                missing = [key for key in full if key not in state_dict]
                if missing:
                    raise ValueError(
                        f"The TeRA adapter file lacks the shared factors {missing} although its config says "
                        f"save_projection=True; the file is incomplete or belongs to another model, save it again."
                    )
                digest = self._checksum(group, config, [state_dict[key] for key in full])
            elif not recorded:
                raise SharedFactorsMismatch(_missing_checksum_message(group, config, {**in_file, **arrived}))
            else:
                digest = self._checksum(group, config)
            for expected in recorded:
                _check_recorded(group, config, expected, digest)
            # Saved factors replace the generated ones, whatever projection_prng_key the config names.
            config.projection_checksums[group] = digest

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
            layout=tera_config.layout,
            mode_size=tera_config.mode_size,
            whole_side=tera_config.whole_side,
        )
        weight = base.weight
        device = weight.device if weight.device.type != "meta" else torch.device("cpu")
        group = factor_group(plan, current_key, tera_config.share_factors, tera_config.factor_init)
        self._ensure_shared_factors(plan, group, tera_config, adapter_name, device, weight.dtype)
        if isinstance(target, Linear):
            target.update_layer(adapter_name, self.tera_shared, plan, tera_config, group=group)
            return
        new_module = Linear(target, self.tera_shared, plan, adapter_name, tera_config, group=group)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # a further adapter is not trainable until it is made active
        self._replace_module(parent, target_name, new_module, target)

    def release_merged_cache(self) -> None:
        """Drop every layer's kept ``W + dW`` (``cache_merged_weight``): after editing weights through ``.data``, or to
        free the memory; the next forward rebuilds what it needs."""
        for module in self.model.modules():
            if isinstance(module, TeraLayer):
                module.release_merged_cache()

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Hand ``adapter_names`` of ``PeftModel.forward`` / ``generate`` to every TeRA layer (and modules_to_save
        wrapper), as PEFT's LoRA does: without this hook PEFT drops the argument and every row would silently run
        through the active adapter.  Inference only, like PEFT; each layer then runs one contraction per factor
        group (tera.mixed)."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        layers = [m for m in self.model.modules() if isinstance(m, TeraLayer)]
        check_adapter_names(adapter_names, layers)
        num_beams = kwargs.get("num_beams")
        expanded = adapter_names
        if isinstance(num_beams, int) and num_beams > 1:
            if not isinstance(adapter_names, (list, tuple)):
                raise TypeError(f"Got adapter names of type {type(adapter_names)}, expected a list of str.")
            # Beam search repeats every input num_beams times; an encoder still sees the inputs once.
            expanded = [name for name in adapter_names for _ in range(num_beams)]
        handles = _inject_adapter_names(self.model, expanded)
        encoder = _get_encoder(self.model)
        if expanded is not adapter_names and encoder is not None:
            handles += _inject_adapter_names(encoder, adapter_names)  # registered later, so it runs last and wins
        try:
            with trusting_tables(layers):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter, and free the shared factors that no remaining adapter uses."""
        super().delete_adapter(adapter_name)
        self.release_merged_cache()
        self._arrived_checksums.pop(adapter_name, None)
        used = {
            group for m in self.model.modules() if isinstance(m, TeraLayer) for group in m.tera_factor_group.values()
        }
        for group in [g for g in self._groups if g not in used]:
            for key in self._groups.pop(group).keys:
                del self.tera_shared[key]

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        to_return = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        tuner = _find_tuner(model)
        for group in sorted(tuner._adapter_groups(adapter_name)):
            if config.save_projection:
                # One canonical copy of the factors this adapter's layers use, never one per layer.
                full = tuner._factor_keys(group)
                if any(key not in state_dict for key in full):
                    raise ValueError(
                        "The model was created with save_projection=False, so its shared factors are not part of "
                        "its state; set save_projection=False in the config before saving."
                    )
                to_return.update({key: state_dict[key] for key in full})
                # The config is written after the weights: record the checksum of the values in this file (they may
                # have been cast since the adapter was made, e.g. model.to(torch.bfloat16)).
                config.projection_checksums[group] = tuner._checksum(group, config, [state_dict[key] for key in full])
            recorded = config.projection_checksums.setdefault(group, tuner._checksum(group, config))
            to_return[f"base_model.{CHECKSUM_ATTR}.{group}"] = _encode_checksum(recorded)
        return to_return

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        in_file = {}
        for key in [k for k in remapped if CHECKSUM_ATTR in k.split(".")]:
            in_file[key.partition(f"{CHECKSUM_ATTR}.")[2]] = _decode_checksum(remapped.pop(key))
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
        tuner = _find_tuner(model)
        _refuse_unplaced(
            remapped, cls.prefix, {k for g in tuner._adapter_groups(adapter_name) for k in tuner._factor_keys(g)}
        )
        tuner._verify_load(adapter_name, config, remapped, in_file)
        return remapped


def _inject_adapter_names(module: nn.Module, adapter_names: Sequence[str]) -> list:
    """Forward pre-hooks passing ``adapter_names`` to every TeRA layer and modules_to_save wrapper under ``module``."""

    def hook(target: nn.Module, args: tuple, kwargs: dict, names: Sequence[str]) -> tuple[tuple, dict]:
        kwargs["adapter_names"] = names
        return args, kwargs

    return [
        sub.register_forward_pre_hook(partial(hook, names=adapter_names), with_kwargs=True)
        for sub in module.modules()
        if isinstance(sub, (TeraLayer, AuxiliaryTrainingWrapper))
    ]


def _get_encoder(model: nn.Module) -> nn.Module | None:
    """The encoder of an encoder-decoder model, else None (transformers v5 returns the model itself then)."""
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
    return None if encoder is model else encoder


def _find_tuner(model: nn.Module) -> TeraModel:
    """The TeraModel inside ``model`` (a PeftModel, or the tuner itself)."""
    if isinstance(model, TeraModel):
        return model
    tuner = next((m for m in model.modules() if isinstance(m, TeraModel)), None)
    if tuner is None:
        raise TypeError("TeRA adapters are saved and loaded through a PeftModel made by peft.get_peft_model.")
    return tuner


def _encode_checksum(digest: str) -> torch.Tensor:
    return torch.tensor(list(digest.encode("ascii")), dtype=torch.uint8)


def _decode_checksum(tensor: torch.Tensor) -> str:
    return bytes(tensor.detach().cpu().to(torch.uint8).tolist()).decode("ascii")


def _refuse_unplaced(remapped: dict[str, torch.Tensor], prefix: str, factor_keys: set[str]) -> None:
    """Refuse TeRA weights that no layer of the model takes: model.load_state_dict(strict=False) would skip them
    without a word (PEFT only warns about missing keys), and the adapter would silently lose those layers."""
    # PEFT's remap turns every checkpoint key "<module>.tera_lambda" the model has a layer for into
    # "<module>.tera_lambda.<adapter>"; the ones left as they were have no layer.
    lambdas = [k for k in remapped if k.split(".")[-1] == prefix]
    factors = [k for k in remapped if SHARED_ATTR in k.split(".") and k not in factor_keys]
    unplaced = lambdas + factors
    if unplaced:
        more = f" (and {len(unplaced) - 1} more)" if len(unplaced) > 1 else ""
        raise ValueError(
            f"The TeRA adapter holds {unplaced[0]!r}{more}, which no TeRA layer of this model takes because the "
            f"target_modules of its adapter_config.json (or of the config passed) do not cover it, so loading would "
            f"drop those weights and compute another model; load it with the target_modules, layers_to_transform and "
            f"exclude_modules it was saved with, onto the model it was trained on."
        )


def _check_recorded(group: str, config: TeraConfig, recorded: str, digest: str) -> None:
    if recorded == digest:
        return
    if config.save_projection:
        source = "stored in the adapter file"
        cause = "the config's diagonal_placement or scaling differ from the saved ones or the file was altered"
    else:
        source = f"regenerated from projection_prng_key={config.projection_prng_key}"
        cause = (
            "the config's projection_prng_key, diagonal_placement or scaling differ from the saved ones or this "
            "PyTorch version draws other factors"
        )
    raise SharedFactorsMismatch(
        f"The shared TeRA factors for {group}, {source}, with diagonal_placement={config.diagonal_placement!r} and "
        f"scaling={config.scaling!r} have checksum {digest}, not the {recorded} the adapter was saved with, so loading "
        f"would silently change the model: {cause}; load the adapter with the config it was saved with, or save it "
        f"with save_projection=True."
    )


def _missing_checksum_message(group: str, config: TeraConfig, known: dict[str, str]) -> str:
    if not known:
        return (
            f"The TeRA config being loaded has no projection_checksums and the adapter file holds neither shared "
            f"factors (save_projection=False) nor checksums (it predates them), so nothing shows that the factors "
            f"regenerated from projection_prng_key={config.projection_prng_key} are the ones the adapter was trained "
            f"with; load it with the config saved beside it (PeftModel.from_pretrained without config=, or "
            f"TeraConfig.from_pretrained(path))."
        )
    return (
        f"The TeRA adapter being loaded records checksums for {sorted(known)} but this model needs factor group "
        f"{group}: the config's layout, mode_size, whole_side, tensor_order, tensor_shape or core_rank_ratio were "
        f"edited, or the adapter was trained on a model with other weight shapes; load it with its saved config onto "
        f"the model it was trained on."
    )
