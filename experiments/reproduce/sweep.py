"""Launching table grids: the Hydra multirun commands of a table, each command once, and the loop that runs them.

Every way of running many runs (``experiments.reproduce``, its ``--tune`` protocol, ``experiments.reproduce.compare``)
builds its commands and launches them here, so skip logic, launchers and logging choices are the same everywhere.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from experiments.records import naming
from experiments.tables.specs import Run, TableSpec

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ("basic", "submitit_local", "slurm")


def logger_args(extra: list[str]) -> list[str]:
    """Reproduction sweeps log nowhere unless the command line names a logger."""
    return [] if any(a.startswith("logger=") for a in extra) else ["logger=none"]


def multirun_commands(
    spec: TableSpec, output_dir: Path, launcher: str, extra: list[str], done: set[tuple[str, str]] | None = None
) -> list[list[str]]:
    """One Hydra multirun per (variant, model, task): methods and seeds are swept inside it.

    Grouping keeps each sweep's overrides rectangular (Hydra sweeps a Cartesian product) while run names stay
    explicit per run, so records from any launcher land under the same names.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for run in spec.runs():
        groups[(run.variant, run.model, run.task)].append(run)
    commands = []
    for (variant, model, task), runs in groups.items():
        if done is not None and all(run_key(run) in done for run in runs):
            continue  # every run of this multirun is complete: nothing to start
        methods = sorted({r.method for r in runs}, key=[r.method for r in runs].index)
        seeds = sorted({r.seed for r in runs})
        run_name = naming.hydra_run_name(task, model, variant.piece, runs[0].template)
        command = [sys.executable, "run.py", "-m", f"model={model}", f"task={task}"]
        command += [f"method={','.join(methods)}", f"seed={','.join(map(str, seeds))}"]
        command += [*spec.overrides, *variant.overrides, f"output_dir={output_dir}", f"run_name={run_name}"]
        command += logger_args(extra)
        if launcher != "basic":
            command.append(f"hydra/launcher={launcher}")
        commands.append(command + extra)
    return commands


def run_key(run: Run) -> tuple[str, str]:
    """A run of a table by where its record lives: its records folder and its name."""
    return run.spec.records_dir, run.name


def unique(commands: Iterable[list[str]]) -> list[list[str]]:
    """Each command once, in first-seen order (tables of one spec may share runs)."""
    seen: list[list[str]] = []
    for command in commands:
        if command not in seen:
            seen.append(command)
    return seen


def table_commands(
    specs: list[TableSpec], results: Path, launcher: str, extra: list[str], done: set[tuple[str, str]] | None = None
) -> list[list[str]]:
    """Every table's multiruns, each once; with ``done``, only those with a run still to do."""
    return unique(
        command
        for spec in specs
        for command in multirun_commands(spec, results / "runs" / spec.records_dir, launcher, extra, done)
    )


def completed_runs(specs: list[TableSpec], results: Path, extra: list[str]) -> tuple[set[tuple[str, str]], int, int]:
    """(the runs whose record is complete, how many of them are legacy records, how many runs there are): each run's
    config is composed and identified as run.py will (settings, data and model content), nothing is loaded."""
    from experiments.errors import USER_ERRORS
    from experiments.run.compose import ComposeError, composer
    from experiments.run.pipeline import finished_record, legacy_record, plan_run

    own = [e for e in extra if not e.startswith(("hydra.", "hydra/"))]
    done: set[tuple[str, str]] = set()
    legacy = total = 0
    with composer() as compose:
        for spec in specs:
            for run in spec.runs():
                total += 1
                try:
                    cfg = compose([*run.overrides(results / "runs" / spec.records_dir), *logger_args(extra), *own])
                    if finished_record(plan_run(cfg)) is not None:
                        done.add(run_key(run))
                    elif legacy_record(cfg) is not None:
                        done.add(run_key(run))
                        legacy += 1
                except (ComposeError, *USER_ERRORS):
                    continue  # run.py will say what is wrong with it
    return done, legacy, total


def pending_configs(
    specs: list[TableSpec], results: Path, extra: list[str], done: set[tuple[str, str]]
) -> list[tuple[Run, Any]]:
    """(run, composed config) of every run still to do, for estimates; runs that do not compose are left out (run.py
    will say what is wrong with them)."""
    from experiments.run.compose import ComposeError, composer

    own = [e for e in extra if not e.startswith(("hydra.", "hydra/"))]
    configs = []
    with composer() as compose:
        for spec in specs:
            for run in (r for r in spec.runs() if run_key(r) not in done):
                try:
                    configs.append((run, compose([*run.overrides(results / "runs" / spec.records_dir), *own])))
                except ComposeError:
                    continue
    return configs


def launch(commands: list[list[str]], folders: set[Path], dry_run: bool, go_on_after_failed_runs: bool = True) -> bool:
    """Run each multirun. With ``go_on_after_failed_runs`` (the commands pass ``skip_failed=true``), one that stops
    because a run failed and left its record (it diverged) is started again, and run.py skips what is done and what
    failed. False when a multirun fails otherwise."""

    def state() -> frozenset:
        return frozenset((p, p.stat().st_mtime_ns) for folder in folders for p in Path(folder).glob("*.json"))

    for command in commands:
        print("$ " + " ".join(command[1:]), flush=True)
        if dry_run:
            continue
        while True:
            before = state()
            if subprocess.run(command, cwd=ROOT).returncode == 0:
                break
            if not go_on_after_failed_runs or state() == before:
                return False
            print("a run failed and left its record; going on with the others", flush=True)
    return True
