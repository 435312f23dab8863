"""What a grid will cost before it is sent to a cluster: GPU-hours of training from measured tokens per second.

The figures come from the committed GPU efficiency record (``results/benchmarks/efficiency-llama2-7b.json``: a few
LLaMA-2-7B decoder layers in bf16 on one GPU, ``make gpu-check``), scaled to the whole model by its depth, and the
training tokens of a run: its epochs x its training examples x the cut-off length (an upper bound: most examples are
shorter). Every figure that stands in for a missing one is said: a method the record did not measure (LoRA r=32's
rate is used), a layout or modules other than the run's, a model other than LLaMA-2-7B (scaled by parameter count).
Evaluation and checkpoint choice are not counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GPU_RECORD = ROOT / "results" / "benchmarks" / "efficiency-llama2-7b.json"
# Published sizes of the training sets the paper tables use, and where the number comes from.
TRAIN_EXAMPLES = {
    "commonsense170k": (170_420, "LLM-Adapters' commonsense_170k.json"),
    "math10k": (9_919, "LLM-Adapters' math_10k.json"),
    "gsm8k": (7_473, "GSM8K's train split"),
    "metamath": (395_000, "MetaMathQA"),
}
# Whole-model depth and size against the record's LLaMA-2-7B layers.
MODELS = {"llama2-7b": (32, 1.0), "llama3-8b": (32, 8_030_261_248 / 6_738_415_616)}


@dataclass
class Estimate:
    hours: float = 0.0
    runs: int = 0
    notes: set[str] = field(default_factory=set)


def _record(path: Path = GPU_RECORD) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _rate(record: dict[str, Any], method: str, notes: set[str]) -> float | None:
    """Training tokens per second of ``method`` on the record's layers: its own row (by name, else the row of a preset
    entry of that method, e.g. ``dora-r32`` for ``dora``), else LoRA r=32's."""
    rows = {row["method"]: row for row in record.get("rows", []) if row.get("tokens_per_s")}
    preset = record.get("preset") or {}
    entries = {e["name"]: e.get("method", e["name"]) for e in preset.get("methods", []) if isinstance(e, dict)}
    targets = ",".join(preset.get("targets") or [])
    if targets != "q_proj,v_proj":
        notes.add(f"the GPU record's adapters sat on {targets}, not the paper's q,v: rates are its")
    name = method if method in rows else next((n for n, m in entries.items() if m == method and n in rows), None)
    if name is None:
        notes.add(f"{method}: not in the GPU record; LoRA r=32's rate stands in")
        name = "lora-r32"
    elif name != method:
        notes.add(f"{method}: the GPU record's {name} row")
    if name.startswith("tera") and method == "tera":
        date = str(record.get("environment", {}).get("date", ""))[:10]
        notes.add(f"{method}: the record's TeRA ({date}) ran the layout of that day (balanced), not today's default")
    return float(rows[name]["tokens_per_s"]) if name in rows else None


def _run_tokens(task: str, cfg: Any, notes: set[str]) -> float | None:
    train_on = list(cfg.task.get("train_on") or [cfg.task.name])
    known = [TRAIN_EXAMPLES.get(name) for name in train_on]
    if None in known:
        notes.add(f"{task}: no published training size for {train_on}; not estimated")
        return None
    epochs = cfg.train.get("epochs") or 1
    cutoff = cfg.train.get("max_length") or 512
    examples = sum(size for size, _ in known)
    notes.add(f"{task}: {epochs} epochs x {examples:,} examples ({'; '.join(s for _, s in known)}) x {cutoff} tokens")
    return float(epochs) * examples * cutoff


def estimate(configs: list[tuple[Any, Any]]) -> Estimate | None:
    """GPU-hours of the runs in ``configs`` ((run, its composed config) pairs), or None without a GPU record."""
    record = _record()
    if record is None:
        return None
    layers = (record.get("preset") or {}).get("model", {}).get("layers") or 1
    result = Estimate()
    for run, cfg in configs:
        if run.model not in MODELS:
            result.notes.add(f"{run.model}: no GPU measurement covers it; not estimated")
            continue
        depth, size = MODELS[run.model]
        if size != 1.0:
            result.notes.add(f"{run.model}: LLaMA-2-7B's rate scaled by parameter count ({size:.2f}x)")
        rate = _rate(record, run.method, result.notes)
        tokens = _run_tokens(run.task, cfg, result.notes)
        if rate is None or tokens is None:
            continue
        result.hours += tokens / (rate * layers / depth / size) / 3600
        result.runs += 1
    return result


def describe(result: Estimate | None, label: str) -> list[str]:
    if result is None:
        return [f"{label}: no GPU efficiency record ({GPU_RECORD.relative_to(ROOT)}): no GPU-hours estimate."]
    if not result.runs:
        return [f"{label}: no run to estimate on a GPU ({'; '.join(sorted(result.notes)) or 'all done'})."]
    lines = [
        f"{label}: about {result.hours:,.0f} GPU-hours of training for {result.runs} run(s) still to do (one GPU of "
        f"the record's kind; an upper bound on tokens, evaluation not counted). From:"
    ]
    return lines + [f"  - {note}" for note in sorted(result.notes)]
