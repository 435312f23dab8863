"""What serving many adapters costs: resident adapters, loading one, and batches mixing k distinct adapters.

    python -m experiments.benchmarks.serving --preset serving-cpu         # here: small LLaMA shapes, make bench-serving
    python -m experiments.benchmarks.serving --preset serving-llama2-7b   # a CUDA GPU: LLaMA-2-7B shapes, bf16

Writes ``results/benchmarks/<preset>.json``, ``results/serving.md`` (for other presets ``results/<preset>.md``, or
``--report``) and ``results/plots/<preset>.png`` (or ``--plot``), and prints the report last.  With ``--worker``
(and ``--preset-file``) it is one method's process instead (:mod:`experiments.benchmarks.serving.workers`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.benchmarks.serving.presets import default_paths, load_serving_preset
from experiments.benchmarks.serving.run import run_all
from experiments.benchmarks.serving.workers import worker

PROG = "python -m experiments.benchmarks.serving"  # not "__main__.py", what argparse would name a package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="serving-cpu", help="a conf/bench/serving-<name>.yaml preset")
    parser.add_argument("--preset-file", type=Path, help=argparse.SUPPRESS)  # child-process mode: resolved preset
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # child-process mode: one method, JSON lines
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of the preset's methods")
    parser.add_argument("--out", type=Path, default=None, help="JSON record folder (default results/benchmarks)")
    parser.add_argument("--report", type=Path, default=None, help="Markdown report (default results/serving*.md)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG plot (default results/plots/<preset>.png)")
    args = parser.parse_args(argv)
    preset = json.loads(args.preset_file.read_text()) if args.preset_file else load_serving_preset(args.preset)
    if args.worker:
        return worker(preset, args.worker)
    paths = default_paths(preset)
    report = args.report or paths["report"]
    run_all(preset, args.out or paths["out"], report, args.plot or paths["plot"], args.methods)
    print(report.read_text())
    return 0
