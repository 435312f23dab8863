"""Method name -> PEFT config factory, and one function that adapts a model with any method."""

from __future__ import annotations

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


# name -> factory(**peft_kwargs); None means full fine-tuning (no adapter).
METHODS: dict[str, ConfigFactory | None] = {
    "tera": tera.TeraConfig,
    "lora": LoraConfig,
    "dora": lambda **kw: LoraConfig(use_dora=True, **kw),
    "vera": VeraConfig,
    "hira": HiraConfig,
    "lokr": LoKrConfig,
    "randlora": RandLoraConfig,
    "mora": _mora,
    "full": None,
}


class UnknownMethod(ValueError):
    """A method name that the registry does not know, or options its config does not accept."""


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
        return factory(target_modules=list(target_modules), modules_to_save=modules_to_save, **peft_kwargs)
    except TypeError as err:  # an option the method's config does not have
        raise UnknownMethod(f"Method {name!r} does not accept these options ({err}); check method.peft.") from err


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
