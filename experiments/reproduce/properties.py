"""Table 1: per model and method, trainable parameters, rank bound and measured rank of dW, without training.

Each method's adapter (its ``conf/method`` options) is put on the model's default target modules, its trainable
values take a random step (N(0, 0.02^2)) from their initial values, so the measured rank is the rank the method can
reach, and every adapted layer's effective dW (merged minus base for DoRA and HiRA) is measured by a float64 SVD.
Decoder layers are identical across depth, so the ``*-shapes`` models are one decoder layer of the real dimensions
with random weights.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from baselines import apply_method
from experiments.records.naming import properties_name
from experiments.records.write import environment, write_json_atomic

CONF = Path(__file__).resolve().parents[2] / "conf"
DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
# Published dimensions (hidden, intermediate, attention heads, key/value heads) and the depth they stand for.
SHAPES = {
    "llama2-7b-shapes": {"dims": (4096, 11008, 32, 32), "layers": 32},
    "llama3-8b-shapes": {"dims": (4096, 14336, 32, 8), "layers": 32},
    "smollm2-135m-shapes": {"dims": (576, 1536, 9, 3), "layers": 30},
    "tiny-llama-shapes": {"dims": (64, 128, 4, 2), "layers": 2},  # conf/model/tiny-llama's dimensions: small, for tests
}


def build_model(name: str) -> tuple[torch.nn.Module, list[str], int]:
    """The model, its target modules, and by how much its per-layer counts scale to the real depth."""
    if name in SHAPES:
        from transformers import LlamaConfig, LlamaForCausalLM

        hidden, intermediate, heads, kv_heads = SHAPES[name]["dims"]
        config = LlamaConfig(
            vocab_size=256,  # the embedding is not adapted: keep it small
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=1,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
        )
        torch.manual_seed(0)
        return LlamaForCausalLM(config), DECODER_TARGETS, SHAPES[name]["layers"]
    if name == "minilm":
        from experiments.models.encoders import load_minilm_classifier

        model, _ = load_minilm_classifier(2)
        return model, list(OmegaConf.load(CONF / "model" / "minilm.yaml").target_modules), 1
    raise ValueError(f"Unknown model for the properties table: {name!r}; use minilm or one of {', '.join(SHAPES)}.")


def method_options(method: str) -> dict[str, Any]:
    cfg = OmegaConf.load(CONF / "method" / f"{method}.yaml")
    return OmegaConf.to_container(cfg.peft, resolve=True) if cfg.get("peft") else {}


def measure(model_name: str, method: str) -> dict[str, Any]:
    from tera import adapter_report
    from tera.analysis import frozen_factor_values

    started = time.perf_counter()
    model, targets, depth = build_model(model_name)
    adapted = apply_method(model, method, targets, **method_options(method))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapted.parameters():
            if parameter.requires_grad:  # a random step away from the start (where dW is often 0): the reachable rank
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
                parameter.add_(0.02 * noise)
    layers = [r.as_dict() for r in adapter_report(adapted)]
    return {
        "table": "properties",
        "model": model_name,
        "method": method,
        "depth_multiplier": depth,
        "trainable_params": sum(layer["trainable"] for layer in layers) * depth,
        "median_rank_bound": statistics.median(layer["rank_bound"] for layer in layers),
        "median_rank": statistics.median(layer["rank"] for layer in layers),
        "min_rank": min(layer["rank"] for layer in layers),
        # Not scaled by depth: the shared factors and projections of TeRA, VeRA and RandLoRA serve every layer.
        "frozen_factor_values": frozen_factor_values(adapted),
        "layers": layers,
        "environment": environment("cpu"),
        "wall_seconds": time.perf_counter() - started,
        "complete": True,
    }


def run_properties(models: list[str], methods: list[str], output_dir: Path) -> list[Path]:
    """One record per model x method under ``output_dir`` (finished ones are kept, not measured again)."""
    paths = []
    for model_name in models:
        for method in tqdm(methods, desc=f"properties {model_name}"):
            path = output_dir / f"{properties_name(method, model_name)}.json"
            if path.exists():
                print(f"skip {path.name} (complete)")
            else:
                write_json_atomic(path, measure(model_name, method))
            paths.append(path)
    return paths
