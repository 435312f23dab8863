"""Interleaved rounds: every method timed in every round, order rotated by one per round, each step or inference call
paired with the reference's (LoRA's for training, the base model's for inference) run right before it, so that slow
drifts of the machine hit every method alike.  Per method: the figure per round, the ratio per round, and their
median with the interquartile range; and how busy other processes kept the cores meanwhile (/proc on Linux)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiments.benchmarks.efficiency.workers import Worker

INFERENCE_KINDS = ("prefill", "decode")
INFERENCE_PAIRS = 2  # timed (base, method) pairs per kind and round


def quartiles(values: list[float]) -> dict[str, float]:
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


def ask(bench: Worker, command: dict[str, Any], failed: dict[str, str]) -> dict[str, Any] | None:
    """The worker's reply, or None when it failed (its error is recorded in ``failed``; the others go on)."""
    reply = bench.ask(command)
    if "error" in reply:
        failed[bench.name] = reply["error"]
        return None
    return reply


def _timed_steps(bench: Worker, count: int, failed: dict[str, str], timed: bool = True) -> list[float]:
    reply = ask(bench, {"steps": count, "timed": timed}, failed)
    return reply["times"] if reply else []


def training_rounds(workers: list[Worker], preset: dict[str, Any], failed: dict[str, str]) -> dict[str, Any]:
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


def inference_rounds(
    workers: list[Worker], base: Worker | None, preset: dict[str, Any], failed: dict[str, str]
) -> dict[str, dict[str, list[float]]]:
    """Round-robin inference timing as for training: in every round each method's prefill and per-token decode
    alternate with the same call of the base model (base, method, base, method), so that both see the same state of
    the machine; the faster of each side's two calls counts (the first call after another process ran pays for the
    caches it evicted, and alternating lets each side have one call that follows the other).  Per method and kind:
    the seconds per round and the ratio to the base model's in the same round."""
    out = {w.name: {k: [] for kind in INFERENCE_KINDS for k in (kind, f"{kind}_ratio")} for w in workers}
    if base is not None:
        out[base.name] = {kind: [] for kind in INFERENCE_KINDS}

    def once(bench: Worker, kind: str) -> float | None:
        if bench.name in failed:
            return None
        reply = ask(bench, {"infer": kind}, failed)
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


def inference_figures(row: dict[str, Any], timing: dict[str, list[float]], phase: str) -> None:
    """Into the row: median ms of each kind in ``phase`` (unmerged or merged), and the ratio to the base model."""
    for kind, key in (("prefill", "prefill_ms"), ("decode", "decode_ms_per_token")):
        if timing.get(kind):
            row[f"{key}_{phase}"] = 1000 * statistics.median(timing[kind])
        if timing.get(f"{kind}_ratio"):
            row[f"{kind}_vs_base_{phase}"] = quartiles(timing[f"{kind}_ratio"])
