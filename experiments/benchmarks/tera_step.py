"""Train-step time and peak memory of each TeRA path against PEFT's LoRA r32 and VeRA r256, in one run.

    python -m experiments.benchmarks.tera_step --preset cpu-small   # here, small LLaMA shapes, float32
    python -m experiments.benchmarks.tera_step --preset llama2-7b   # a CUDA GPU: LLaMA-2-7B shapes cut to 4 layers,
                                                                    # bf16, batch 16 x 256, adapters on q,k,v,up,down

Each method runs in a fresh subprocess (clean peak-memory counters, no allocator carry-over), on a model built from a
config with random weights (honest for cost, not for accuracy).  Needs only torch, transformers and peft (plus this
repository), no network.  Writes ``results/benchmarks/tera_step-<preset>.json`` and ``.md`` and prints the table last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Preset:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int
    batch: int
    seq: int
    dtype: str
    device: str
    warmup: int
    steps: int


PRESETS = {
    "cpu-small": Preset(512, 1376, 2, 8, 1000, 4, 128, "float32", "cpu", 2, 5),
    "llama2-7b": Preset(4096, 11008, 4, 32, 32000, 16, 256, "bfloat16", "cuda", 3, 10),
    "tiny": Preset(32, 48, 1, 4, 64, 2, 8, "float32", "cpu", 1, 2),  # for the test suite
}

# name -> (method, options); TeRA learning rates do not matter for timing.
METHODS = {
    "lora-r32": ("lora", {"r": 32}),
    "vera-r256": ("vera", {"r": 256}),
    "tera-full-auto": ("tera", {}),
    "tera-full-merged": ("tera", {"forward_path": "merged"}),
    "tera-full-factorised": ("tera", {"forward_path": "factorised"}),
    "tera-half-auto": ("tera", {"core_rank_ratio": 0.5}),
    "tera-quarter-auto": ("tera", {"core_rank_ratio": 0.25}),
}


def build_model(preset: Preset):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=preset.vocab,
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.heads,
        max_position_embeddings=max(preset.seq, 64),
    )
    dtype = getattr(torch, preset.dtype)
    with torch.device(preset.device):
        model = LlamaForCausalLM(config).to(dtype)
    return model


def adapt(model, method: str, options: dict):
    from peft import LoraConfig, VeraConfig, get_peft_model

    import tera  # noqa: F401  (registers the TERA peft type)

    if method == "lora":
        return get_peft_model(model, LoraConfig(target_modules=TARGETS, lora_alpha=2 * options["r"], **options))
    if method == "vera":
        return get_peft_model(model, VeraConfig(target_modules=TARGETS, save_projection=False, **options))
    return get_peft_model(model, tera.TeraConfig(target_modules=TARGETS, init_weights=False, **options))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(preset_name: str, name: str) -> dict:
    """Run in a child process: time ``preset.steps`` train steps of one method after warm-up."""
    preset = PRESETS[preset_name]
    method, options = METHODS[name]
    torch.manual_seed(0)
    model = adapt(build_model(preset), method, options)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, preset.vocab, (preset.batch, preset.seq), device=preset.device)
    if preset.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(preset.warmup + preset.steps):
        _sync(preset.device)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(preset.device)
        if step >= preset.warmup:
            times.append(time.perf_counter() - start)
    row = {
        "method": name,
        "step_ms": 1000 * statistics.median(times),
        "step_ms_all": [1000 * t for t in times],
        "trainable": trainable,
        "loss_finite": bool(torch.isfinite(loss).item()),
    }
    if preset.device == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    if method == "tera":
        row["paths"] = _tera_paths(model, preset)
    return row


def _tera_paths(model, preset: Preset) -> dict[str, str]:
    """Which path each distinct layer shape takes at this step's token count (for the 'auto' rows)."""
    from tera import TeraLayer

    probe = torch.empty(preset.batch * preset.seq, 1, dtype=getattr(torch, preset.dtype), device=preset.device)
    paths = {}
    for module in model.modules():
        if isinstance(module, TeraLayer):
            shape = f"{module.out_features}x{module.in_features}"
            with torch.enable_grad():
                paths[shape] = module.choose_path("default", probe.expand(-1, module.in_features))
    return paths


def render(record: dict) -> str:
    env, rows = record["environment"], record["rows"]
    lora = next((r for r in rows if r["method"] == "lora-r32" and "step_ms" in r), None)
    mem_key = "peak_gib" if any("peak_gib" in r for r in rows) else "peak_rss_gib"
    mem_label = "peak GiB (CUDA allocated)" if mem_key == "peak_gib" else "peak RSS GiB (process)"
    lines = [
        f"# TeRA train-step benchmark, preset `{record['preset']}`",
        "",
        f"Device: {env['device']}; date {env['date']}; torch {env['versions']['torch']}, "
        f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}.",
        f"Shapes: {record['shapes']}. Median of {record['steps']} steps after {record['warmup']} warm-up steps, "
        "each method in its own process; one run.",
        "",
        f"| method | step ms | x LoRA r32 | {mem_label} | trainable | auto paths |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['step_ms'] / lora['step_ms']:.2f}" if lora else "-"
        paths = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("paths", {}).items()))
        lines.append(
            f"| {r['method']} | {r['step_ms']:.1f} | {ratio} | {r[mem_key]:.2f} | {r['trainable']:,} | {paths} |"
        )
    return "\n".join(lines) + "\n"


def run_all(preset_name: str, methods: list[str], out_dir: Path) -> dict:
    from experiments.records import environment, write_json_atomic

    preset = PRESETS[preset_name]
    if preset.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: preset {preset_name!r} needs a CUDA GPU; use --preset cpu-small here.")
    rows = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]))
    for index, name in enumerate(methods, 1):
        print(f"[{index}/{len(methods)}] {name} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "experiments.benchmarks.tera_step", "--preset", preset_name, "--only", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"method": name, "error": tail[:200]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    record = {
        "preset": preset_name,
        "shapes": (
            f"LLaMA-style, hidden {preset.hidden}, intermediate {preset.intermediate}, {preset.layers} layers, "
            f"batch {preset.batch} x {preset.seq} tokens, {preset.dtype}, adapters on {', '.join(TARGETS)}"
        ),
        "warmup": preset.warmup,
        "steps": preset.steps,
        "environment": environment(preset.device),
        "rows": rows,
    }
    write_json_atomic(out_dir / f"tera_step-{preset_name}.json", record)
    (out_dir / f"tera_step-{preset_name}.md").write_text(render(record))
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--only", choices=sorted(METHODS), help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)
    if args.only:
        print(json.dumps(measure(args.preset, args.only)))
        return 0
    record = run_all(args.preset, args.methods, args.out)
    print(render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
