"""Interleaved serving rounds, on the efficiency benchmark's scheme (:mod:`experiments.benchmarks.efficiency.rounds`):
every round runs every method in turn (order rotated by one per round), and each of its configurations (prefill and
decode with k distinct adapters per batch, and the merged single adapter) alternates with the same call of the base
model, the faster of each side's calls counting; the ratio to the base model is taken per round, so slow drifts of
the machine hit both sides alike.  Figures: the median over rounds with the interquartile range."""

from __future__ import annotations

import os
import statistics
import sys
from typing import TYPE_CHECKING, Any

from experiments.benchmarks.efficiency.rounds import INFERENCE_KINDS, INFERENCE_PAIRS, _CpuWatch, ask, quartiles

if TYPE_CHECKING:
    from experiments.benchmarks.efficiency.workers import Worker

MERGED = "merged"


def configurations(preset: dict[str, Any]) -> list[tuple[str, int | str]]:
    """(kind, k) for every timed configuration of a method: k distinct adapters per batch, then the merged one."""
    return [(kind, k) for kind in INFERENCE_KINDS for k in [*preset["distinct"], MERGED]]


def config_key(kind: str, k: int | str) -> str:
    return f"{kind}:{k}"


def _once(bench: Worker | None, kind: str, k: int | str | None, failed: dict[str, str]) -> float | None:
    if bench is None or bench.name in failed:
        return None
    reply = ask(bench, {"infer": kind, "k": k}, failed)
    return reply["s"] if reply else None


def _pair(bench: Worker, base: Worker | None, kind: str, k: int | str, preset: dict[str, Any], state: dict) -> None:
    """One configuration in one round: (base, method) ``pairs`` times; the faster call of each side counts."""
    failed = state["failed"]
    theirs, mine = [], []
    for _ in range(preset.get("pairs", INFERENCE_PAIRS)):
        theirs.append(_once(base, kind, None, failed))
        mine.append(_once(bench, kind, k, failed))
    if None in mine:
        return
    slot = state["out"][bench.name][config_key(kind, k)]
    slot["s"].append(min(mine))
    if None not in theirs:
        slot["ratio"].append(min(mine) / min(theirs))
        state["round_base"][kind].append(min(theirs))


def serving_rounds(
    workers: list[Worker], base: Worker | None, preset: dict[str, Any], failed: dict[str, str]
) -> dict[str, Any]:
    """Round-robin timing of every method's configurations, each paired with the base model's same call."""
    configs = configurations(preset)
    out = {w.name: {config_key(*c): {"s": [], "ratio": []} for c in configs} for w in workers}
    base_s: dict[str, list[float]] = {kind: [] for kind in INFERENCE_KINDS}
    for bench in workers:  # warm-up: kernels, caches, TeRA's stacked tables and automatic paths
        for kind, k in configs:
            _once(bench, kind, k, failed)
    for kind in INFERENCE_KINDS:
        _once(base, kind, None, failed)
    watch = _CpuWatch([w.proc.pid for w in [*workers, *([base] if base else [])]])
    watch.start()
    loads = []
    for index in range(preset["rounds"]):
        state = {"failed": failed, "out": out, "round_base": {kind: [] for kind in INFERENCE_KINDS}}
        shift = index % max(len(workers), 1)
        for bench in workers[shift:] + workers[:shift]:
            for kind, k in configs:
                if bench.name not in failed:
                    _pair(bench, base, kind, k, preset, state)
        for kind, values in state["round_base"].items():
            if values:  # the base model's figure of the round: the median of its pairs, as comparable as a method's
                base_s[kind].append(statistics.median(values))
        loads.append(os.getloadavg()[0])
        print(f"  round {index + 1}/{preset['rounds']} done (load {loads[-1]:.2f})", file=sys.stderr, flush=True)
    return {"methods": out, "base": base_s, "loads": loads, "other_cores": watch.stop()}


def tokens_per_call(preset: dict[str, Any], kind: str) -> int:
    """Tokens one timed call handles: the whole prompt batch for a prefill, one token per row for a decode step."""
    return preset["batch"] * (preset["seq"] if kind == "prefill" else 1)


def serving_figures(preset: dict[str, Any], timing: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Per configuration: median ms, tokens/s, the ratio to the base model (median over rounds, IQR), and for k
    distinct adapters the tokens/s over those of the same batch on one adapter (per round, through the ratios to
    the base model, so that the machine's drift between the two calls cancels)."""
    figures: dict[str, dict[str, Any]] = {}
    for kind in INFERENCE_KINDS:
        single = timing.get(config_key(kind, 1), {}).get("ratio", [])
        for k in [*preset["distinct"], MERGED]:
            slot = timing.get(config_key(kind, k))
            if not slot or not slot["s"]:
                continue
            seconds = statistics.median(slot["s"])
            entry: dict[str, Any] = {"ms": 1000 * seconds, "tokens_per_s": tokens_per_call(preset, kind) / seconds}
            if slot["ratio"]:
                entry["vs_base"] = quartiles(slot["ratio"])
            if k != MERGED and single and len(single) == len(slot["ratio"]):
                entry["vs_single"] = quartiles([one / mine for one, mine in zip(single, slot["ratio"])])
            figures[config_key(kind, k)] = entry
    return figures


def base_figures(preset: dict[str, Any], base_s: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        kind: {"ms": 1000 * statistics.median(s), "tokens_per_s": tokens_per_call(preset, kind) / statistics.median(s)}
        for kind, s in base_s.items()
        if s
    }
