"""What each method costs to train, store and serve, side by side in one run.

    python -m experiments.benchmarks.efficiency --preset cpu-small   # here: small LLaMA shapes, float32 (make bench)
    python -m experiments.benchmarks.efficiency --preset llama2-7b   # a CUDA GPU: LLaMA-2-7B shapes, 4 layers, bf16,
                                                                     # batch 16 x 256, adapters on q,k,v,up,down
    python bench.py preset=llama2-7b                                 # the same through Hydra

Each method lives in its own process for the whole run (clean peak-memory counters) and the parent times them
round-robin: after a warm-up, every round runs each method in turn (order rotated by one per round), one untimed step
then ``steps`` timed ones.  A method's step time is the median of its timed steps; its ratio to LoRA is the median over
rounds of the per-round ratio, reported with its interquartile range, so slow drifts of the machine hit every method
alike.  The report says when other processes used the cores during the rounds (from /proc/stat) or when a ratio's
spread is too wide to trust.  Then, one method at a time: peak memory, trainable parameters, optimizer-state bytes,
adapter file size (as saved, and with the shared frozen factors added), merge time, and inference unmerged and merged:
prefill of a batch and per-token decode with a KV cache.  For TeRA it also lists which path ``forward_path=auto``
chose per kind of call, and compares auto with the forced paths.  Models are built from a config with random weights
(honest for cost, not accuracy).  Needs torch, transformers, peft and PyYAML (a transformers dependency), nothing from
the network.  Writes ``results/benchmarks/efficiency-<preset>.json`` and ``results/efficiency.md`` (for other presets
``results/efficiency-<preset>.md``, or ``--report``) and prints the table last.
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
from typing import Any, NoReturn

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
PRESETS = ROOT / "conf" / "bench"
METHOD_CONF = ROOT / "conf" / "method"


def _user_error(message: str) -> NoReturn:
    """A mistake in what was asked for: one sentence on stderr and exit status 2, before anything is measured or
    written (the committed report and record stay as they were)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_preset(name: str) -> dict[str, Any]:
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        choices = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        _user_error(f"unknown preset {name!r}; choose one of: {choices}.")
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
def _prefill_s(model, ids: torch.Tensor, device: str) -> float:
    """Seconds of one forward over the whole batch."""
    model.eval()
    return _timed(lambda: model(input_ids=ids), device)


@torch.no_grad()
def _decode_s(model, ids: torch.Tensor, tokens: int, device: str) -> float:
    """Median seconds per generated token for the whole batch, with a KV cache (the first token's step not counted)."""
    model.eval()
    out = model(input_ids=ids, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(tokens):

        def step():
            nonlocal past, token
            result = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, result.logits[:, -1:].argmax(-1)

        times.append(_timed(step, device))
    return statistics.median(times[1:] if len(times) > 1 else times)


def _inference(model, preset: dict[str, Any], ids: torch.Tensor) -> dict[str, float]:
    """Prefill latency of the whole batch, and decode latency per generated token, one method alone (``measure``)."""
    device = preset["device"]
    _prefill_s(model, ids, device)  # warm-up
    prefill = statistics.median(_prefill_s(model, ids, device) for _ in range(3))
    decode = _decode_s(model, ids, preset["decode_tokens"], device)
    return {"prefill_ms": 1000 * prefill, "decode_ms_per_token": 1000 * decode}


class MethodBench:
    """One method's model, optimizer and figures, kept alive in its own process across the rounds of a benchmark."""

    def __init__(self, preset: dict[str, Any], entry: str | dict[str, Any]) -> None:
        from baselines import apply_method

        self.preset, self.spec = preset, method_spec(entry)
        self.device = preset["device"]
        torch.manual_seed(0)
        self.model = build_model(preset)
        self.ids = torch.randint(0, preset["model"]["vocab"], (preset["batch"], preset["seq"]), device=self.device)
        self.row: dict[str, Any] = {"method": self.spec["name"], "peft": self.spec["peft"]}
        self.trains = self.spec["method"] != "base"  # the frozen base model: the inference reference only
        self.optimizer = None
        if not self.trains:
            self.row["trainable"] = 0
            return
        self.base_buffer_ids = {id(b) for b in self.model.buffers()}
        self.model = apply_method(self.model, self.spec["method"], preset["targets"], **self.spec["peft"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.row["trainable"] = sum(p.numel() for p in params)
        # A real learning rate, so that the adapters move away from dW = 0 and the merge check means something.
        self.optimizer = torch.optim.AdamW(params, lr=1e-3)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def train_steps(self, count: int) -> list[float]:
        """Seconds of each of ``count`` train steps (forward, backward, AdamW step)."""
        if not self.trains:
            return []
        self.model.train()
        times = []
        for _ in range(count):

            def train_step():
                loss = self.model(input_ids=self.ids, labels=self.ids).loss
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)

            times.append(_timed(train_step, self.device))
        return times

    def release_cache(self) -> None:
        """Give cached activation memory back, so that many methods' processes fit on one GPU side by side."""
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    @property
    def has_adapter(self) -> bool:
        """An adapter that can be merged: inference is timed unmerged and merged (not for base or full FT)."""
        return self.trains and self.spec["method"] != "full"

    def training_figures(self, step_times: list[float]) -> None:
        """Into the row: step time, memory (right after training), optimizer state, storage, the auto paths."""
        row, model, preset = self.row, self.model, self.preset
        if not self.trains:
            return
        if step_times:
            median = statistics.median(step_times)
            row["step_ms"] = 1000 * median
            row["tokens_per_s"] = preset["batch"] * preset["seq"] / median
        row["peak_train_gib"] = _peak_gib(self.device)
        row["optimizer_state_bytes"] = sum(
            t.numel() * t.element_size()
            for state in self.optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        )
        row["auto_paths"] = _auto_paths()
        if not self.has_adapter:
            row["model_file_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
            return
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            row["adapter_file_bytes"] = os.path.getsize(Path(folder) / "adapter_model.safetensors")
        row["shared_frozen_bytes"] = _added_buffer_bytes(model, self.base_buffer_ids)
        row["adapter_with_shared_bytes"] = row["adapter_file_bytes"] + row["shared_frozen_bytes"]

    def infer(self, kind: str) -> float:
        """Seconds of one ``prefill`` of the batch, or per token of a ``decode``, on the model as it is now."""
        if kind == "prefill":
            return _prefill_s(self.model, self.ids, self.device)
        return _decode_s(self.model, self.ids, self.preset["decode_tokens"], self.device)

    def merge(self) -> None:
        """Fold the adapter into the weights (adapters only): the merge time and the merged = unmerged check go into
        the row, and inference from here on is the merged model's."""
        if not self.has_adapter:
            return
        model = self.model
        model.eval()
        with torch.no_grad():
            unmerged_logits = model(input_ids=self.ids[:1]).logits.float()
        self.row["merge_ms"] = 1000 * _timed(lambda: model.merge_adapter(), self.device)
        with torch.no_grad():
            merged_logits = model(input_ids=self.ids[:1]).logits.float()
        scale = unmerged_logits.abs().max().clamp_min(1e-6)
        self.row["merged_max_rel_diff"] = float((merged_logits - unmerged_logits).abs().max() / scale)
        self.model = model.merge_and_unload()

    def finish(self, step_times: list[float]) -> dict[str, Any]:
        """Every figure in this process, one method after another (``measure``; the benchmark pairs inference)."""
        self.training_figures(step_times)
        if self.has_adapter:
            self.row.update({f"{k}_unmerged": v for k, v in _inference(self.model, self.preset, self.ids).items()})
        self.merge()
        self.row.update({f"{k}_merged": v for k, v in _inference(self.model, self.preset, self.ids).items()})
        return self.row


def _auto_paths() -> dict[str, str]:
    """What TeRA's forward_path=auto chose in this process and from which timings (empty for other methods)."""
    autotune = sys.modules.get("tera.autotune")
    if autotune is None:
        return {}
    out = {}
    for (plan, placement, bucket, dtype, _device, training), choice in autotune.choices().items():
        label = f"{plan} {placement} {'train' if training else 'eval'} <={bucket} tokens {str(dtype).split('.')[-1]}"
        timings = ", ".join(f"{path} {ms:.3g} ms" for path, ms in sorted(choice.ms.items()))
        out[label] = f"{choice.path} ({choice.source}{': ' + timings if timings else ''})"
    return out


def measure(preset: dict[str, Any], entry: str | dict[str, Any]) -> dict[str, Any]:
    """Every figure for one method, in this process: warm-up, then ``rounds x steps`` timed steps in a row."""
    bench = MethodBench(preset, entry)
    bench.train_steps(preset["warmup"])
    times = bench.train_steps(preset["rounds"] * preset["steps"])
    return bench.finish(times)


def worker(preset: dict[str, Any], name: str) -> int:
    """Child-process mode: build one method, then obey JSON commands on stdin, one JSON reply per line on stdout.

    ``{"steps": n}`` runs n timed train steps and replies their seconds; ``{"figures": true}`` takes the training
    figures (memory, storage); ``{"infer": "prefill"|"decode"}`` replies the seconds of one; ``{"merge": true}`` folds
    the adapter in; ``{"finish": true}`` replies the row and ends.  Nothing else is written to stdout.
    """
    entry = next(e for e in preset["methods"] if method_spec(e)["name"] == name)
    reply = sys.stdout
    sys.stdout = sys.stderr  # stray prints of libraries must not break the protocol
    try:
        bench = MethodBench(preset, entry)
    except Exception as error:  # noqa: BLE001 - reported as this method's row, the others go on
        print(json.dumps({"error": f"{type(error).__name__}: {error}"[:300]}), file=reply, flush=True)
        return 1
    print(json.dumps({"ready": True}), file=reply, flush=True)
    times: list[float] = []
    for line in sys.stdin:
        command = json.loads(line)
        if "steps" in command:
            new = bench.train_steps(command["steps"])
            bench.release_cache()
            if command.get("timed", True):
                times += new
            print(json.dumps({"times": new}), file=reply, flush=True)
        elif command.get("figures"):
            bench.training_figures(times)
            print(json.dumps({"ok": True}), file=reply, flush=True)
        elif "infer" in command:
            print(json.dumps({"s": bench.infer(command["infer"])}), file=reply, flush=True)
        elif command.get("merge"):
            bench.merge()
            print(json.dumps({"ok": True}), file=reply, flush=True)
        elif command.get("finish"):
            print(json.dumps({"row": bench.row}), file=reply, flush=True)
            return 0
    return 0


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


SPREAD_LIMIT = 0.10  # an interquartile range wider than this fraction of the median ratio is flagged
BUSY_CORES = 0.25  # other processes using more than a quarter of a core on average make the machine "busy"
AUTO_LIMIT = 1.05  # the automatic path should be within 5% of the better forced one


def _quartile_cell(ratio: dict[str, float]) -> str:
    """``median (q1-q3)``."""
    return f"{ratio['median']:.2f} ({ratio['q1']:.2f}-{ratio['q3']:.2f})"


def _ratio_cell(row: dict[str, Any]) -> str:
    return _quartile_cell(row["ratio"]) if row.get("ratio") else "-"


def _spread(ratio: dict[str, float]) -> float:
    """Interquartile range over median."""
    return (ratio["q3"] - ratio["q1"]) / ratio["median"]


def _vs_base(row: dict[str, Any], base: dict[str, Any], kind: str, phase: str) -> str:
    """A method's inference time over the base model's: the paired median (IQR), else the ratio of the medians."""
    paired = row.get(f"{kind}_vs_base_{phase}")
    if paired:
        return _quartile_cell(paired)
    try:
        return f"{_inference_ratio(row, base, kind, phase):.2f}"
    except (KeyError, ZeroDivisionError):  # not measured in this phase (base and full FT have no unmerged figures)
        return "-"


def measurement_notes(record: dict[str, Any]) -> list[str]:
    """How the step times were taken, and whether the machine or the spread make them untrustworthy."""
    m = record.get("measurement")
    if not m:
        return []
    loads = m["loads"] or [m["load_before"]]
    lines = [
        f"Step times: {m['rounds']} rounds; each round runs every method in turn (order rotated by one each round): "
        f"one untimed step, then {m['steps_per_round']} timed steps, each right after a timed step of "
        f"{m['reference']}, so that both see the same state of the machine. Per round the fastest step of each counts "
        "(noise only adds time); a method's step ms is the median over rounds, its ratio the median over rounds of "
        f"(its round time / {m['reference']}'s in the same round), with the interquartile range in brackets.",
        "",
        f"Machine: 1-minute load {m['load_before']:.2f} before the benchmark, {min(loads):.2f}-{max(loads):.2f} "
        f"during the rounds, on {m['cores']} cores.",
    ]
    other = m.get("other_cores")
    if other is not None:
        lines[-1] += f" Other processes kept {other:.2f} cores busy on average during the rounds."
        busy = other > BUSY_CORES
    else:  # no /proc: the load average, which also counts this benchmark's own process per core
        busy = max(loads) > m["cores"] + 1
    wide = [r["method"] for r in record["rows"] if r.get("ratio") and _spread(r["ratio"]) > SPREAD_LIMIT]
    if busy:
        lines.append(
            "**Warning: the machine was busy**: other work shared the cores during the rounds, so the ratios may be "
            "off; rerun on a quiet machine."
        )
    if wide:
        lines.append(
            f"**Warning: spread too wide to trust** (interquartile range above {100 * SPREAD_LIMIT:.0f}% of the "
            f"median ratio): {', '.join(wide)}."
        )
    if not busy and not wide:
        lines.append(
            f"Quiet machine, every ratio's interquartile range within {100 * SPREAD_LIMIT:.0f}% of its median."
        )
    lines += _twin_notes(record)
    return lines


def _twin_notes(record: dict[str, Any]) -> list[str]:
    """Entries of the same method with the same options (the cpu-twins preset) compute the same thing in separate
    processes: the spread of their ratios is the noise between processes."""
    entries = [e if isinstance(e, dict) else {"name": e} for e in record.get("preset", {}).get("methods", [])]
    # The preset's own words (method and overrides), not conf/method, so that an old record renders the same.
    specs = {e["name"]: json.dumps([e.get("method", e["name"]), e.get("peft")], sort_keys=True) for e in entries}
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in record["rows"]:
        if row["method"] in specs and row.get("ratio"):
            groups.setdefault(specs[row["method"]], []).append(row)
    lines = []
    for twins in (g for g in groups.values() if len(g) > 1):
        ratios = [r["ratio"]["median"] for r in twins]
        lines.append(
            f"Identical entries {', '.join(r['method'] for r in twins)} (separate processes, same computation): "
            f"ratios {min(ratios):.2f}-{max(ratios):.2f}, {100 * (max(ratios) / min(ratios) - 1):.1f}% apart: the "
            "noise between processes on this machine."
        )
    return lines


def auto_vs_forced(record: dict[str, Any]) -> list[dict[str, Any]]:
    """For each TeRA entry on forward_path=auto, its forced-path siblings (same options otherwise) and the verdict."""
    rows = [r for r in record["rows"] if r.get("ratio")]
    out = []
    for auto in rows:
        peft = auto.get("peft") or {}
        if "forward_path" not in peft or peft["forward_path"] != "auto":
            continue
        rest = {k: v for k, v in peft.items() if k != "forward_path"}
        forced = {
            r["peft"]["forward_path"]: r
            for r in rows
            if r is not auto
            and r.get("peft", {}).get("forward_path") in ("merged", "factorised")
            and {k: v for k, v in r["peft"].items() if k != "forward_path"} == rest
        }
        if not forced:
            continue
        best = min(forced, key=lambda path: forced[path]["ratio"]["median"])
        verdict = auto["ratio"]["median"] / forced[best]["ratio"]["median"]
        out.append(
            {
                "auto": auto,
                "forced": forced,
                "best": best,
                "auto_over_best": verdict,
                "same_path": _train_paths(auto) == {best},
            }
        )
    return out


def _train_paths(row: dict[str, Any]) -> set[str]:
    """The paths auto chose for training calls (from the row's ``auto_paths``, e.g. ``"merged (timed: ...)"``)."""
    return {path.split()[0] for label, path in (row.get("auto_paths") or {}).items() if " train " in label}


def auto_verdict(comparison: dict[str, Any]) -> str:
    """Met when auto is within AUTO_LIMIT of the best forced path, or when it ran that very path on every training
    call: then both entries compute the same thing and their gap is noise between two processes, not a choice."""
    if comparison["auto_over_best"] <= AUTO_LIMIT:
        return "met"
    return "met (same path on every call)" if comparison["same_path"] else "missed"


def render(record: dict[str, Any]) -> str:
    env, preset, rows = record["environment"], record["preset"], record["rows"]
    by_name = {r["method"]: r for r in rows}
    reference = (record.get("measurement") or {}).get("reference") or "LoRA"
    memory = "peak GiB (CUDA allocated)" if preset["device"].startswith("cuda") else "peak RSS GiB (process)"
    shape = preset["model"]
    lines = [
        f"# Efficiency report, preset `{preset['name']}`",
        "",
        f"Device: {env['device']}; date {env['date']}; torch {env['versions']['torch']}, "
        f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}. Written by "
        "`experiments/benchmarks/efficiency.py`.",
        "",
        f"Model: LLaMA-style, hidden {shape['hidden']}, intermediate {shape['intermediate']}, {shape['layers']} "
        f"layers, random weights, {preset['dtype']}; batch {preset['batch']} x {preset['seq']} tokens; adapters on "
        f"{', '.join(preset['targets'])}. Train step: forward, backward, AdamW step. Each method runs in its own "
        "process (clean peak-memory counters). Decode: median ms per generated token for the whole batch, KV cache.",
        "",
        *measurement_notes(record),
        "",
        "## Training and storage",
        "",
        f"| method | trainable | optimizer state | step ms | x {reference} (IQR) | tokens/s | {memory} | "
        "adapter file | with shared factors | merge ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | | | |")
            continue
        if "step_ms" not in r:
            continue
        file_size = r.get("adapter_file_bytes", r.get("model_file_bytes"))
        lines.append(
            f"| {r['method']} | {r['trainable']:,} | {_fmt_bytes(r['optimizer_state_bytes'])} | {_fmt(r['step_ms'])} | "
            f"{_ratio_cell(r)} | {r['tokens_per_s']:,.0f} | {r['peak_train_gib']:.2f} | {_fmt_bytes(file_size)}"
            f"{' (full model)' if 'model_file_bytes' in r else ''} | "
            f"{_fmt_bytes(r.get('adapter_with_shared_bytes'))} | "
            f"{_fmt(r.get('merge_ms'))} |"
        )
    comparisons = auto_vs_forced(record)
    if comparisons:
        lines += [
            "",
            "## TeRA's automatic path against the forced ones",
            "",
            f"Ratios to {reference} (median over rounds). `forward_path=auto` times both paths on first use and keeps "
            f"the faster (tera/autotune.py); goal: within {100 * (AUTO_LIMIT - 1):.0f}% of the better forced path.",
            "",
            "| auto entry | auto | merged | factorised | auto / best forced | verdict |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in comparisons:
            forced = c["forced"]
            cells = [_ratio_cell(forced[p]) if p in forced else "-" for p in ("merged", "factorised")]
            lines.append(
                f"| {c['auto']['method']} | {_ratio_cell(c['auto'])} | {cells[0]} | {cells[1]} | "
                f"{c['auto_over_best']:.3f} (best: {c['best']}) | {auto_verdict(c)} |"
            )
        twins = [c for c in comparisons if c["same_path"]]
        if twins:
            gaps = ", ".join(f"{c['auto']['method']} {100 * abs(c['auto_over_best'] - 1):.1f}%" for c in twins)
            lines += [
                "",
                "Where auto chose the best forced path for every training call, the two entries compute the same "
                f"thing in two processes: their gap measures the noise between processes ({gaps}).",
            ]
        # Sorted: the JSON record stores these keys sorted, and a report re-rendered from it must read the same.
        chosen = [
            (c["auto"]["method"], label, c["auto"]["auto_paths"][label])
            for c in comparisons
            for label in sorted(c["auto"]["auto_paths"])
        ]
        if chosen:
            lines += ["", "Paths auto chose, per kind of call (median ms per path when timed):", ""]
            lines += [f"- {method}: {label}: {path}" for method, label, path in chosen]
    base = by_name.get("base", {})
    paired = (record.get("measurement") or {}).get("inference") == "paired with the base model"
    lines += ["", "## Inference", ""]
    if paired:
        pairs = record["measurement"].get("inference_pairs", 2)  # records older than this field used 2
        lines += [
            f"Inference times: {record['measurement']['rounds']} rounds, every method in turn (order rotated); per "
            f"round each prefill and decode alternates {pairs} times with the same call of the base model "
            "and the faster of each side's calls counts; ms is the median over rounds, `x base` the median over "
            "rounds of the ratio to the base model in the same round (IQR). Unmerged first, then merged (the adapter "
            "folded into the weights).",
            "",
        ]
    lines += [
        "| method | prefill ms unmerged | prefill ms merged | decode ms/token unmerged | decode ms/token merged | "
        "unmerged prefill x base | merged prefill x base | merged decode x base | merged = unmerged (max rel. diff) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r or "prefill_ms_merged" not in r:
            continue
        diff = f"{r['merged_max_rel_diff']:.1e}" if "merged_max_rel_diff" in r else "-"
        lines.append(
            f"| {r['method']} | {_fmt(r.get('prefill_ms_unmerged'), 2)} | {_fmt(r['prefill_ms_merged'], 2)} | "
            f"{_fmt(r.get('decode_ms_per_token_unmerged'), 2)} | {_fmt(r['decode_ms_per_token_merged'], 2)} | "
            f"{_vs_base(r, base, 'prefill', 'unmerged')} | {_vs_base(r, base, 'prefill', 'merged')} | "
            f"{_vs_base(r, base, 'decode', 'merged')} | {diff} |"
        )
    wide = [
        f"{r['method']} ({kind} {phase})"
        for r in rows
        for kind in INFERENCE_KINDS
        for phase in ("unmerged", "merged")
        if r.get(f"{kind}_vs_base_{phase}") and _spread(r[f"{kind}_vs_base_{phase}"]) > SPREAD_LIMIT
    ]
    if wide:
        lines += [
            "",
            f"**Warning: inference spread too wide to trust** (interquartile range above {100 * SPREAD_LIMIT:.0f}% of "
            f"the median ratio): {', '.join(wide)}.",
        ]
    lines += ["", *targets(record)]
    return "\n".join(lines) + "\n"


def _step_ratio(row: dict[str, Any], lora: dict[str, Any]) -> float:
    return row["ratio"]["median"] if row.get("ratio") else row["step_ms"] / lora["step_ms"]


def _inference_ratio(row: dict[str, Any], base: dict[str, Any], kind: str, phase: str) -> float:
    """The paired median ratio to the base model when measured so, else the ratio of the medians."""
    paired = row.get(f"{kind}_vs_base_{phase}")
    if paired:
        return paired["median"]
    key = "prefill_ms" if kind == "prefill" else "decode_ms_per_token"
    return row[f"{key}_{phase}"] / base[f"{key}_merged"]


def targets(record: dict[str, Any]) -> list[str]:
    """The goals of full-rank TeRA, checked on this run's figures: the GPU ones at LLaMA-2-7B shapes, the CPU ones
    on the small CPU preset."""
    rows = {r["method"]: r for r in record["rows"] if "error" not in r}
    lora = rows.get("lora-r32") or rows.get("lora")
    tera, half, base, full = rows.get("tera"), rows.get("tera-half"), rows.get("base"), rows.get("full")
    if not (lora and tera and "step_ms" in lora and "step_ms" in tera):
        return []
    lines = ["## Targets", ""]
    on_gpu = record["preset"]["device"].startswith("cuda")

    def check(label: str, value: float, limit: float, unit: str = "x") -> None:
        verdict = "met" if value <= limit else f"missed by {100 * (value / limit - 1):.1f}%"
        lines.append(f"- {label}: {value:.3f}{unit} (target <= {limit:g}{unit}): {verdict}")

    cached = rows.get("tera-cached")
    cached = cached if cached and "step_ms" in cached else None
    kept = "full-rank TeRA keeping W + dW (cache_merged_weight, one weight-sized copy per layer)"
    if on_gpu:
        check("full-rank TeRA train step vs LoRA (stretch 1.2x)", _step_ratio(tera, lora), 1.30)
        check("full-rank TeRA peak memory vs LoRA", tera["peak_train_gib"] / lora["peak_train_gib"], 1.0)
        if half and "step_ms" in half:
            check("TeRA core ranks I/2 train step vs LoRA", _step_ratio(half, lora), 1.06)
        if cached:
            check(f"{kept}: train step vs LoRA", _step_ratio(cached, lora), 1.30)
    else:
        lines += ["CPU goals (the GPU ones are stated for an H200 at LLaMA-2-7B shapes: `make gpu-check`).", ""]
        check("full-rank TeRA (auto) train step vs LoRA", _step_ratio(tera, lora), 1.40)
        twin = next((c for c in auto_vs_forced(record) if c["auto"] is tera and c["same_path"]), None)
        if twin:  # a second sample of the same computation, from another process: how far one reading can move
            forced = twin["forced"][twin["best"]]
            lines.append(
                f"  - the same computation in a second process ({forced['method']}, forced {twin['best']}, which auto "
                f"chose for every training call): {_step_ratio(forced, lora):.3f}x"
            )
        if cached:
            check(f"{kept}: train step vs LoRA", _step_ratio(cached, lora), 1.40)
        if full and "step_ms" in full:
            check(
                "full-rank TeRA (auto) train step vs full fine-tuning",
                _step_ratio(tera, lora) / _step_ratio(full, lora),
                1.0,
            )
            if cached:
                check(
                    f"{kept}: train step vs full fine-tuning", _step_ratio(cached, lora) / _step_ratio(full, lora), 1.0
                )
    if base:
        check("merged TeRA prefill vs base model", _inference_ratio(tera, base, "prefill", "merged"), 1.05)
        lines.append(
            f"- unmerged TeRA overhead: prefill {_inference_ratio(tera, base, 'prefill', 'unmerged'):.2f}x, "
            f"decode {_inference_ratio(tera, base, 'decode', 'unmerged'):.2f}x the base model"
        )
    check("TeRA adapter file without shared factors", tera["adapter_file_bytes"] / 1024, 256, " KB")
    return lines


class _Worker:
    """A method's benchmark process, driven line by line (see :func:`worker`)."""

    def __init__(self, name: str, preset_file: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = (log_dir / f"{name}.log").open("w+")
        command = [sys.executable, "-m", "experiments.benchmarks.efficiency", "--preset-file", preset_file]
        self.proc = subprocess.Popen(
            [*command, "--worker", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            tail = (self.log.read().strip().splitlines() or [f"exit status {self.proc.returncode}, no output"])[-1]
            return {"error": tail[:300]}
        return json.loads(line)

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process died; read() says why
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _quartiles(values: list[float]) -> dict[str, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": median, "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def reference_method(names: list[str]) -> str | None:
    """The row the ratios are taken against: the first LoRA entry."""
    return next((name for name in names if name.startswith("lora")), None)


def _system_cpu_seconds() -> float | None:
    """CPU seconds every process on this machine has used (Linux /proc/stat), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used by the given processes (utime + stime), from /proc/<pid>/stat."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class _CpuWatch:
    """How many cores processes other than the benchmark's kept busy between start() and stop()."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]

    def start(self) -> None:
        self.t0, self.sys0, self.own0 = time.perf_counter(), _system_cpu_seconds(), _process_cpu_seconds(self.pids)

    def stop(self) -> float | None:
        system = _system_cpu_seconds()
        if system is None or self.sys0 is None:
            return None
        others = (system - self.sys0) - (_process_cpu_seconds(self.pids) - self.own0)
        return max(others, 0.0) / (time.perf_counter() - self.t0)


def _ask(bench: _Worker, command: dict[str, Any], failed: dict[str, str]) -> dict[str, Any] | None:
    """The worker's reply, or None when it failed (its error is recorded in ``failed``; the others go on)."""
    reply = bench.ask(command)
    if "error" in reply:
        failed[bench.name] = reply["error"]
        return None
    return reply


def _timed_steps(bench: _Worker, count: int, failed: dict[str, str], timed: bool = True) -> list[float]:
    reply = _ask(bench, {"steps": count, "timed": timed}, failed)
    return reply["times"] if reply else []


def _rounds(workers: list[_Worker], preset: dict[str, Any], failed: dict[str, str]) -> dict[str, Any]:
    """Round-robin timing, every method in every round (order rotated by one each round), each step of a method
    paired with a step of the reference (LoRA) run just before it, so that both see the same state of the machine."""
    for bench in workers:  # warm-up: allocator, kernels, autotuned paths
        _timed_steps(bench, preset["warmup"], failed, timed=False)
    alive = [w for w in workers if w.name not in failed]
    reference = next((w for w in alive if w.name == reference_method([b.name for b in alive])), None)
    others = [w for w in alive if w is not reference]
    round_ms: dict[str, list[float]] = {w.name: [] for w in alive}
    round_ratio: dict[str, list[float]] = {w.name: [] for w in alive}
    loads = []
    watch = _CpuWatch([w.proc.pid for w in workers])
    watch.start()
    for index in range(preset["rounds"]):
        shift = index % max(len(others), 1)
        reference_times: list[float] = []
        for bench in others[shift:] + others[:shift]:
            if bench.name in failed or (reference and reference.name in failed):
                continue
            _timed_steps(bench, 1, failed, timed=False)  # refill the caches the others evicted
            if reference:
                _timed_steps(reference, 1, failed, timed=False)
            mine, theirs = [], []
            for _ in range(preset["steps"]):
                if reference:
                    theirs += _timed_steps(reference, 1, failed)
                mine += _timed_steps(bench, 1, failed)
            if not mine:
                continue
            # The fastest of a method's steps counts: on a shared machine noise only ever adds time.
            round_ms[bench.name].append(1000 * min(mine))
            if theirs:
                round_ratio[bench.name].append(min(mine) / min(theirs))
                reference_times += theirs
        if reference_times:
            round_ms[reference.name].append(1000 * min(reference_times))
            round_ratio[reference.name].append(1.0)
        loads.append(os.getloadavg()[0])
        print(f"  round {index + 1}/{preset['rounds']} done (load {loads[-1]:.2f})", file=sys.stderr, flush=True)
    return {
        "round_ms": {k: v for k, v in round_ms.items() if k not in failed and v},
        "round_ratio": {k: v for k, v in round_ratio.items() if k not in failed and v},
        "reference": reference.name if reference else None,
        "loads": loads,
        "other_cores": watch.stop(),
    }


INFERENCE_KINDS = ("prefill", "decode")
INFERENCE_PAIRS = 2  # timed (base, method) pairs per kind and round


def _inference_rounds(
    workers: list[_Worker], base: _Worker | None, preset: dict[str, Any], failed: dict[str, str]
) -> dict[str, dict[str, list[float]]]:
    """Round-robin inference timing as for training: in every round each method's prefill and per-token decode
    alternate with the same call of the base model (base, method, base, method), so that both see the same state of
    the machine; the faster of each side's two calls counts (the first call after another process ran pays for the
    caches it evicted, and alternating lets each side have one call that follows the other).  Per method and kind:
    the seconds per round and the ratio to the base model's in the same round."""
    out = {w.name: {k: [] for kind in INFERENCE_KINDS for k in (kind, f"{kind}_ratio")} for w in workers}
    if base is not None:
        out[base.name] = {kind: [] for kind in INFERENCE_KINDS}

    def once(bench: _Worker, kind: str) -> float | None:
        if bench.name in failed:
            return None
        reply = _ask(bench, {"infer": kind}, failed)
        return reply["s"] if reply else None

    for bench in [*workers, *([base] if base else [])]:  # warm-up: eval-mode kernels, caches, the auto paths
        for kind in INFERENCE_KINDS:
            once(bench, kind)
    for index in range(preset["rounds"]):
        shift = index % max(len(workers), 1)
        for bench in workers[shift:] + workers[:shift]:
            for kind in INFERENCE_KINDS:
                theirs, mine = [], []
                for _ in range(INFERENCE_PAIRS):
                    theirs.append(once(base, kind) if base else None)
                    mine.append(once(bench, kind))
                if None in mine:
                    break
                out[bench.name][kind].append(min(mine))
                if base and None not in theirs:
                    out[base.name][kind].append(min(theirs))
                    out[bench.name][f"{kind}_ratio"].append(min(mine) / min(theirs))
    return out


def _inference_figures(row: dict[str, Any], timing: dict[str, list[float]], phase: str) -> None:
    """Into the row: median ms of each kind in ``phase`` (unmerged or merged), and the ratio to the base model."""
    for kind, key in (("prefill", "prefill_ms"), ("decode", "decode_ms_per_token")):
        if timing.get(kind):
            row[f"{key}_{phase}"] = 1000 * statistics.median(timing[kind])
        if timing.get(f"{kind}_ratio"):
            row[f"{kind}_vs_base_{phase}"] = _quartiles(timing[f"{kind}_ratio"])


def run_all(preset: dict[str, Any], out_dir: Path, report: Path, methods: list[str] | None = None) -> dict[str, Any]:
    """Measure every method of ``preset`` (each in its own process, timed round-robin), write the record and report.

    Ctrl-C stops it with one line and exit status 130: the record and report are written only at the end, so the
    previous ones stay as they were, and the method processes are closed."""
    try:
        return _measure_and_write(preset, out_dir, report, methods)
    except KeyboardInterrupt:
        print(f"interrupted: nothing written; {report} and its record are as they were.", file=sys.stderr)
        raise SystemExit(130) from None


def _measure_and_write(
    preset: dict[str, Any], out_dir: Path, report: Path, methods: list[str] | None
) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from experiments.records.write import environment, write_json_atomic

    if preset["device"].startswith("cuda") and not torch.cuda.is_available():
        _user_error(f"preset {preset['name']!r} needs a CUDA GPU; use the cpu-small preset on this machine.")
    known = [method_spec(e)["name"] for e in preset["methods"]]
    unknown = [name for name in methods or [] if name not in known]
    if unknown:
        _user_error(f"preset {preset['name']!r} has no method {', '.join(unknown)}; choose from: {', '.join(known)}.")
    names = [name for name in known if methods is None or name in methods]
    env = child_env()
    load_before = os.getloadavg()[0]
    failed: dict[str, str] = {}
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        preset_file = Path(scratch) / "preset.json"
        preset_file.write_text(json.dumps(preset))
        print(f"starting {len(names)} method processes ...", file=sys.stderr, flush=True)
        workers = [_Worker(name, str(preset_file), env, Path(scratch)) for name in names]
        try:
            for bench in workers:
                reply = bench.read()
                if "error" in reply:
                    failed[bench.name] = reply["error"]
            live = [w for w in workers if w.name not in failed]
            trainers = [w for w in live if method_spec(_entry(preset, w.name))["method"] != "base"]
            timing = _rounds(trainers, preset, failed)
            for bench in (w for w in trainers if w.name not in failed):
                _ask(bench, {"figures": True}, failed)  # memory right after training, storage
            base = next((w for w in live if w not in trainers and w.name not in failed), None)
            adapters = [
                w for w in trainers if w.name not in failed and method_spec(_entry(preset, w.name))["method"] != "full"
            ]
            print("inference rounds, unmerged adapters ...", file=sys.stderr, flush=True)
            unmerged = _inference_rounds(adapters, base, preset, failed)
            for bench in (w for w in adapters if w.name not in failed):
                _ask(bench, {"merge": True}, failed)
            print("inference rounds, merged ...", file=sys.stderr, flush=True)
            merged = _inference_rounds([w for w in trainers if w.name not in failed], base, preset, failed)
            for bench in (w for w in live if w.name not in failed):
                reply = _ask(bench, {"finish": True}, failed)
                if reply:
                    rows[bench.name] = reply["row"]
        finally:
            for bench in workers:
                bench.close()
    for phase, per_method in (("unmerged", unmerged), ("merged", merged)):
        for name, kinds in per_method.items():
            if name in rows:
                _inference_figures(rows[name], kinds, phase)
    reference = timing["reference"]
    for name, per_round in timing["round_ms"].items():
        if name not in rows:
            continue
        rows[name]["round_ms"] = per_round
        rows[name]["step_ms"] = statistics.median(per_round)
        rows[name]["tokens_per_s"] = preset["batch"] * preset["seq"] / (rows[name]["step_ms"] / 1000)
        if name in timing["round_ratio"]:
            rows[name]["round_ratio"] = timing["round_ratio"][name]
            rows[name]["ratio"] = _quartiles(timing["round_ratio"][name])
    ordered = [rows.get(name) or {"method": name, "error": failed.get(name, "no result")} for name in names]
    measurement = {
        "inference": "paired with the base model" if base else "unpaired",
        "inference_pairs": INFERENCE_PAIRS,
        "rounds": preset["rounds"],
        "steps_per_round": preset["steps"],
        "reference": reference,
        "load_before": load_before,
        "loads": timing["loads"],
        "other_cores": timing["other_cores"],
        "cores": os.cpu_count(),
    }
    record = {
        "preset": preset,
        "environment": environment(preset["device"]),
        "measurement": measurement,
        "rows": ordered,
    }
    write_json_atomic(out_dir / f"efficiency-{preset['name']}.json", record)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(record))
    return record


def child_env() -> dict[str, str]:
    """This environment with the project root first on PYTHONPATH: what a child process of the suite needs."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _entry(preset: dict[str, Any], name: str) -> str | dict[str, Any]:
    return next(e for e in preset["methods"] if method_spec(e)["name"] == name)


def default_report(preset: dict[str, Any]) -> Path:
    """``results/efficiency.md`` for the main CPU preset, ``results/efficiency-<preset>.md`` for any other."""
    return ROOT / "results" / ("efficiency.md" if preset["name"] == "cpu-small" else f"efficiency-{preset['name']}.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small", help="a conf/bench/<name>.yaml preset")
    parser.add_argument("--preset-file", type=Path, help=argparse.SUPPRESS)  # child-process mode: resolved preset
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of the preset's methods")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # child-process mode: one method, JSON lines
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    parser.add_argument(
        "--report", type=Path, default=None, help="Markdown report (default results/efficiency[-<preset>].md)"
    )
    args = parser.parse_args(argv)
    preset = json.loads(args.preset_file.read_text()) if args.preset_file else load_preset(args.preset)
    if args.worker:
        return worker(preset, args.worker)
    report = args.report or default_report(preset)
    run_all(preset, args.out, report, args.methods)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
