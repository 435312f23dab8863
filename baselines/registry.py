"""Method name -> PEFT config factory, and one function that adapts a model with any method."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from peft import (
    HiraConfig,
    LoKrConfig,
    LoraConfig,
    PeftConfig,
    RandLoraConfig,
    VeraConfig,
    get_peft_model,
)
from torch import nn

import tera

ConfigFactory = Callable[..., PeftConfig]


def _mora(**kwargs: Any) -> PeftConfig:
    from .mora import MoraConfig  # imported on use: registers the MORA peft type

    return MoraConfig(**kwargs)


def _loretta(**kwargs: Any) -> PeftConfig:
    from .loretta import LorettaConfig  # imported on use: registers the LORETTA peft type

    return LorettaConfig(**kwargs)


# name -> factory(**peft_kwargs); None means full fine-tuning (no adapter).
METHODS: dict[str, ConfigFactory | None] = {
    "tera": tera.TeraConfig,
    # The suite's earlier layout under its own name: both sides in balanced modes, far cheaper frozen factors.
    "tera-balanced": lambda **kw: tera.TeraConfig(**{"layout": "balanced", **kw}),
    "lora": LoraConfig,
    "dora": lambda **kw: LoraConfig(use_dora=True, **kw),
    "vera": VeraConfig,
    "hira": HiraConfig,  # r=32 (conf/method/hira.yaml), the paper's high-rank HiRA
    "hira-r1": lambda **kw: HiraConfig(**{"r": 1, **kw}),  # the paper's HiRA r=1 row: about VeRA's trained count
    "lokr": LoKrConfig,
    "randlora": RandLoraConfig,
    "mora": _mora,
    "loretta": _loretta,
    "full": None,
}


class UnknownMethod(ValueError):
    """A method name that the registry does not know, or options its config does not accept."""


def trains_every_weight(name: str) -> bool:
    """Full fine-tuning: no adapter, every weight trains (no rank report, no separate head learning rate)."""
    _check(name)
    return METHODS[name] is None


def _check(name: str) -> None:
    if name not in METHODS:
        raise UnknownMethod(f"Unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}.")


def make_peft_config(
    name: str,
    target_modules: list[str],
    modules_to_save: list[str] | None = None,
    task_type: str | None = None,
    **peft_kwargs: Any,
) -> PeftConfig | None:
    """The PEFT config of method ``name`` (``None`` for full fine-tuning); ``task_type`` e.g. ``CAUSAL_LM``."""
    _check(name)
    factory = METHODS[name]
    if factory is None:
        if peft_kwargs:
            raise UnknownMethod(f"Full fine-tuning takes no adapter options, got {sorted(peft_kwargs)}; drop them.")
        return None
    if task_type is not None:
        peft_kwargs["task_type"] = task_type
    try:
        with warnings.catch_warnings():
            # VeRA and RandLoRA remind that their projections are regenerated from the PRNG key, not saved: the
            # suite's documented choice, said once in the README, not at every run.
            warnings.filterwarnings("ignore", message="Specified to not save", category=UserWarning)
            return factory(target_modules=list(target_modules), modules_to_save=modules_to_save, **peft_kwargs)
    except TypeError as err:  # an option the method's config does not have
        raise UnknownMethod(f"Method {name!r} does not accept these options ({err}); check method.peft.") from err
    except ValueError as err:  # a value the method's config refuses (its own check, e.g. a ratio out of range)
        raise UnknownMethod(
            f"Method {name!r} refuses these options: {str(err).rstrip('.')}; check method.peft."
        ) from err


# Methods whose layers wrap nn.Linear only (PEFT's LoRA family also takes embeddings and convolutions).
LINEAR_ONLY = {"tera", "tera-balanced", "mora", "loretta", "vera", "randlora", "hira", "hira-r1"}


def check_targets(model: nn.Module, name: str, target_modules: list[str]) -> None:
    """Refuse targets that match no module, or (for Linear-only methods) a module that is not a linear layer, with one
    sentence that lists what the model's linear layers are called."""
    if METHODS.get(name) is None:  # full fine-tuning has no targets
        return
    from transformers.pytorch_utils import Conv1D

    linear = (nn.Linear, Conv1D)
    matched = {
        target: [module for key, module in model.named_modules() if key == target or key.endswith(f".{target}")]
        for target in target_modules
    }
    linear_names = sorted({key.rsplit(".", 1)[-1] for key, m in model.named_modules() if isinstance(m, linear)})
    unmatched = [target for target, modules in matched.items() if not modules]
    if unmatched:
        raise UnknownMethod(
            f"Target module(s) {unmatched} match nothing in {type(model).__name__}; its linear layers are named "
            f"{linear_names} (set method.target_modules)."
        )
    if name in LINEAR_ONLY:
        for target, modules in matched.items():
            other = sorted({type(m).__name__ for m in modules if not isinstance(m, linear)})
            if other:
                raise UnknownMethod(
                    f"Target {target!r} matches {', '.join(other)} module(s), but {name} adapts linear layers only; "
                    f"choose among {linear_names} (method.target_modules)."
                )


def apply_method(
    model: nn.Module,
    name: str,
    target_modules: list[str],
    modules_to_save: list[str] | None = None,
    task_type: str | None = None,
    **peft_kwargs: Any,
) -> nn.Module:
    """Adapt ``model`` with method ``name``: a PeftModel, or the model itself with every weight trainable."""
    config = make_peft_config(name, target_modules, modules_to_save, task_type, **peft_kwargs)
    if config is None:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    return get_peft_model(model, config)
