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
    PromptEncoderConfig,
    PromptTuningConfig,
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


def _prompt_tuning(**kwargs: Any) -> PeftConfig:
    # 20 virtual tokens: the paper's Prompt Tuning row (20 x 4096 = 81,920 trained values on LLaMA-2-7B).
    return PromptTuningConfig(**{"num_virtual_tokens": 20, **kwargs})


def _p_tuning(**kwargs: Any) -> PeftConfig:
    # 20 virtual tokens through PEFT's MLP prompt encoder; PEFT sizes its hidden layer as the model's hidden size when
    # encoder_hidden_size is not given (peft.utils.other._prepare_prompt_learning_config), the paper's P-Tuning row.
    return PromptEncoderConfig(**{"num_virtual_tokens": 20, "encoder_reparameterization_type": "MLP", **kwargs})


# name -> factory(**peft_kwargs); None means full fine-tuning (no adapter).
METHODS: dict[str, ConfigFactory | None] = {
    "tera": tera.TeraConfig,
    # The suite's earlier layout under its own name: both sides in balanced modes, far cheaper frozen factors.
    "tera-balanced": lambda **kw: tera.TeraConfig(**{"layout": "balanced", **kw}),
    # The paper's layout with the output side whole: LLaMA-3-8B's 0.0021% of its Tables 3 and 4 (PAPER.md section 2).
    "tera-output": lambda **kw: tera.TeraConfig(**{"whole_side": "output", **kw}),
    "lora": LoraConfig,
    "lora-r32": lambda **kw: LoraConfig(**{"r": 32, "lora_alpha": 64, **kw}),  # the paper's LoRA rows
    "dora": lambda **kw: LoraConfig(use_dora=True, **kw),
    "vera": VeraConfig,
    "hira": HiraConfig,  # r=32 (conf/method/hira.yaml), the paper's high-rank HiRA
    "hira-r1": lambda **kw: HiraConfig(**{"r": 1, **kw}),  # the paper's HiRA r=1 row: about VeRA's trained count
    "lokr": LoKrConfig,
    "randlora": RandLoraConfig,
    "mora": _mora,
    "loretta": _loretta,
    "prompt-tuning": _prompt_tuning,  # trains 20 virtual token embeddings prepended to every input
    "p-tuning": _p_tuning,  # trains the virtual tokens through an MLP prompt encoder
    "full": None,
}

# Methods that prepend trained virtual tokens to a decoder's input instead of adapting linear layers: they take no
# target modules, have no dW (the rank of dW is n/a) and run on causal LMs only (PEFT's CAUSAL_LM task type).
VIRTUAL_TOKEN_METHODS = frozenset({"prompt-tuning", "p-tuning"})


class UnknownMethod(ValueError):
    """A method name that the registry does not know, or options its config does not accept."""


def trains_every_weight(name: str) -> bool:
    """Full fine-tuning: no adapter, every weight trains (no rank report, no separate head learning rate)."""
    _check(name)
    return METHODS[name] is None


def adds_virtual_tokens(name: str) -> bool:
    """Prompt Tuning and P-Tuning: trained virtual tokens before the input, no adapted weight (no dW, no rank)."""
    _check(name)
    return name in VIRTUAL_TOKEN_METHODS


def check_mergeable(name: str) -> None:
    """Refuse, in one sentence, to fold a virtual-token method into the model's weights: it has no dW to merge."""
    if adds_virtual_tokens(name):
        raise UnknownMethod(
            f"Method {name} trains virtual tokens prepended to the input, not a weight update: there is nothing to "
            f"merge into the model's weights; time or evaluate it unmerged."
        )


def _check(name: str) -> None:
    if name not in METHODS:
        raise UnknownMethod(f"Unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}.")


def _virtual_token_options(name: str, task_type: str | None) -> dict[str, Any]:
    """The options a virtual-token method gets instead of target modules: PEFT's causal-LM task type (its model class
    prepends the tokens, drops their logits from the loss and injects them in generate), refused elsewhere."""
    if task_type != "CAUSAL_LM":
        raise UnknownMethod(
            f"Method {name} prepends trained virtual tokens to a decoder's input and runs on causal language models "
            f"only (PEFT task type CAUSAL_LM, got {task_type!r}); use it on a decoder task."
        )
    return {"task_type": task_type}


def make_peft_config(
    name: str,
    target_modules: list[str] | None,
    modules_to_save: list[str] | None = None,
    task_type: str | None = None,
    **peft_kwargs: Any,
) -> PeftConfig | None:
    """The PEFT config of method ``name`` (``None`` for full fine-tuning); ``task_type`` e.g. ``CAUSAL_LM``.
    Virtual-token methods (:data:`VIRTUAL_TOKEN_METHODS`) ignore ``target_modules`` and need ``CAUSAL_LM``."""
    _check(name)
    factory = METHODS[name]
    if factory is None:
        if peft_kwargs:
            raise UnknownMethod(f"Full fine-tuning takes no adapter options, got {sorted(peft_kwargs)}; drop them.")
        return None
    if name in VIRTUAL_TOKEN_METHODS:
        peft_kwargs |= _virtual_token_options(name, task_type)
    else:
        peft_kwargs["target_modules"] = None if target_modules is None else list(target_modules)
        if task_type is not None:
            peft_kwargs["task_type"] = task_type
    try:
        with warnings.catch_warnings():
            # VeRA and RandLoRA remind that their projections are regenerated from the PRNG key, not saved: the
            # suite's documented choice, said once in the README, not at every run.
            warnings.filterwarnings("ignore", message="Specified to not save", category=UserWarning)
            return factory(modules_to_save=modules_to_save, **peft_kwargs)
    except TypeError as err:  # an option the method's config does not have
        raise UnknownMethod(f"Method {name!r} does not accept these options ({err}); check method.peft.") from err
    except ValueError as err:  # a value the method's config refuses (its own check, e.g. a ratio out of range)
        raise UnknownMethod(
            f"Method {name!r} refuses these options: {str(err).rstrip('.')}; check method.peft."
        ) from err


# Methods whose layers wrap nn.Linear only (PEFT's LoRA family also takes embeddings and convolutions).
LINEAR_ONLY = {"tera", "tera-balanced", "tera-output", "mora", "loretta", "vera", "randlora", "hira", "hira-r1"}


def check_targets(model: nn.Module, name: str, target_modules: list[str]) -> None:
    """Refuse targets that match no module, or (for Linear-only methods) a module that is not a linear layer, with one
    sentence that lists what the model's linear layers are called."""
    if METHODS.get(name) is None or name in VIRTUAL_TOKEN_METHODS:  # full FT and virtual tokens have no targets
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
    target_modules: list[str] | None,
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
