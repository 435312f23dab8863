"""Rebuild a declared table: run its grid through run.py (Hydra multirun), then render it and its plots.

python -m experiments.reproduce table2 --smoke                        # offline models, minutes on a CPU
python -m experiments.reproduce table2 --launcher slurm -- hydra.launcher.partition=gpu hydra.launcher.account=lab
python -m experiments.reproduce table3 --render-only                  # re-render from the records there are
python -m experiments.reproduce decoder_tera_lr --dry-run             # print the Hydra multirun commands
python -m experiments.reproduce sentiment --tune                      # each method at its best rate on validation

Runs whose records are complete with the same settings are skipped (run.py's skip_complete), so an interrupted or
partly failed sweep is finished by running the same command again. Records land in results/runs/<records>/ (a spec's
``records``, default <name>[-smoke]), each table in results/<out>.md/.csv (default <name>[-smoke]), plots in
results/plots/. With ``--tune`` every method first runs its search space on validation, then its chosen setting for
every seed (``experiments/tune_protocol.py``), into results/runs/<records>-tuned/ and results/<out>-tuned.md/.csv.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from experiments.reproduce.sweep import (
    LAUNCHERS,
    ROOT,
    completed_runs,
    launch,
    log_table,
    pending_configs,
    table_commands,
)
from experiments.tables.paper import render_spec
from experiments.tables.render import HOLLOW
from experiments.tables.specs import SpecError, TableSpec, available, load_tables


def parser(description: str) -> argparse.ArgumentParser:
    """The options every way of running tables takes (this module's and ``experiments.reproduce.compare``'s)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--launcher", choices=LAUNCHERS, default="basic", help="basic = sequential, here")
    parser.add_argument("--render-only", action="store_true", help="render from existing records, run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--tune", action="store_true", help="each method at its own best setting, chosen on validation (README)"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Everything after ``--`` is Hydra overrides, wherever the options are (``table3 --launcher slurm -- a=1``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    after = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.extra = [*args.extra, *after]
    return args


def run_tables(specs: list[TableSpec], label: str, args: argparse.Namespace) -> int:
    """Run (or with ``--tune``, tune) the grids of ``specs``, skipping finished runs, and render them."""
    started = time.perf_counter()
    if args.tune:
        from experiments.reproduce import tune_protocol

        accuracy = [spec for spec in specs if spec.kind == "accuracy"]
        if not accuracy:
            print(
                f"error: {label} has no accuracy table to tune (table 1 measures, it does not train).", file=sys.stderr
            )
            return 2
        status = tune_protocol.run(accuracy, args.results, args.launcher, args.extra, args.dry_run, args.render_only)
        if status == 0 and not args.dry_run:
            folders = ", ".join(sorted({str(args.results / "runs" / s.tuned_records_dir) for s in accuracy}))
            print(f"{label} tuned: {time.perf_counter() - started:.0f} s; records in {folders}")
        return status
    if not args.render_only:
        for spec in (s for s in specs if s.kind == "properties"):
            records_dir = args.results / "runs" / spec.records_dir
            if args.dry_run:
                names = [m if isinstance(m, str) else m["name"] for m in spec.grid["method"]]
                print(f"measure {spec.grid['model']} x {names} -> {records_dir}")
            else:
                from experiments.reproduce.properties import run_properties

                run_properties(list(spec.grid["model"]), list(spec.grid["method"]), records_dir, spec.targets)
        done, legacy, total = completed_runs(specs, args.results, args.extra)
        of_them = f" ({legacy} of them legacy records)" if legacy else ""
        print(f"{label}: {len(done)} of {total} runs already complete{of_them}", flush=True)
        commands = table_commands(specs, args.results, args.launcher, args.extra, done)
        if not launch(commands, {args.results / "runs" / s.records_dir for s in specs}, args.dry_run, False):
            print(
                f"error: a run of {label} failed; fix it and run the same command again (finished runs are skipped).",
                file=sys.stderr,
            )
            for spec in specs:
                render_spec(spec, args.results)
            return 1
    if args.dry_run:
        from experiments.reproduce.estimate import describe, estimate

        configs = pending_configs(specs, args.results, args.extra, done)
        print("\n".join(describe(estimate(configs), label)))
        return 0
    for spec in specs:
        print(markdown := render_spec(spec, args.results))
        for line in (line for line in markdown.splitlines() if line.startswith(HOLLOW)):
            print(f"warning: {spec.name}: {line.removeprefix('Warning: ')}", file=sys.stderr)  # suite bug, not data
        if not args.render_only:  # a re-render logs nothing: W&B gets a table when its runs were run
            log_table(args.results, spec, args.extra)
    folders = ", ".join(sorted({str(args.results / "runs" / spec.records_dir) for spec in specs}))
    print(f"{label}: {time.perf_counter() - started:.0f} s; records in {folders}")
    return 0


def main(argv: list[str] | None = None) -> int:
    options = parser(__doc__.splitlines()[0])
    options.add_argument("table", help=f"one of: {', '.join(available())}")
    options.add_argument("--smoke", action="store_true", help="the spec's offline variant")
    options.add_argument("extra", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = parse(options, argv)
    try:
        specs = load_tables(args.table, smoke=args.smoke)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_tables(specs, f"{args.table}{'-smoke' if args.smoke else ''}", args)


if __name__ == "__main__":
    sys.exit(main())
