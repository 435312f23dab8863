"""The Markdown report of a benchmark record (``results/efficiency*.md``): how the figures were taken and whether the
machine or the spread make them untrustworthy, training and storage, TeRA's automatic path against the forced ones,
inference, and the targets.  A report re-rendered from the JSON record reads the same, byte for byte."""

from __future__ import annotations

import json
from typing import Any

from experiments.benchmarks.efficiency.goals import (
    auto_verdict,
    auto_vs_forced,
    goals_of,
    inference_ratio,
    targets,
)
from experiments.benchmarks.efficiency.rounds import INFERENCE_KINDS

# How far the figures can be trusted (not goals of the project: what the report warns about).
SPREAD_LIMIT = 0.10  # an interquartile range wider than this fraction of the median ratio is flagged
BUSY_CORES = 0.25  # other processes using more than a quarter of a core on average make the machine "busy"


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
        return f"{inference_ratio(row, base, kind, phase):.2f}"
    except (KeyError, ZeroDivisionError):  # not measured in this phase (base and full FT have no unmerged figures)
        return "-"


def machine_note(m: dict[str, Any]) -> tuple[str, bool]:
    """The machine's load before and during the rounds, and whether other work made it busy."""
    loads = m["loads"] or [m["load_before"]]
    line = (
        f"Machine: 1-minute load {m['load_before']:.2f} before the benchmark, {min(loads):.2f}-{max(loads):.2f} "
        f"during the rounds, on {m['cores']} cores."
    )
    other = m.get("other_cores")
    if other is None:  # no /proc: the load average, which also counts this benchmark's own process per core
        return line, max(loads) > m["cores"] + 1
    return f"{line} Other processes kept {other:.2f} cores busy on average during the rounds.", other > BUSY_CORES


def measurement_notes(record: dict[str, Any]) -> list[str]:
    """How the step times were taken, and whether the machine or the spread make them untrustworthy."""
    m = record.get("measurement")
    if not m:
        return []
    lines = [
        f"Step times: {m['rounds']} rounds; each round runs every method in turn (order rotated by one each round): "
        f"one untimed step, then {m['steps_per_round']} timed steps, each right after a timed step of "
        f"{m['reference']}, so that both see the same state of the machine. Per round the fastest step of each counts "
        "(noise only adds time); a method's step ms is the median over rounds, its ratio the median over rounds of "
        f"(its round time / {m['reference']}'s in the same round), with the interquartile range in brackets.",
        "",
    ]
    machine, busy = machine_note(m)
    lines.append(machine)
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


def render(record: dict[str, Any]) -> str:
    """The whole report of ``record``, the text of ``results/efficiency*.md``."""
    reference = (record.get("measurement") or {}).get("reference") or "LoRA"
    lines = [
        *_header(record),
        "",
        *measurement_notes(record),
        "",
        *_training_table(record, reference),
        *_auto_section(record, reference),
        *_inference_section(record),
        "",
        *targets(record),
    ]
    return "\n".join(lines) + "\n"


def _header(record: dict[str, Any]) -> list[str]:
    """The title, the device and versions, and the model and batch that every figure is for."""
    env, preset, shape = record["environment"], record["preset"], record["preset"]["model"]
    return [
        f"# Efficiency report, preset `{preset['name']}`",
        "",
        f"Device: {env['device']}; date {env['date']}; torch {env['versions']['torch']}, "
        f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}. Written by "
        # The path before this module became a package: committed reports re-render from their records unchanged.
        "`experiments/benchmarks/efficiency.py`.",
        "",
        f"Model: LLaMA-style, hidden {shape['hidden']}, intermediate {shape['intermediate']}, {shape['layers']} "
        f"layers, random weights, {preset['dtype']}; batch {preset['batch']} x {preset['seq']} tokens; adapters on "
        f"{', '.join(preset['targets'])}. Train step: forward, backward, AdamW step. Each method runs in its own "
        "process (clean peak-memory counters). Decode: median ms per generated token for the whole batch, KV cache.",
    ]


def _training_table(record: dict[str, Any], reference: str) -> list[str]:
    """One row per method: trainable values, optimizer state, step time and its ratio, memory, storage, merge."""
    cuda = record["preset"]["device"].startswith("cuda")
    memory = "peak GiB (CUDA allocated)" if cuda else "peak RSS GiB (process)"
    lines = [
        "## Training and storage",
        "",
        f"| method | trainable | optimizer state | step ms | x {reference} (IQR) | tokens/s | {memory} | "
        "adapter file | with shared factors | merge ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["rows"]:
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
    return lines


def _auto_section(record: dict[str, Any], reference: str) -> list[str]:
    """Each TeRA entry on forward_path=auto against its forced-path siblings, and the paths auto chose."""
    comparisons = auto_vs_forced(record)
    if not comparisons:
        return []
    limit = goals_of(record["preset"]).get("auto_vs_best_forced")  # no goal stated: no verdict
    goal = f"; goal: within {100 * (limit - 1):.0f}% of the better forced path" if limit else ""
    lines = [
        "",
        "## TeRA's automatic path against the forced ones",
        "",
        f"Ratios to {reference} (median over rounds). `forward_path=auto` times both paths on first use and keeps "
        f"the faster (tera/autotune.py){goal}.",
        "",
        "| auto entry | auto | merged | factorised | auto / best forced | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in comparisons:
        forced = c["forced"]
        cells = [_ratio_cell(forced[p]) if p in forced else "-" for p in ("merged", "factorised")]
        lines.append(
            f"| {c['auto']['method']} | {_ratio_cell(c['auto'])} | {cells[0]} | {cells[1]} | "
            f"{c['auto_over_best']:.3f} (best: {c['best']}) | {auto_verdict(c, limit) if limit else '-'} |"
        )
    twins = [c for c in comparisons if c["same_path"]]
    if twins:
        gaps = ", ".join(f"{c['auto']['method']} {100 * abs(c['auto_over_best'] - 1):.1f}%" for c in twins)
        lines += [
            "",
            "Where auto chose the best forced path for every training call, the two entries compute the same "
            f"thing in two processes: their gap measures the noise between processes ({gaps}).",
        ]
    return lines + _auto_choices(comparisons)


def _auto_choices(comparisons: list[dict[str, Any]]) -> list[str]:
    """The path auto chose per kind of call, with the timings it chose from."""
    # Sorted: the JSON record stores these keys sorted, and a report re-rendered from it must read the same.
    chosen = [
        (c["auto"]["method"], label, c["auto"]["auto_paths"][label])
        for c in comparisons
        for label in sorted(c["auto"]["auto_paths"])
    ]
    if not chosen:
        return []
    lines = ["", "Paths auto chose, per kind of call (median ms per path when timed):", ""]
    return lines + [f"- {method}: {label}: {path}" for method, label, path in chosen]


def _inference_section(record: dict[str, Any]) -> list[str]:
    """How inference was timed, one row per method (unmerged and merged, ratios to the base model), and a warning
    when a ratio's spread is too wide to trust."""
    lines = ["", "## Inference", ""]
    measurement = record.get("measurement") or {}
    if measurement.get("inference") == "paired with the base model":
        pairs = measurement.get("inference_pairs", 2)  # records older than this field used 2
        lines += [
            f"Inference times: {measurement['rounds']} rounds, every method in turn (order rotated); per "
            f"round each prefill and decode alternates {pairs} times with the same call of the base model "
            "and the faster of each side's calls counts; ms is the median over rounds, `x base` the median over "
            "rounds of the ratio to the base model in the same round (IQR). Unmerged first, then merged (the adapter "
            "folded into the weights).",
            "",
        ]
    return lines + _inference_table(record["rows"]) + _inference_spread_warning(record["rows"])


def _inference_table(rows: list[dict[str, Any]]) -> list[str]:
    base = {r["method"]: r for r in rows}.get("base", {})
    lines = [
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
    return lines


def _inference_spread_warning(rows: list[dict[str, Any]]) -> list[str]:
    wide = [
        f"{r['method']} ({kind} {phase})"
        for r in rows
        for kind in INFERENCE_KINDS
        for phase in ("unmerged", "merged")
        if r.get(f"{kind}_vs_base_{phase}") and _spread(r[f"{kind}_vs_base_{phase}"]) > SPREAD_LIMIT
    ]
    if not wide:
        return []
    return [
        "",
        f"**Warning: inference spread too wide to trust** (interquartile range above {100 * SPREAD_LIMIT:.0f}% of "
        f"the median ratio): {', '.join(wide)}.",
    ]
