"""Evaluating a model that reads trained virtual tokens before its input (PEFT's Prompt Tuning and P-Tuning).

Scoring needs nothing here: a forward returns the virtual tokens' logits first, and lm-eval's HFLM discards logits
beyond the input's length as virtual tokens (``_loglikelihood_tokens``); the suite's own code scores decoders only
through lm-eval. Generation needs one repair: PEFT 0.21 looks for the KV cache under ``past_key_values``, which
transformers 5 renamed ``cache``; finding none, it injects the virtual tokens again at every decoding step, so every
token after the second comes from a garbled context (``use_cache=False`` is right but quadratic). While
:func:`virtual_token_generation` is active, PEFT sees the cache under its old name and the model under its new one.
tests/experiments/run/test_virtual_tokens.py checks both paths against the base model reading the tokens as text.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

Prepare = Callable[..., dict[str, Any]]  # a prepare_inputs_for_generation: generate's state -> the forward's inputs

OLD, NEW = "past_key_values", "cache"  # the KV cache's name in PEFT's prompt-learning code, and in transformers 5


def prepended_positions(model: nn.Module) -> int:
    """How many virtual tokens PEFT puts before the input in a forward (Prompt Tuning, P-Tuning); 0 for any other
    model (prefix tuning's prefix lives in the KV cache, not before the input)."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning or config.peft_type in ("PREFIX_TUNING", "CARTRIDGE"):
        return 0
    return int(config.num_virtual_tokens)


def _renaming(base_prepare: Prepare, peft_prepare: Prepare) -> tuple[Prepare, Prepare]:
    """(the base model's prepare, showing PEFT the cache under its old name; PEFT's prepare, giving the model its new
    name back). Only a cache that had the new name is renamed: under transformers 4 nothing changes."""
    renamed = [False]

    def base_for_peft(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = base_prepare(*args, **kwargs)
        renamed[0] = NEW in inputs and OLD not in inputs
        if renamed[0]:
            inputs[OLD] = inputs.pop(NEW)
        return inputs

    def peft_for_model(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = peft_prepare(*args, **kwargs)
        if renamed[0] and OLD in inputs:
            inputs[NEW] = inputs.pop(OLD)
        return inputs

    return base_for_peft, peft_for_model


@contextlib.contextmanager
def virtual_token_generation(model: nn.Module) -> Iterator[None]:
    """Within this block, ``model.generate`` of a prompt-learning PeftModel keeps its KV cache (see the module's
    docstring) and PEFT's warning that it drops generate's position ids is silenced (the model then numbers the
    virtual tokens and the input together, as in training, the padding of a left-padded batch too; the suite cannot
    act on it). Other models: no change."""
    if not prepended_positions(model):
        yield
        return
    base_prepare = model.base_model_prepare_inputs_for_generation  # what PEFT's own prepare calls first
    peft_prepare = type(model).prepare_inputs_for_generation.__get__(model)  # what PEFT's generate installs
    model.base_model_prepare_inputs_for_generation, model.prepare_inputs_for_generation = _renaming(
        base_prepare, peft_prepare
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Position ids are not supported", category=UserWarning)
            yield
    finally:
        model.base_model_prepare_inputs_for_generation = base_prepare
        del model.prepare_inputs_for_generation  # the class's method again
        model.base_model.prepare_inputs_for_generation = base_prepare  # as PEFT leaves it after generate
