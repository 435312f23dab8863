"""What each method costs to train, store and serve, side by side in one run.

    python -m experiments.benchmarks.efficiency --preset cpu-small   # here: small LLaMA shapes, float32 (make bench)
    python -m experiments.benchmarks.efficiency --preset llama2-7b   # a CUDA GPU: LLaMA-2-7B shapes, 4 layers, bf16,
                                                                     # batch 16 x 256, adapters on q,k,v,up,down
    python bench.py preset=llama2-7b                                 # the same through Hydra

Per method, each in a fresh subprocess (clean peak-memory counters): train-step time (median after warm-up), tokens per
second, peak memory, trainable parameters, optimizer-state bytes, adapter file size (as saved, and with the shared
frozen factors added), merge time, and inference unmerged and merged: prefill of a batch and per-token decode with a
KV cache.  Models are built from a config with random weights (honest for cost, not accuracy).  Needs torch,
transformers, peft and PyYAML (a transformers dependency), nothing from the network.  Writes
``results/benchmarks/efficiency-<preset>.json`` and ``results/efficiency.md`` (or ``--report``) and prints the table
last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "conf" / "bench"
METHOD_CONF = ROOT / "conf" / "method"


def load_preset(name: str) -> dict[str, Any]:
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        choices = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise SystemExit(f"error: unknown preset {name!r}; choose one of: {choices}.")
    return yaml.safe_load(path.read_text())


def method_spec(entry: str | dict[str, Any]) -> dict[str, Any]:
    """``"lora"`` or ``{name, method, peft}``: the method's conf/method options, updated by the entry's ``peft``."""
    if isinstance(entry, str):
        entry = {"name": entry, "method": entry}
    method = entry.get("method", entry["name"])
    peft: dict[str, Any] = {}
    if method not in ("base", "full"):
        peft = dict(yaml.safe_load((METHOD_CONF / f"{method}.yaml").read_text()).get("peft") or {})
    peft.update(entry.get("peft") or {})
    return {"name": entry["name"], "method": method, "peft": peft}


def build_model(preset: dict[str, Any]):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = preset["model"]
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=max(preset["seq"] + preset["decode_tokens"], 64),
    )
    with torch.device(preset["device"]):
        return LlamaForCausalLM(config).to(getattr(torch, preset["dtype"]))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS, KiB on Linux


def _added_buffer_bytes(model, base_buffer_ids: set[int]) -> int:
    """Bytes of buffers the adapter added (the shared frozen factors of TeRA, VeRA, RandLoRA), each counted once."""
    added = {id(b): b for b in model.buffers() if id(b) not in base_buffer_ids}
    return sum(b.numel() * b.element_size() for b in added.values())


@torch.no_grad()
def _inference(model, preset: dict[str, Any], ids: torch.Tensor) -> dict[str, float]:
    """Prefill latency of the whole batch, and decode latency per generated token with a KV cache."""
    device = preset["device"]
    model.eval()
    model(input_ids=ids)  # warm-up
    prefill = statistics.median(_timed(lambda: model(input_ids=ids), device) for _ in range(3))
    out = model(input_ids=ids, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(preset["decode_tokens"]):

        def step():
            nonlocal past, token
            result = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, result.logits[:, -1:].argmax(-1)

        times.append(_timed(step, device))
    decode = statistics.median(times[1:] if len(times) > 1 else times)
    return {"prefill_ms": 1000 * prefill, "decode_ms_per_token": 1000 * decode}


def measure(preset: dict[str, Any], entry: str | dict[str, Any]) -> dict[str, Any]:
    """Run in a child process: every figure for one method."""
    from baselines import apply_method

    spec = method_spec(entry)
    device = preset["device"]
    torch.manual_seed(0)
    model = build_model(preset)
    ids = torch.randint(0, preset["model"]["vocab"], (preset["batch"], preset["seq"]), device=device)
    row: dict[str, Any] = {"method": spec["name"], "peft": spec["peft"]}
    if spec["method"] == "base":  # the frozen base model: the inference reference
        row.update({f"{k}_merged": v for k, v in _inference(model, preset, ids).items()})
        row["trainable"] = 0
        return row

    base_buffer_ids = {id(b) for b in model.buffers()}
    model = apply_method(model, spec["method"], preset["targets"], **spec["peft"])
    params = [p for p in model.parameters() if p.requires_grad]
    row["trainable"] = sum(p.numel() for p in params)
    # A real learning rate, so that the adapters move away from dW = 0 and the merge check below means something.
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    model.train()
    for step in range(preset["warmup"] + preset["steps"]):

        def train_step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        elapsed = _timed(train_step, device)
        if step >= preset["warmup"]:
            times.append(elapsed)
    row["step_ms"] = 1000 * statistics.median(times)
    row["tokens_per_s"] = preset["batch"] * preset["seq"] / statistics.median(times)
    row["peak_train_gib"] = _peak_gib(device)
    row["optimizer_state_bytes"] = sum(
        t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)
    )

    if spec["method"] == "full":
        row["model_file_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        row.update({f"{k}_merged": v for k, v in _inference(model, preset, ids).items()})
        return row

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        row["adapter_file_bytes"] = os.path.getsize(Path(folder) / "adapter_model.safetensors")
    row["shared_frozen_bytes"] = _added_buffer_bytes(model, base_buffer_ids)
    row["adapter_with_shared_bytes"] = row["adapter_file_bytes"] + row["shared_frozen_bytes"]

    row.update({f"{k}_unmerged": v for k, v in _inference(model, preset, ids).items()})
    with torch.no_grad():
        unmerged_logits = model(input_ids=ids[:1]).logits.float()
    row["merge_ms"] = 1000 * _timed(lambda: model.merge_adapter(), device)
    with torch.no_grad():
        merged_logits = model(input_ids=ids[:1]).logits.float()
    scale = unmerged_logits.abs().max().clamp_min(1e-6)
    row["merged_max_rel_diff"] = float((merged_logits - unmerged_logits).abs().max() / scale)
    merged = model.merge_and_unload()
    row.update({f"{k}_merged": v for k, v in _inference(merged, preset, ids).items()})
    return row


def _fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(record: dict[str, Any]) -> str:
    env, preset, rows = record["environment"], record["preset"], record["rows"]
    by_name = {r["method"]: r for r in rows}
    lora = next((r for r in rows if r["method"].startswith("lora") and "step_ms" in r), None)
    memory = "peak GiB (CUDA allocated)" if preset["device"].startswith("cuda") else "peak RSS GiB (process)"
    shape = preset["model"]
    lines = [
        f"# Efficiency report, preset `{preset['name']}`",
        "",
        f"Device: {env['device']}; date {env['date']}; torch {env['versions']['torch']}, "
        f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}. Written by "
        "`experiments/benchmarks/efficiency.py`; one run.",
        "",
        f"Model: LLaMA-style, hidden {shape['hidden']}, intermediate {shape['intermediate']}, {shape['layers']} "
        f"layers, random weights, {preset['dtype']}; batch {preset['batch']} x {preset['seq']} tokens; adapters on "
        f"{', '.join(preset['targets'])}. Train step: forward, backward, AdamW step; median of {preset['steps']} "
        f"after {preset['warmup']} warm-up. Decode: median ms per generated token for the whole batch, KV cache.",
        "",
        "## Training and storage",
        "",
        f"| method | trainable | optimizer state | step ms | x LoRA | tokens/s | {memory} | adapter file | "
        "with shared factors | merge ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | | | |")
            continue
        if "step_ms" not in r:
            continue
        ratio = f"{r['step_ms'] / lora['step_ms']:.2f}" if lora else "-"
        file_size = r.get("adapter_file_bytes", r.get("model_file_bytes"))
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {_fmt_bytes(r['optimizer_state_bytes'])} | {_fmt(r['step_ms'])} | "
            f"{ratio} | {r['tokens_per_s']:,.0f} | {r['peak_train_gib']:.2f} | {_fmt_bytes(file_size)}"
            f"{' (full model)' if 'model_file_bytes' in r else ''} | "
            f"{_fmt_bytes(r.get('adapter_with_shared_bytes'))} | "
            f"{_fmt(r.get('merge_ms'))} |"
        )
    base = by_name.get("base", {})
    lines += [
        "",
        "## Inference",
        "",
        "| method | prefill ms unmerged | prefill ms merged | decode ms/token unmerged | decode ms/token merged | "
        "merged vs base prefill | merged = unmerged (max rel. diff) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r or "prefill_ms_merged" not in r:
            continue
        vs_base = f"{r['prefill_ms_merged'] / base['prefill_ms_merged']:.2f}x" if base.get("prefill_ms_merged") else "-"
        diff = f"{r['merged_max_rel_diff']:.1e}" if "merged_max_rel_diff" in r else "-"
        lines.append(
            f"| {r['method']} | {_fmt(r.get('prefill_ms_unmerged'), 2)} | {_fmt(r['prefill_ms_merged'], 2)} | "
            f"{_fmt(r.get('decode_ms_per_token_unmerged'), 2)} | {_fmt(r['decode_ms_per_token_merged'], 2)} | "
            f"{vs_base} | {diff} |"
        )
    lines += ["", *targets(record)]
    return "\n".join(lines) + "\n"


def targets(record: dict[str, Any]) -> list[str]:
    """The issue's targets, checked on this run's figures (stated for a GPU at LLaMA-2-7B shapes)."""
    rows = {r["method"]: r for r in record["rows"] if "error" not in r}
    lora = rows.get("lora-r32") or rows.get("lora")
    tera, half, base = rows.get("tera"), rows.get("tera-half"), rows.get("base")
    if not (lora and tera and "step_ms" in lora and "step_ms" in tera):
        return []
    lines = ["## Targets", ""]
    if not record["preset"]["device"].startswith("cuda"):
        lines.append("The targets are stated for a GPU at LLaMA-2-7B shapes; on this device they are indicative only.")
        lines.append("")

    def check(label: str, value: float, limit: float, unit: str = "x") -> None:
        verdict = "met" if value <= limit else f"missed by {100 * (value / limit - 1):.1f}%"
        lines.append(f"- {label}: {value:.3f}{unit} (target <= {limit:g}{unit}): {verdict}")

    check("full-rank TeRA train step vs LoRA", tera["step_ms"] / lora["step_ms"], 1.30)
    check("full-rank TeRA peak memory vs LoRA", tera["peak_train_gib"] / lora["peak_train_gib"], 1.0)
    if half and "step_ms" in half:
        check("TeRA core ranks I/2 train step vs LoRA", half["step_ms"] / lora["step_ms"], 1.06)
    if base:
        check("merged TeRA prefill vs base model", tera["prefill_ms_merged"] / base["prefill_ms_merged"], 1.05)
        lines.append(
            f"- unmerged TeRA overhead: prefill {tera['prefill_ms_unmerged'] / base['prefill_ms_merged']:.2f}x, "
            f"decode {tera['decode_ms_per_token_unmerged'] / base['decode_ms_per_token_merged']:.2f}x the base model"
        )
    check("TeRA adapter file without shared factors", tera["adapter_file_bytes"] / 1024, 256, " KB")
    return lines


def run_all(preset: dict[str, Any], out_dir: Path, report: Path, methods: list[str] | None = None) -> dict[str, Any]:
    """Measure every method of ``preset`` (each in a child process), write the JSON record and the report."""
    sys.path.insert(0, str(ROOT))
    from experiments.records import environment, write_json_atomic

    if preset["device"].startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"error: preset {preset['name']!r} needs a CUDA GPU; use the cpu-small preset on this machine."
        )
    entries = [e for e in preset["methods"] if methods is None or method_spec(e)["name"] in methods]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    rows = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(preset, handle)
    try:
        for index, entry in enumerate(entries, 1):
            name = method_spec(entry)["name"]
            print(f"[{index}/{len(entries)}] {name} ...", file=sys.stderr, flush=True)
            cmd = [
                sys.executable,
                "-m",
                "experiments.benchmarks.efficiency",
                "--preset-file",
                handle.name,
                "--only",
                name,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"method": name, "error": tail[:300]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        os.unlink(handle.name)
    record = {"preset": preset, "environment": environment(preset["device"]), "rows": rows}
    write_json_atomic(out_dir / f"efficiency-{preset['name']}.json", record)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(record))
    return record


def default_report(preset: dict[str, Any]) -> Path:
    return ROOT / "results" / ("efficiency.md" if preset["name"] != "tiny" else "efficiency-tiny.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small", help="a conf/bench/<name>.yaml preset")
    parser.add_argument("--preset-file", type=Path, help=argparse.SUPPRESS)  # child-process mode: resolved preset
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of the preset's methods")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # child-process mode: one method, JSON on stdout
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    parser.add_argument("--report", type=Path, default=None, help="Markdown report (default results/efficiency.md)")
    args = parser.parse_args(argv)
    preset = json.loads(args.preset_file.read_text()) if args.preset_file else load_preset(args.preset)
    if args.only:
        entry = next(e for e in preset["methods"] if method_spec(e)["name"] == args.only)
        print(json.dumps(measure(preset, entry)))
        return 0
    report = args.report or default_report(preset)
    run_all(preset, args.out, report, args.methods)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
