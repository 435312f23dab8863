"""What each method costs to train, store and serve, side by side in one run.

    python -m experiments.benchmarks.efficiency --preset cpu-small   # here: small LLaMA shapes, float32 (make bench)
    python -m experiments.benchmarks.efficiency --preset llama2-7b   # a CUDA GPU: LLaMA-2-7B shapes, 4 layers, bf16,
                                                                     # batch 16 x 256, adapters on q,k,v,up,down
    python bench.py bench=llama2-7b                                  # the same through Hydra

Writes ``results/benchmarks/efficiency-<preset>.json`` and ``results/efficiency.md`` (for other presets
``results/efficiency-<preset>.md``, or ``--report``) and prints the report last.  With ``--worker`` (and
``--preset-file``) it is one method's process instead (:mod:`experiments.benchmarks.efficiency.workers`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.benchmarks.efficiency.presets import ROOT, load_preset
from experiments.benchmarks.efficiency.run import default_report, run_all
from experiments.benchmarks.efficiency.workers import worker

PROG = "python -m experiments.benchmarks.efficiency"  # not "__main__.py", what argparse would name a package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
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
