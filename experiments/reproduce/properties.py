"""Table 1: per model and method, trained values (count and share of the model), rank bound and measured rank of dW,
without training.

Each method's adapter (its ``conf/method`` options, updated by the spec entry's ``peft``) is put on the spec's target
modules for that model (default: the model's own), its trainable values take a random step (N(0, 0.02^2)) from their
initial values, so the measured rank is the rank the method can reach, and every adapted layer's effective dW (merged
minus base for DoRA and HiRA) is measured by a float64 SVD. Decoder layers are identical across depth, so the
``*-shapes`` models are one decoder layer of the real dimensions with random weights; the whole model they stand for
is built on the meta device (no memory, no download) for the parameter count the percentage divides by.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from baselines import UnknownMethod, apply_method
from experiments.records.naming import properties_name
from experiments.records.read import read_record
from experiments.records.write import environment, write_json_atomic

CONF = Path(__file__).resolve().parents[2] / "conf"
# Published dimensions (hidden, intermediate, attention heads, key/value heads), depth, vocabulary and whether the
# output layer shares the embedding: what the whole model's parameter count needs.
SHAPES = {
    "llama2-7b-shapes": {"dims": (4096, 11008, 32, 32), "layers": 32, "vocab": 32000, "tied": False},
    "llama3-8b-shapes": {"dims": (4096, 14336, 32, 8), "layers": 32, "vocab": 128256, "tied": False},
    "smollm2-135m-shapes": {"dims": (576, 1536, 9, 3), "layers": 30, "vocab": 49152, "tied": True},
    # conf/model/tiny-llama's dimensions: small, for tests
    "tiny-llama-shapes": {"dims": (64, 128, 4, 2), "layers": 2, "vocab": 256, "tied": False},
}
MethodEntry = str | dict[str, Any]  # "lora", or {name, method, peft}: a named variant of a conf/method


def _llama_config(name: str, layers: int, vocab: int) -> Any:
    from transformers import LlamaConfig

    hidden, intermediate, heads, kv_heads = SHAPES[name]["dims"]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=SHAPES[name]["tied"],
    )


def full_model_params(name: str) -> int:
    """Parameters of the whole published model that ``name`` stands for, counted on the meta device."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(_llama_config(name, SHAPES[name]["layers"], SHAPES[name]["vocab"]))
    return sum(p.numel() for p in model.parameters())  # tied weights are one parameter: counted once


def build_model(name: str) -> tuple[torch.nn.Module, list[str], int, int]:
    """The model, its default target modules, by how much its per-layer counts scale to the real depth, and the
    parameter count of the whole model it stands for."""
    if name in SHAPES:
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(_llama_config(name, 1, 256))  # the embedding is not adapted: keep it small
        targets = list(OmegaConf.load(CONF / "model" / "tiny-llama.yaml").target_modules)  # the decoders' default
        return model, targets, SHAPES[name]["layers"], full_model_params(name)
    if name == "minilm":
        from experiments.models.encoders import load_minilm_classifier

        model, _ = load_minilm_classifier(2)
        targets = list(OmegaConf.load(CONF / "model" / "minilm.yaml").target_modules)
        return model, targets, 1, sum(p.numel() for p in model.parameters())
    raise ValueError(f"Unknown model for the properties table: {name!r}; use minilm or one of {', '.join(SHAPES)}.")


def method_spec(entry: MethodEntry) -> tuple[str, str, dict[str, Any]]:
    """(row name, conf/method name, adapter options) of a spec's method entry."""
    if isinstance(entry, str):
        entry = {"name": entry}
    method = entry.get("method", entry["name"])
    cfg = OmegaConf.load(CONF / "method" / f"{method}.yaml")
    options = OmegaConf.to_container(cfg.peft, resolve=True) if cfg.get("peft") else {}
    return entry["name"], method, {**options, **(entry.get("peft") or {})}


def _random_step(model: torch.nn.Module) -> None:
    """Move every trainable value a random step from its start (where dW is often 0): the reachable rank."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
                parameter.add_(0.02 * noise)


def _rank_fields(layers: list[dict[str, Any]]) -> dict[str, Any]:
    if not layers:  # virtual-token methods adapt no weight: there is no dW to measure
        return {"median_rank_bound": None, "median_rank": None, "min_rank": None}
    return {
        "median_rank_bound": statistics.median(layer["rank_bound"] for layer in layers),
        "median_rank": statistics.median(layer["rank"] for layer in layers),
        "min_rank": min(layer["rank"] for layer in layers),
    }


def measure(model_name: str, entry: MethodEntry, targets: list[str] | None = None) -> dict[str, Any]:
    """One properties record: counts, percentage of the whole model, ranks (or why the method does not apply)."""
    from baselines.analysis import adapter_report, frozen_factor_values
    from tera.analysis import tensor_plans

    started = time.perf_counter()
    name, method, options = method_spec(entry)
    model, default_targets, depth, base_params = build_model(model_name)
    targets = list(targets or default_targets)
    head = {"table": "properties", "model": model_name, "method": name, "base_method": method, "peft": options}
    head |= {"targets": targets, "depth_multiplier": depth, "base_params": base_params}
    task_type = "CAUSAL_LM" if model_name in SHAPES else None
    try:
        adapted = apply_method(model, method, targets, task_type=task_type, **options)
    except UnknownMethod as err:  # e.g. a virtual-token method on an encoder: the table says why, in its row
        return head | {"unsupported": str(err), "layers": [], "environment": environment("cpu"), "complete": True}
    _random_step(adapted)
    layers = [r.as_dict() for r in adapter_report(adapted)]
    in_layers = sum(layer["trainable"] for layer in layers)
    elsewhere = sum(p.numel() for p in adapted.parameters() if p.requires_grad) - in_layers  # e.g. virtual tokens
    trained = in_layers * depth + elsewhere  # adapted layers repeat with depth; a prompt encoder does not
    return head | {
        "trainable_params": trained,
        "trainable_percent": 100 * trained / (base_params + trained),  # the paper's: trained / (frozen + trained)
        **_rank_fields(layers),
        # Not scaled by depth: the shared factors and projections of TeRA, VeRA and RandLoRA serve every layer.
        "frozen_factor_values": frozen_factor_values(adapted),
        "tensor_plans": tensor_plans(adapted) or None,
        "layers": layers,
        "environment": environment("cpu"),
        "wall_seconds": time.perf_counter() - started,
        "complete": True,
    }


def _current(record: dict[str, Any] | None, entry: MethodEntry, targets: list[str] | None) -> bool:
    """A record measured with this entry's method, options and targets (older records, made before the table
    recorded them, are measured again)."""
    if not record or "base_params" not in record or "layers" not in record:
        return False
    _, method, options = method_spec(entry)
    same_targets = targets is None or record.get("targets") == list(targets)
    return record.get("base_method") == method and record.get("peft") == options and same_targets


def run_properties(
    models: list[str],
    methods: list[MethodEntry],
    output_dir: Path,
    targets: dict[str, list[str]] | None = None,
) -> list[Path]:
    """One record per model x method under ``output_dir``; ``targets`` per model (default: the model's own). A record
    made with the same settings is kept, not measured again."""
    paths = []
    for model_name in models:
        model_targets = (targets or {}).get(model_name)
        for entry in tqdm(methods, desc=f"properties {model_name}"):
            name = method_spec(entry)[0]
            path = output_dir / f"{properties_name(name, model_name)}.json"
            if _current(read_record(path) if path.exists() else None, entry, model_targets):
                print(f"skip {path.name} (complete)")
            else:
                write_json_atomic(path, measure(model_name, entry, model_targets))
            paths.append(path)
    return paths
