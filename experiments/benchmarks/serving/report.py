"""The Markdown report of a serving record (``results/serving*.md``): how the figures were taken and whether the
machine or the spread make them untrustworthy, the mixed-batch check, tokens/s against the number of distinct adapters
per batch, what resident adapters cost, and the targets.  A report re-rendered from the JSON record reads the same."""

from __future__ import annotations

from typing import Any

from experiments.benchmarks.efficiency.report import SPREAD_LIMIT, machine_note
from experiments.benchmarks.efficiency.rounds import INFERENCE_KINDS, INFERENCE_PAIRS
from experiments.benchmarks.serving.goals import targets
from experiments.benchmarks.serving.rounds import MERGED


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GB"


def _cell(figure: dict[str, float] | None) -> str:
    """``median (q1-q3)`` of a ratio."""
    return "-" if not figure else f"{figure['median']:.2f} ({figure['q1']:.2f}-{figure['q3']:.2f})"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(record: dict[str, Any]) -> str:
    """The whole report of ``record``, the text of ``results/serving*.md``."""
    lines = [
        *_header(record),
        "",
        *_measurement(record),
        "",
        *_check_section(record),
        "",
        *_throughput_section(record),
        "",
        *_resident_section(record),
        "",
        *targets(record),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def _header(record: dict[str, Any]) -> list[str]:
    env, preset, shape = record["environment"], record["preset"], record["preset"]["model"]
    methods = ", ".join(f"`{r['method']}`" for r in record["rows"] if r["method"] != "base")
    return [
        f"# Serving many adapters, preset `{preset['name']}`",
        "",
        f"Device: {env['device']}; date {env['date']}; torch {env['versions']['torch']}, "
        f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}. Written by "
        "`experiments/benchmarks/serving/` (`make bench-serving`).",
        "",
        f"Model: LLaMA-style, hidden {shape['hidden']}, intermediate {shape['intermediate']}, {shape['layers']} "
        f"layers, random weights, {preset['dtype']}; batch {preset['batch']} x {preset['seq']} prompt tokens, "
        f"{preset['decode_tokens']} tokens decoded greedily with a KV cache; adapters on "
        f"{', '.join(preset['targets'])}. Methods: {methods} (their options in the record), each against the base "
        "model. Every adapter has random non-zero trainable values (the method's own random initialisation, seeded "
        "per adapter). A batch with k distinct adapters goes through PEFT's `adapter_names=` (row b uses adapter "
        "b mod k); `merged` is the first adapter folded into the weights, the single-tenant reference.",
    ]


def _measurement(record: dict[str, Any]) -> list[str]:
    """How the times were taken, and whether the machine or the spread make them untrustworthy."""
    m, preset = record["measurement"], record["preset"]
    pairs = m.get("pairs") or INFERENCE_PAIRS
    lines = [
        f"Times: {m['rounds']} rounds; each round runs every method in turn (order rotated by one each round), and "
        f"each of its calls alternates {pairs} time(s) with the same call of the base model, the faster call of "
        "each side counting. ms and tokens/s are medians over rounds; `x base` is the median over rounds of the "
        "time over the base model's in the same round, `x one adapter` the tokens/s over those of the same batch "
        "on one adapter (per round, both through their ratios to the base model), with the interquartile range "
        f"in brackets. Decode: the median time per generated token of the whole batch, after one step.",
        "",
    ]
    machine, busy = machine_note(m)
    lines.append(machine)
    wide = sorted(
        {
            r["method"]
            for r in record["rows"]
            for f in (r.get("figures") or {}).values()
            if f.get("vs_base") and (f["vs_base"]["q3"] - f["vs_base"]["q1"]) / f["vs_base"]["median"] > SPREAD_LIMIT
        }
    )
    if busy:
        lines.append("**Warning: the machine was busy** during the rounds: ratios may be off; rerun on a quiet one.")
    if wide:
        lines.append(
            f"**Warning: spread too wide to trust** (a ratio's interquartile range above {100 * SPREAD_LIMIT:.0f}% "
            f"of its median): {', '.join(wide)}."
        )
    if not busy and not wide:
        lines.append(f"Quiet machine, each ratio's interquartile range within {100 * SPREAD_LIMIT:.0f}% of its median.")
    if preset["device"] == "cpu" and preset["name"].endswith("tiny"):
        lines.append("Tiny shapes: the figures say the code runs, nothing more.")
    return lines


def _check_section(record: dict[str, Any]) -> list[str]:
    lines = [
        "## Mixed batches compute what each adapter computes alone",
        "",
        "One batch whose rows name different adapters (and one `__base__` row) against each row run alone with its "
        "adapter active (the base row with the adapters disabled): relative error of the logits (norm of the "
        "difference over the norm of the row alone), rows whose greedy tokens agree, and the merged first adapter "
        "against it unmerged. `update size`: how far the adapters move their rows from the base model (the "
        "check is only as sharp as that is large).",
        "",
        "| method | rows | mixed vs alone | greedy tokens agree | merged vs unmerged | update size | tolerance | ok |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["rows"]:
        c = r.get("check")
        if not c:
            continue
        lines.append(
            f"| {r['method']} | {', '.join(c['rows'])} | {c['max_rel_diff']:.1e} | "
            f"{c['greedy_same_rows']}/{len(c['rows'])} ({c['greedy_tokens']} tokens) | {c['merged_rel_diff']:.1e} | "
            f"{c['update_rel_size']:.2f} | {c['tolerance']:g} | {'yes' if c['ok'] else 'NO'} |"
        )
    return lines


def _throughput_section(record: dict[str, Any]) -> list[str]:
    preset, base = record["preset"], record.get("base") or {}
    plot = record.get("plot") or {}
    lines = ["## Tokens per second against distinct adapters per batch", ""]
    if plot.get("path"):
        lines += [f"![tokens/s against distinct adapters per batch]({plot['path']})", ""]
    elif plot.get("skipped"):
        lines += [f"No plot: {plot['skipped']}.", ""]
    lines += [
        "| method | k distinct | prefill tokens/s | prefill x base | prefill x one adapter | decode tokens/s | "
        "decode x base | decode x one adapter |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if base:
        cells = [_num(base.get(kind, {}).get("tokens_per_s"), 0) for kind in INFERENCE_KINDS]
        lines.append(f"| base | - | {cells[0]} | 1 | - | {cells[1]} | 1 | - |")
    for r in record["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | | |")
            continue
        for k in [*preset["distinct"], MERGED]:
            f = {kind: r["figures"].get(f"{kind}:{k}") or {} for kind in INFERENCE_KINDS}
            lines.append(
                f"| {r['method']} | {k} | {_num(f['prefill'].get('tokens_per_s'), 0)} | "
                f"{_cell(f['prefill'].get('vs_base'))} | {_cell(f['prefill'].get('vs_single'))} | "
                f"{_num(f['decode'].get('tokens_per_s'), 0)} | {_cell(f['decode'].get('vs_base'))} | "
                f"{_cell(f['decode'].get('vs_single'))} |"
            )
    return lines


def _resident_section(record: dict[str, Any]) -> list[str]:
    """Per method: what each resident adapter holds, how long PEFT takes to load one, decode with N resident."""
    preset = record["preset"]
    lines = [
        "## Resident adapters",
        "",
        "Adapters added one by one with PEFT's `add_adapter`, within each method's budget of adding (below; a "
        "method stops before a checkpoint its adding so far says it would not reach in time). "
        "At each checkpoint: the adapter's own tensors (bytes per adapter; frozen tensors shared by all adapters "
        "are counted once, below), the mixed-batch cache per adapter (TeRA's stacked per-row tables), CUDA memory "
        f"allocated, the median of {preset['load_repeats']} PEFT `load_adapter` calls of one saved adapter with "
        "the others resident, and one decode with N resident (k = min(N, batch) distinct, unpaired).",
    ]
    for r in record["rows"]:
        if "sweep" not in r:
            continue
        lines += ["", *_sweep_table(r)]
    return lines


def _sweep_table(row: dict[str, Any]) -> list[str]:
    lines = [
        f"`{row['method']}`: {row['trainable_per_adapter']:,} trainable values ({row['adapter_dtype']}) per adapter, "
        f"adapter file {_bytes(row['adapter_file_bytes'])}, shared frozen tensors {_bytes(row['shared_frozen_bytes'])}"
        f" once; {row['resident_reached']} adapters resident at the end after {row['add_s']:.1f} s of adding "
        f"(budget {row['add_budget_s']:g} s).",
    ]
    stop = row.get("sweep_stop")
    if stop:
        lines[-1] += (
            f" Stopped before {stop['next']}: about {stop['estimate_s']:.0f} s more adding on top of "
            f"{stop['spent_s']:.0f} s would pass the budget."
        )
    lines += [
        "",
        "| resident N | own bytes / adapter | cache / adapter | CUDA allocated | add ms / adapter | load_adapter ms | "
        "decode ms/token (k) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in row["sweep"]:
        add = None if c["add_s_per_adapter"] is None else 1000 * c["add_s_per_adapter"]
        lines.append(
            f"| {c['resident']} | {_bytes(c['own_bytes_per_adapter'])} | {_bytes(c['cache_bytes_per_adapter'])} | "
            f"{_bytes(c['cuda_allocated_bytes'])} | {_num(add)} | {_num(c['load_ms'])} | "
            f"{_num(c['decode_ms_per_token'], 2)} ({c['decode_k']}) |"
        )
    return lines
