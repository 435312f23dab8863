"""TeRA layers: per-layer trainable diagonals on top of frozen factors shared through the model."""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .autotune import pick_path
from .config import TeraConfig
from .contraction import cast, delta_weight, factorised_delta, merged_linear, merged_weight
from .cost import FACTORISED, MERGED
from .mixed import RowTable, check_forward_args, mixed_batch_forward
from .tensorize import TensorPlan, shape_key, whole_output_side
from .tuners_utils import MergeByDeltaWeight

IDENTITY_SUFFIX = "__identity"


def factor_group(
    plan: TensorPlan, module_name: str | None, share_factors: bool, factor_init: str = "orthonormal"
) -> str:
    """Name of the set of frozen factors a layer uses: its tensor plan when shared, the plan and layer otherwise, and
    a suffix for identity factors (they are another set than the random ones of the same plan).

    It keys the model's buffer dict, the checksums and the random stream; buffer names cannot hold dots.
    """
    suffix = IDENTITY_SUFFIX if factor_init == "identity" else ""
    if share_factors:
        return plan.key + suffix
    if not module_name:
        raise ValueError("TeRA with share_factors=False needs the name of every adapted module to seed its factors.")
    return f"{plan.key}__{module_name.replace('.', '_')}{suffix}"


def zero_mode(plan: TensorPlan, config: Any) -> int:
    """The mode whose diagonal starts at zero: ``zero_init_mode`` when given, else the whole side's mode in the
    paper's layout (its mode 1: the output side when it is whole) and mode 0 in the balanced one."""
    if config.zero_init_mode is not None:
        return config.zero_init_mode
    if config.layout == "balanced" or config.tensor_shape and shape_key(plan.d_out, plan.d_in) in config.tensor_shape:
        return 0
    return 0 if whole_output_side(plan.d_out, plan.d_in, config.whole_side) else plan.num_out_modes


def core_key(group: str) -> str:
    return f"{group}_core"


def factor_key(group: str, mode: int) -> str:
    return f"{group}_f{mode}"


class TeraLayer(BaseTunerLayer):
    # The only trained tensors: one vector per adapter holding all diagonals of this layer, concatenated mode by mode.
    adapter_layer_names = ("tera_lambda",)
    other_param_names = (
        "tera_plan",
        "tera_factor_group",
        "tera_placement",
        "tera_scaling",
        "tera_forward_path",
        "tera_cache_merged",
        "tera_zero_mode",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.tera_lambda = nn.ParameterDict({})
        self.tera_plan: dict[str, TensorPlan] = {}
        self.tera_factor_group: dict[str, str] = {}  # which frozen factors of the model each adapter uses
        self.tera_placement: dict[str, str] = {}
        self.tera_scaling: dict[str, float] = {}
        self.tera_forward_path: dict[str, str] = {}
        self.tera_cache_merged: dict[str, bool] = {}
        self.tera_zero_mode: dict[str, int] = {}  # the mode whose vector started at zero (run records show it)
        # W + dW per adapter with the key of the tensors it was built from (cache_merged_weight); not state.
        self._tera_merged_cache: dict[str, tuple[tuple, torch.Tensor]] = {}
        # Per factor group, the stacked per-row vectors of its adapters for mixed-adapter batches (tera.mixed); a
        # cache of tera_lambda, rebuilt when an adapter is added or deleted and refreshed row by row when a batch
        # names an adapter loaded or trained since; not state.
        self._tera_row_tables: dict[str, RowTable] = {}
        self._tera_adapter_epoch = 0  # bumped when an adapter is added or deleted: the tables are then rebuilt
        self._tera_tables_checked: dict | None = None  # set within one forward / generate call (tera.mixed)
        # The shared factors live once on the TeraModel; a plain (unregistered) reference keeps them out of this
        # layer's state dict and out of `.to()` twice.
        object.__setattr__(self, "_tera_shared", None)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        base = self.get_base_layer()
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        shared: BufferDict,
        plan: TensorPlan,
        config: TeraConfig,
        group: str,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        if not 0 <= zero_mode(plan, config) < len(plan.modes):
            raise ValueError(
                f"zero_init_mode={config.zero_init_mode} does not index one of the {len(plan.modes)} modes of "
                f"tensor plan {plan.key}; choose a value below {len(plan.modes)}."
            )
        object.__setattr__(self, "_tera_shared", shared)
        self._tera_adapter_epoch += 1
        self.tera_plan[adapter_name] = plan
        self.tera_factor_group[adapter_name] = group  # from factor_group(): the plan when shared
        self.tera_placement[adapter_name] = config.diagonal_placement
        self.tera_scaling[adapter_name] = config.scaling
        self.tera_forward_path[adapter_name] = config.forward_path
        self.tera_cache_merged[adapter_name] = config.cache_merged_weight
        self.tera_zero_mode[adapter_name] = zero_mode(plan, config)
        self._tera_merged_cache.pop(adapter_name, None)
        self.tera_lambda[adapter_name] = nn.Parameter(torch.zeros(sum(self._lambda_sizes(adapter_name))))
        self.reset_tera_parameters(adapter_name, config)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _lambda_sizes(self, adapter_name: str) -> tuple[int, ...]:
        plan = self.tera_plan[adapter_name]
        return plan.ranks if self.tera_placement[adapter_name] == "rank" else plan.modes

    def reset_tera_parameters(self, adapter_name: str, config: TeraConfig) -> None:
        sizes = self._lambda_sizes(adapter_name)
        with torch.no_grad():
            lam = self.tera_lambda[adapter_name]
            if config.init_weights:
                lam.fill_(config.init_lambda)
                mode = zero_mode(self.tera_plan[adapter_name], config)
                start = sum(sizes[:mode])
                lam[start : start + sizes[mode]] = 0.0  # dW = 0: start from the pretrained model
            else:
                # Random diagonals bounded away from zero, so dW reaches its rank bound.
                lam.copy_(config.init_lambda * torch.empty_like(lam).uniform_(0.5, 1.5))

    def lambdas(self, adapter_name: str) -> tuple[torch.Tensor, ...]:
        """The diagonals of ``adapter_name``, one view per mode."""
        return torch.split(self.tera_lambda[adapter_name], self._lambda_sizes(adapter_name))

    def shared_factors(self, adapter_name: str, dtype: torch.dtype, device: torch.device):
        plan, group = self.tera_plan[adapter_name], self.tera_factor_group[adapter_name]
        shared = self._tera_shared
        core = cast(shared[core_key(group)], dtype, device)
        factors = [cast(shared[factor_key(group, n)], dtype, device) for n in range(len(plan.modes))]
        return core, factors

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The update ``dW`` (``d_out x d_in``) that merging adds to the base weight."""
        weight = self.get_base_layer().weight
        # Some CPUs have slow half-precision matmuls: build the update in float32 there, then cast.
        half = weight.dtype in (torch.float16, torch.bfloat16)
        compute_dtype = torch.float32 if half and weight.device.type == "cpu" else weight.dtype
        core, factors = self.shared_factors(adapter_name, compute_dtype, weight.device)
        lambdas = [lam.to(compute_dtype) for lam in self.lambdas(adapter_name)]
        plan = self.tera_plan[adapter_name]
        delta = delta_weight(
            plan, core, factors, lambdas, self.tera_placement[adapter_name], self.tera_scaling[adapter_name]
        )
        return delta.to(weight.dtype)

    def num_trainable(self, adapter_name: str) -> int:
        return self.tera_lambda[adapter_name].numel()

    def rank_bound(self, adapter_name: str) -> int:
        plan = self.tera_plan[adapter_name]
        placement_sizes = None if self.tera_placement[adapter_name] == "rank" else plan.modes
        return plan.rank_bound(placement_sizes)

    def _adapter_operands(self, name: str, x: torch.Tensor):
        """Plan, core and factors (in x's dtype), diagonals, placement and scale of one adapter."""
        core, factors = self.shared_factors(name, x.dtype, x.device)
        return (
            self.tera_plan[name],
            core,
            factors,
            self.lambdas(name),
            self.tera_placement[name],
            self.tera_scaling[name],
        )

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._tera_adapter_epoch += 1  # tera.mixed: a table must not keep a row for an adapter that is gone

    def release_merged_cache(self) -> None:
        """Drop the kept ``W + dW`` of every adapter (cache_merged_weight) and the mixed-batch tables; the next forward
        rebuilds what it needs."""
        self._tera_merged_cache.clear()
        self._tera_row_tables.clear()

    def _cache_key(self, adapter_name: str, dtype: torch.dtype, device: torch.device) -> tuple:
        """What the kept ``W + dW`` depends on: every in-place update (an optimizer step, ``load_state_dict``) bumps a
        tensor's version, a move or a reassignment changes its storage."""
        shared = self._tera_shared
        group = self.tera_factor_group[adapter_name]
        tensors = [
            self.get_base_layer().weight,
            self.tera_lambda[adapter_name],
            shared[core_key(group)],
            *(shared[factor_key(group, n)] for n in range(len(self.tera_plan[adapter_name].modes))),
        ]
        # A copy built under inference_mode cannot be saved for a backward pass: training builds its own.
        inference = torch.is_inference_mode_enabled()
        return (
            dtype,
            device,
            inference,
            self.tera_scaling[adapter_name],
            *((t.data_ptr(), t._version) for t in tensors),
        )

    def kept_merged_weight(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor | None:
        """``W + dW`` of ``adapter_name`` for the merged path: the kept one when still current, else built and kept;
        ``None`` when the adapter does not keep it."""
        if not self.tera_cache_merged.get(adapter_name, False):
            return None
        key = self._cache_key(adapter_name, x.dtype, x.device)
        kept = self._tera_merged_cache.get(adapter_name)
        if kept is not None and kept[0] == key:
            return kept[1]
        self._tera_merged_cache.pop(adapter_name, None)  # free the stale copy before building the new one
        plan, core, factors, lambdas, placement, scale = self._adapter_operands(adapter_name, x)
        merged = merged_weight(plan, self.get_base_layer().weight, core, factors, lambdas, placement, scale)
        self._tera_merged_cache[adapter_name] = (key, merged)
        return merged

    def choose_path(self, adapter_name: str, x: torch.Tensor) -> str:
        forced = self.tera_forward_path[adapter_name]
        if forced != "auto":
            return forced
        if self.tera_cache_merged[adapter_name]:
            return MERGED  # with W + dW kept, the merged path is one plain matmul: nothing to time
        training = torch.is_grad_enabled() and self.tera_lambda[adapter_name].requires_grad

        def operands():
            base = self.get_base_layer()
            core, factors = self.shared_factors(adapter_name, x.dtype, x.device)
            scale = self.tera_scaling[adapter_name]
            return base.weight, base.bias, core, factors, self.lambdas(adapter_name), scale

        return pick_path(self.tera_plan[adapter_name], x, self.tera_placement[adapter_name], training, operands)


class Linear(nn.Module, MergeByDeltaWeight, TeraLayer):
    """TeRA on an ``nn.Linear``."""

    def __init__(
        self,
        base_layer: nn.Module,
        shared: BufferDict,
        plan: TensorPlan,
        adapter_name: str,
        config: TeraConfig,
        group: str,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        TeraLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, shared, plan, config, group=group)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_names = kwargs.pop("adapter_names", None)  # injected by TeraModel's hook for mixed-adapter batches
        if adapter_names is not None:
            check_forward_args(self, x, adapter_names)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return mixed_batch_forward(self, x, adapter_names, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.tera_lambda]
        if not active:
            return self.base_layer(x, *args, **kwargs)

        base = self.get_base_layer()
        previous_dtype = x.dtype
        x = self._cast_input_dtype(x, base.weight.dtype)
        paths = {name: self.choose_path(name, x) for name in active}
        if len(active) == 1 and paths[active[0]] == MERGED and type(base) is nn.Linear:
            # One matmul with W + dW; the custom backward recomputes dW instead of storing it, unless the layer
            # keeps W + dW between steps (cache_merged_weight).
            name = active[0]
            plan, core, factors, lambdas, placement, scale = self._adapter_operands(name, x)
            kept = self.kept_merged_weight(name, x)
            result = merged_linear(plan, x, base.weight, base.bias, core, factors, lambdas, placement, scale, kept)
            return result.to(previous_dtype)

        result = self.base_layer(x, *args, **kwargs)
        for name in active:
            plan, core, factors, lambdas, placement, scale = self._adapter_operands(name, x)
            if paths[name] == FACTORISED:
                result = result + factorised_delta(plan, x, core, factors, lambdas, placement, scale)
            else:  # several adapters at once: add each update separately (autograd keeps its dW)
                result = result + nn.functional.linear(x, delta_weight(plan, core, factors, lambdas, placement, scale))
        return result.to(previous_dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        self.release_merged_cache()  # merging edits the weight through .data, which no version counter sees
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        self.release_merged_cache()
        super().unmerge()

    def __repr__(self) -> str:
        return "tera." + super().__repr__()
