"""One benchmark run: check what was asked for, start a process per method, time them in interleaved rounds
(training, then inference unmerged and merged), collect every method's figures and write the JSON record and the
Markdown report."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from experiments.benchmarks.efficiency.goals import check_goals
from experiments.benchmarks.efficiency.presets import ROOT, method_spec, preset_entry, user_error
from experiments.benchmarks.efficiency.report import render
from experiments.benchmarks.efficiency.rounds import (
    INFERENCE_PAIRS,
    ask,
    inference_figures,
    inference_rounds,
    quartiles,
    training_rounds,
)
from experiments.benchmarks.efficiency.workers import Worker, in_worker_processes


def default_report(preset: dict[str, Any]) -> Path:
    """``results/efficiency.md`` for the main CPU preset, ``results/efficiency-<preset>.md`` for any other."""
    return ROOT / "results" / ("efficiency.md" if preset["name"] == "cpu-small" else f"efficiency-{preset['name']}.md")


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

    names = _checked_names(preset, methods)
    load_before = os.getloadavg()[0]
    measured = _measure(preset, names)
    record = {
        "preset": preset,
        "environment": environment(preset["device"]),
        "measurement": _measurement(preset, measured, load_before),
        "rows": _rows(preset, names, measured),
    }
    write_json_atomic(out_dir / f"efficiency-{preset['name']}.json", record)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(record))
    return record


def _checked_names(preset: dict[str, Any], methods: list[str] | None) -> list[str]:
    """The preset's method names to measure, in its order; one sentence and exit status 2 for a mistaken request."""
    if preset["device"].startswith("cuda") and not torch.cuda.is_available():
        user_error(f"preset {preset['name']!r} needs a CUDA GPU; use the cpu-small preset on this machine.")
    known = [method_spec(e)["name"] for e in preset["methods"]]
    unknown = [name for name in methods or [] if name not in known]
    if unknown:
        user_error(f"preset {preset['name']!r} has no method {', '.join(unknown)}; choose from: {', '.join(known)}.")
    check_goals(preset)
    return [name for name in known if methods is None or name in methods]


def _measure(preset: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Every method in its own process, for the whole run; the processes are closed however it ends."""
    return in_worker_processes(preset, names, Worker, _phases, "method processes")


def _phases(preset: dict[str, Any], workers: list[Worker]) -> dict[str, Any]:
    """Training rounds, training figures, inference rounds unmerged, merge, inference rounds merged, each method's
    row.  A method that fails is recorded in ``failed`` and left out from then on; the others go on."""
    failed: dict[str, str] = {}
    for bench in workers:
        reply = bench.read()
        if "error" in reply:
            failed[bench.name] = reply["error"]
    live = [w for w in workers if w.name not in failed]
    trainers = [w for w in live if _method(preset, w) != "base"]
    timing = training_rounds(trainers, preset, failed)
    for bench in (w for w in trainers if w.name not in failed):
        ask(bench, {"figures": True}, failed)  # memory right after training, storage
    base = next((w for w in live if w not in trainers and w.name not in failed), None)
    adapters = [w for w in trainers if w.name not in failed and _method(preset, w) != "full"]
    print("inference rounds, unmerged adapters ...", file=sys.stderr, flush=True)
    unmerged = inference_rounds(adapters, base, preset, failed)
    for bench in (w for w in adapters if w.name not in failed):
        ask(bench, {"merge": True}, failed)
    print("inference rounds, merged ...", file=sys.stderr, flush=True)
    merged = inference_rounds([w for w in trainers if w.name not in failed], base, preset, failed)
    rows: dict[str, dict[str, Any]] = {}
    for bench in (w for w in live if w.name not in failed):
        reply = ask(bench, {"finish": True}, failed)
        if reply:
            rows[bench.name] = reply["row"]
    return {"rows": rows, "failed": failed, "timing": timing, "unmerged": unmerged, "merged": merged, "base": base}


def _method(preset: dict[str, Any], bench: Worker) -> str:
    return method_spec(preset_entry(preset, bench.name))["method"]


def _rows(preset: dict[str, Any], names: list[str], measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Each method's row, in the preset's order, with its round figures added (an error row for a failed one)."""
    rows, timing = measured["rows"], measured["timing"]
    for phase in ("unmerged", "merged"):
        for name, kinds in measured[phase].items():
            if name in rows:
                inference_figures(rows[name], kinds, phase)
    for name, per_round in timing["round_ms"].items():
        if name not in rows:
            continue
        rows[name]["round_ms"] = per_round
        rows[name]["step_ms"] = statistics.median(per_round)
        rows[name]["tokens_per_s"] = preset["batch"] * preset["seq"] / (rows[name]["step_ms"] / 1000)
        if name in timing["round_ratio"]:
            rows[name]["round_ratio"] = timing["round_ratio"][name]
            rows[name]["ratio"] = quartiles(timing["round_ratio"][name])
    return [rows.get(name) or {"method": name, "error": measured["failed"].get(name, "no result")} for name in names]


def _measurement(preset: dict[str, Any], measured: dict[str, Any], load_before: float) -> dict[str, Any]:
    """How the figures were taken, and the state of the machine meanwhile."""
    timing = measured["timing"]
    return {
        "inference": "paired with the base model" if measured["base"] else "unpaired",
        "inference_pairs": INFERENCE_PAIRS,
        "rounds": preset["rounds"],
        "steps_per_round": preset["steps"],
        "reference": timing["reference"],
        "load_before": load_before,
        "loads": timing["loads"],
        "other_cores": timing["other_cores"],
        "cores": os.cpu_count(),
    }
