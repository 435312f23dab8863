"""One serving benchmark run: check what was asked for, start a process per method (and one for the base model), grow
each method's resident adapters to the largest batch mix, check mixed batches against each adapter alone, time the
configurations in interleaved rounds, then grow the resident adapters on (memory, load time) within the adding budget,
and write the JSON record, the Markdown report and the plot."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from experiments.benchmarks.efficiency.rounds import ask
from experiments.benchmarks.efficiency.workers import in_worker_processes
from experiments.benchmarks.serving.plot import draw
from experiments.benchmarks.serving.presets import ROOT, checked_names
from experiments.benchmarks.serving.report import render
from experiments.benchmarks.serving.rounds import base_figures, serving_figures, serving_rounds
from experiments.benchmarks.serving.workers import ServingWorker


def run_all(
    preset: dict[str, Any], out_dir: Path, report: Path, plot: Path, methods: list[str] | None = None
) -> dict[str, Any]:
    """Measure ``preset`` and write ``<out_dir>/<preset>.json``, ``report`` and ``plot``.

    A mistaken request is one sentence and exit status 2 before anything runs; Ctrl-C stops it with one line and exit
    status 130, leaving the previous record and report as they were (they are written only at the end)."""
    names = checked_names(preset, methods)
    try:
        return _measure_and_write(preset, names, out_dir, report, plot)
    except KeyboardInterrupt:
        print(f"interrupted: nothing written; {report} and its record are as they were.", file=sys.stderr)
        raise SystemExit(130) from None


def _measure_and_write(
    preset: dict[str, Any], names: list[str], out_dir: Path, report: Path, plot: Path
) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from experiments.records.write import environment, write_json_atomic

    load_before = os.getloadavg()[0]
    measured = _measure(preset, names)
    timing = measured["timing"]
    record = {
        "preset": preset,
        "environment": environment(preset["device"]),
        "measurement": {
            "rounds": preset["rounds"],
            "pairs": preset.get("pairs"),
            "load_before": load_before,
            "loads": timing.get("loads", []),
            "other_cores": timing.get("other_cores"),
            "cores": os.cpu_count(),
        },
        "base": base_figures(preset, timing.get("base", {})),
        "rows": _rows(preset, names[1:], measured),
    }
    record["plot"] = draw(record, plot, report.parent)
    write_json_atomic(out_dir / f"{preset['name']}.json", record)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(record))
    return record


def _measure(preset: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Every method and the base model in its own process, for the whole run; closed however it ends."""
    return in_worker_processes(preset, names, ServingWorker, _phases, "processes (the base model and each method)")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _phases(preset: dict[str, Any], workers: list[ServingWorker]) -> dict[str, Any]:
    """Ready, grow to the largest batch mix, check, rounds, grow on, finish; one method at a time wherever a figure
    is a time, so that no other process runs meanwhile.  A method that fails is recorded in ``failed``."""
    failed: dict[str, str] = {}
    for bench in workers:
        reply = bench.read()
        if "error" in reply:
            failed[bench.name] = reply["error"]
    base = workers[0] if workers[0].name not in failed else None
    methods = [w for w in workers[1:] if w.name not in failed]
    largest = preset["distinct"][-1]

    def each(command: dict[str, Any], what: str) -> None:
        for bench in (w for w in methods if w.name not in failed):
            _say(f"{bench.name}: {what} ...")
            ask(bench, command, failed)

    each({"grow": largest, "forced": True}, f"{largest} resident adapters")
    each({"check": True}, "mixed batch against each adapter alone")
    _say(f"{preset['rounds']} rounds ...")
    timing = serving_rounds([w for w in methods if w.name not in failed], base, preset, failed)
    each({"grow": preset["resident"][-1]}, f"resident adapters up to {preset['resident'][-1]}, within the budget")
    rows = {}
    for bench in (w for w in methods if w.name not in failed):
        reply = ask(bench, {"finish": True}, failed)
        if reply:
            rows[bench.name] = reply["row"]
    return {"rows": rows, "failed": failed, "timing": timing}


def _rows(preset: dict[str, Any], names: list[str], measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Each method's row in the preset's order, with its round figures (an error row for a failed one)."""
    rows, timing = measured["rows"], measured["timing"]
    out = []
    for name in names:
        if name not in rows:
            out.append({"method": name, "error": measured["failed"].get(name, "no result")})
            continue
        row = rows[name]
        row["round_s"] = timing["methods"].get(name, {})
        row["figures"] = serving_figures(preset, row["round_s"])
        out.append(row)
    if "base" in measured["failed"]:
        out.append({"method": "base", "error": measured["failed"]["base"]})
    return out
